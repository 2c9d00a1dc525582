//! TorchServe's OpenAPI 3.0.1 documents, built from tables of operations: `OPTIONS /` and
//! `GET /api-description` on the inference and management listeners, `OPTIONS
//! /predictions/{model}` and `OPTIONS /models/{model}`. TorchServe's tests compare them as text,
//! so keys keep TorchServe's order and the text is pretty-printed as its frontend prints it.

use std::fmt::Write;

/// An ordered JSON value (the documents hold no numbers).
enum Node {
    Str(String),
    Bool(bool),
    List(Vec<Node>),
    Obj(Vec<(String, Node)>),
}

fn s(text: &str) -> Node {
    Node::Str(text.to_string())
}

fn obj<K: Into<String>>(entries: Vec<(K, Node)>) -> Node {
    Node::Obj(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn strings(items: &[&str]) -> Node {
    Node::List(items.iter().map(|item| s(item)).collect())
}

impl Node {
    /// Two-space indentation, `"key": value`, `[]` for an empty list, a final newline.
    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let (open, close, items): (char, char, Vec<(Option<&str>, &Node)>) = match self {
            Node::Str(text) => {
                out.push_str(&serde_json::to_string(text).unwrap_or_default());
                return;
            }
            Node::Bool(flag) => {
                let _ = write!(out, "{flag}");
                return;
            }
            Node::List(items) => ('[', ']', items.iter().map(|v| (None, v)).collect()),
            Node::Obj(entries) => (
                '{',
                '}',
                entries.iter().map(|(k, v)| (Some(k.as_str()), v)).collect(),
            ),
        };
        out.push(open);
        for (idx, (key, value)) in items.iter().enumerate() {
            out.push_str(if idx == 0 { "\n" } else { ",\n" });
            out.push_str(&"  ".repeat(depth + 1));
            if let Some(key) = key {
                out.push_str(&serde_json::to_string(key).unwrap_or_default());
                out.push_str(": ");
            }
            value.write(out, depth + 1);
        }
        if !items.is_empty() {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        }
        out.push(close);
    }
}

/// `{"type": ty, "description": description}`.
fn field(ty: &str, description: &str) -> Node {
    obj(vec![("type", s(ty)), ("description", s(description))])
}

/// An object schema with its required properties.
fn object(required: &[&str], properties: Vec<(&str, Node)>) -> Node {
    obj(vec![
        ("type", s("object")),
        ("required", strings(required)),
        ("properties", obj(properties)),
    ])
}

/// A response whose body is `schema` in `content_type`.
fn response(description: &str, content_type: &str, schema: Node) -> Node {
    obj(vec![
        ("description", s(description)),
        (
            "content",
            obj(vec![(content_type, obj(vec![("schema", schema)]))]),
        ),
    ])
}

/// An error response: TorchServe's `{code, type, message}`.
fn error(description: &str) -> Node {
    response(
        description,
        "application/json",
        object(
            &["code", "type", "message"],
            vec![
                ("code", field("integer", "Error code.")),
                ("type", field("string", "Error type.")),
                ("message", field("string", "Error message.")),
            ],
        ),
    )
}

/// A `{status}` response (TorchServe describes the field as "Error type.").
fn status(description: &str) -> Node {
    response(
        description,
        "application/json",
        object(
            &["status"],
            vec![("status", field("string", "Error type."))],
        ),
    )
}

/// Binary content of any type.
fn binary() -> Node {
    obj(vec![(
        "*/*",
        obj(vec![(
            "schema",
            obj(vec![("type", s("string")), ("format", s("binary"))]),
        )]),
    )])
}

/// A parameter; `default` is written as a string, as TorchServe does.
fn param(location: &str, name: &str, description: &str, required: bool, schema: Node) -> Node {
    obj(vec![
        ("in", s(location)),
        ("name", s(name)),
        ("description", s(description)),
        ("required", Node::Bool(required)),
        ("schema", schema),
    ])
}

fn path_param(name: &str, description: &str) -> Node {
    param(
        "path",
        name,
        description,
        true,
        obj(vec![("type", s("string"))]),
    )
}

fn query(name: &str, description: &str, ty: &str, default: Option<&str>) -> Node {
    let mut schema = vec![("type", s(ty))];
    if let Some(default) = default {
        schema.push(("default", s(default)));
    }
    param("query", name, description, false, obj(schema))
}

/// One operation of a document.
struct Operation {
    path: String,
    method: &'static str,
    description: String,
    id: String,
    parameters: Vec<Node>,
    body: Option<Node>,
    responses: Vec<(&'static str, Node)>,
    deprecated: bool,
}

impl Operation {
    fn new(path: &str, method: &'static str, description: &str, id: &str) -> Self {
        Operation {
            path: path.to_string(),
            method,
            description: description.to_string(),
            id: id.to_string(),
            parameters: Vec::new(),
            body: None,
            responses: Vec::new(),
            deprecated: false,
        }
    }

    fn params(mut self, parameters: Vec<Node>) -> Self {
        self.parameters = parameters;
        self
    }

    fn respond(mut self, code: &'static str, response: Node) -> Self {
        self.responses.push((code, response));
        self
    }

    fn errors(mut self, errors: &[(&'static str, &str)]) -> Self {
        for (code, description) in errors {
            self.responses.push((code, error(description)));
        }
        self
    }

    fn into_node(self) -> Node {
        let mut entries = vec![
            ("description", s(&self.description)),
            ("operationId", s(&self.id)),
            ("parameters", Node::List(self.parameters)),
        ];
        if let Some(body) = self.body {
            entries.push(("requestBody", body));
        }
        entries.push(("responses", obj(self.responses)));
        if self.deprecated {
            entries.push(("deprecated", Node::Bool(true)));
        }
        obj(entries)
    }
}

/// The document: `info`, then the operations grouped by path in first-seen order.
fn document(info: Vec<(&str, Node)>, operations: Vec<Operation>) -> String {
    let mut paths: Vec<(String, Vec<(String, Node)>)> = Vec::new();
    for op in operations {
        let key = op.path.clone();
        let method = op.method.to_string();
        let node = op.into_node();
        match paths.iter_mut().find(|(path, _)| *path == key) {
            Some((_, methods)) => methods.push((method, node)),
            None => paths.push((key, vec![(method, node)])),
        }
    }
    obj(vec![
        ("openapi", s("3.0.1")),
        ("info", obj(info)),
        (
            "paths",
            Node::Obj(
                paths
                    .into_iter()
                    .map(|(path, methods)| (path, Node::Obj(methods)))
                    .collect(),
            ),
        ),
    ])
    .render()
}

fn server_info() -> Vec<(&'static str, Node)> {
    vec![
        ("title", s("TorchServe APIs")),
        (
            "description",
            s("TorchServe is a flexible and easy to use tool for serving deep learning models"),
        ),
        ("version", s(env!("CARGO_PKG_VERSION"))),
    ]
}

const INTERNAL: (&str, &str) = ("500", "Internal Server Error");

/// An endpoint of torchyard's beyond TorchServe's documents: path, method, operationId,
/// description.
type Extra = (&'static str, &'static str, &'static str, &'static str);

const INFERENCE_EXTRAS: &[Extra] = &[
    (
        "/explanations/{model_name}",
        "post",
        "explanations",
        "Explanations of the default model version's predictions.",
    ),
    (
        "/explanations/{model_name}/{model_version}",
        "post",
        "version_explanations",
        "Explanations of a specific model version's predictions.",
    ),
    (
        "/v1/models/{model_name}:explain",
        "post",
        "kserve_v1_explain",
        "Explanations, KServe v1 protocol.",
    ),
    (
        "/v2/models/{model_name}/explain",
        "post",
        "kserve_v2_explain",
        "Explanations, KServe v2 protocol.",
    ),
    (
        "/wfpredict/{workflow_name}",
        "post",
        "workflow_predictions",
        "Runs a workflow on the input.",
    ),
    (
        "/wfpredict/{workflow_name}/{workflow_version}",
        "post",
        "version_workflow_predictions",
        "Runs a specific version of a workflow on the input.",
    ),
    (
        "/invocations",
        "post",
        "invocations",
        "Predictions of the model named by the model_name parameter (SageMaker).",
    ),
    (
        "/models/{model_name}/invoke",
        "post",
        "invoke",
        "Predictions of the default model version (SageMaker).",
    ),
    (
        "/{model_name}/predict",
        "post",
        "legacy_predict",
        "Predictions of the default model version (legacy path, GET too).",
    ),
];

const MANAGEMENT_EXTRAS: &[Extra] = &[
    (
        "/workflows",
        "get",
        "listWorkflows",
        "List registered workflows.",
    ),
    (
        "/workflows",
        "post",
        "registerWorkflow",
        "Register a workflow archive (url, workflow_name).",
    ),
    (
        "/workflows/{workflow_name}",
        "get",
        "describeWorkflow",
        "Describe the default version of a workflow.",
    ),
    (
        "/workflows/{workflow_name}",
        "put",
        "scaleWorkflow",
        "Scale the workers of a workflow's models, or update the workflow.",
    ),
    (
        "/workflows/{workflow_name}",
        "delete",
        "unregisterWorkflow",
        "Unregister a workflow and its models.",
    ),
    (
        "/workflows/{workflow_name}/{workflow_version}",
        "get",
        "version_describeWorkflow",
        "Describe a specific version of a workflow.",
    ),
    (
        "/workflows/{workflow_name}/{workflow_version}",
        "put",
        "version_scaleWorkflow",
        "Scale the workers of a specific workflow version's models.",
    ),
    (
        "/workflows/{workflow_name}/{workflow_version}",
        "delete",
        "version_unregisterWorkflow",
        "Unregister a specific version of a workflow.",
    ),
    (
        "/workflows/{workflow_name}/{workflow_version}/set-default",
        "put",
        "setDefaultWorkflow",
        "Set the default version of a workflow.",
    ),
];

/// The operations of `table` when `full`; their path parameters come from the path.
fn extras(full: bool, table: &'static [Extra]) -> Vec<Operation> {
    let table = if full { table } else { &[] };
    table
        .iter()
        .map(|(path, method, id, description)| {
            let params = path
                .split('/')
                .filter_map(|segment| segment.strip_prefix('{')?.split('}').next())
                .map(|name| path_param(name, &name.replace('_', " ")))
                .collect();
            Operation::new(path, method, description, id)
                .params(params)
                .respond("200", obj(vec![("description", s("OK"))]))
                .errors(&[("400", "Bad request"), ("404", "Not found"), INTERNAL])
        })
        .collect()
}

/// `OPTIONS /` or `GET /api-description` (`id`); TorchServe marks the latter deprecated.
fn api_description(path: &str, method: &'static str, id: &str) -> Operation {
    let schema = object(
        &["openapi", "info", "paths"],
        vec![
            ("openapi", obj(vec![("type", s("string"))])),
            ("info", obj(vec![("type", s("object"))])),
            ("paths", obj(vec![("type", s("object"))])),
        ],
    );
    let mut op = Operation::new(path, method, "Get openapi description.", id)
        .respond(
            "200",
            response("A openapi 3.0.1 descriptor", "application/json", schema),
        )
        .errors(&[INTERNAL]);
    op.deprecated = method == "get";
    op
}

fn metrics() -> Operation {
    let schema = object(
        &["# HELP", "# TYPE", "metric"],
        vec![
            (
                "# HELP",
                field("string", "Help text for TorchServe metric."),
            ),
            ("# TYPE", field("string", "Type of TorchServe metric.")),
            ("metric", field("string", "TorchServe application metric.")),
        ],
    );
    Operation::new(
        "/metrics",
        "get",
        "Get TorchServe application metrics in prometheus format.",
        "metrics",
    )
    .params(vec![query(
        "name[]",
        "Names of metrics to filter",
        "string",
        None,
    )])
    .respond(
        "200",
        response(
            "TorchServe application metrics",
            "text/plain; version=0.0.4; charset=utf-8",
            schema,
        ),
    )
    .errors(&[INTERNAL])
}

fn predictions(path: &str, versioned: bool) -> Operation {
    let (description, id) = if versioned {
        ("specific model version", "version_predictions")
    } else {
        ("default model version", "predictions")
    };
    let mut params = vec![path_param("model_name", "Name of model.")];
    if versioned {
        params.push(path_param("model_version", "Name of model version."));
    }
    let mut op = Operation::new(
        path,
        "post",
        &format!("Predictions entry point to get inference using {description}."),
        id,
    )
    .params(params);
    op.body = Some(obj(vec![
        (
            "description",
            s("Input data format is defined by each model."),
        ),
        ("content", binary()),
        ("required", Node::Bool(true)),
    ]));
    op.respond(
        "200",
        obj(vec![
            (
                "description",
                s("Output data format is defined by each model."),
            ),
            ("content", binary()),
        ]),
    )
    .errors(&[
        ("404", "Model not found or Model Version not found"),
        INTERNAL,
        ("503", "No worker is available to serve request"),
    ])
}

/// The inference listener's document; `full` appends torchyard's endpoints that TorchServe's
/// document leaves out (`GET /api-description?full=true`).
pub fn inference(full: bool) -> String {
    document(server_info(), inference_operations(full))
}

/// The document of a listener serving both the inference and the management API (both
/// configured on one address), as TorchServe lists them: each path and method once.
pub fn inference_and_management(full: bool) -> String {
    let mut operations = inference_operations(full);
    for op in management_operations(full) {
        if !operations
            .iter()
            .any(|o| o.path == op.path && o.method == op.method)
        {
            operations.push(op);
        }
    }
    document(server_info(), operations)
}

fn inference_operations(full: bool) -> Vec<Operation> {
    let ping = Operation::new("/ping", "get", "Get TorchServe status.", "ping")
        .respond(
            "200",
            response(
                "TorchServe status",
                "application/json",
                object(
                    &["status"],
                    vec![(
                        "status",
                        field("string", "Overall status of the TorchServe."),
                    )],
                ),
            ),
        )
        .errors(&[INTERNAL]);
    vec![
        api_description("/", "options", "apiDescription"),
        ping,
        predictions("/v1/models/{model_name}:predict", false),
        predictions("/v2/models/{model_name}/infer", false),
        predictions("/predictions/{model_name}", false),
        predictions("/predictions/{model_name}/{model_version}", true),
        api_description("/api-description", "get", "api-description"),
        metrics(),
    ]
    .into_iter()
    .chain(extras(full, INFERENCE_EXTRAS))
    .collect()
}

/// `OPTIONS /predictions/{model}`: the model's prediction entry points.
pub fn model_inference(model: &str) -> String {
    let paths = [
        format!("/prediction/{model}"),
        "/v1/models/{model_name}:predict".to_string(),
        "/v2/models/{model_name}/infer".to_string(),
    ];
    let description = format!("A predict entry point for model: {model}.");
    let operations = paths
        .iter()
        .map(|path| {
            Operation::new(path, "post", &description, model)
                .respond("200", obj(vec![("description", s("OK"))]))
                .errors(&[INTERNAL])
        })
        .collect();
    document(
        vec![
            ("title", s(&format!("RESTful API for: {model}"))),
            ("version", s("1.0.0")),
        ],
        operations,
    )
}

/// The management listener's document; `full` appends torchyard's workflow endpoints.
pub fn management(full: bool) -> String {
    document(server_info(), management_operations(full))
}

fn management_operations(full: bool) -> Vec<Operation> {
    let mut operations = vec![
        api_description("/", "options", "apiDescription"),
        list_models(),
        register_model(),
    ];
    operations.extend(model_operations());
    operations.push(api_description(
        "/api-description",
        "get",
        "api-description",
    ));
    operations.push(metrics());
    operations.extend(extras(full, MANAGEMENT_EXTRAS));
    operations
}

/// `OPTIONS /models/{model}`: the management operations on one model.
pub fn model_management(model: &str) -> String {
    document(
        vec![
            ("title", s(&format!("RESTful Management API for: {model}"))),
            ("version", s(env!("CARGO_PKG_VERSION"))),
        ],
        model_operations(),
    )
}

fn list_models() -> Operation {
    let model = object(
        &["modelName", "modelUrl"],
        vec![
            ("modelName", field("string", "Name of the model.")),
            ("modelUrl", field("string", "URL of the model.")),
        ],
    );
    let schema = object(
        &["models"],
        vec![
            ("nextPageToken", field("string", "Use this parameter in a subsequent request after you receive a response with truncated results. Set it to the value of NextMarker from the truncated response you just received.")),
            ("models", obj(vec![("type", s("array")), ("items", model), ("description", s("A list of registered models."))])),
        ],
    );
    Operation::new("/models", "get", "List registered models in TorchServe.", "listModels")
        .params(vec![
            query("limit", "Use this parameter to specify the maximum number of items to return. When this value is present, TorchServe does not return more than the specified number of items, but it might return fewer. This value is optional. If you include a value, it must be between 1 and 1000, inclusive. If you do not include a value, it defaults to 100.", "integer", Some("100")),
            query("next_page_token", "The token to retrieve the next set of results. TorchServe provides the token when the response from a previous call has more results than the maximum page size.", "string", None),
        ])
        .respond("200", response("OK", "application/json", schema))
        .errors(&[INTERNAL])
}

fn register_model() -> Operation {
    let runtime = obj(vec![
        ("type", s("string")),
        ("enum", strings(&["PYTHON", "PYTHON3", "LSP"])),
    ]);
    Operation::new("/models", "post", "Register a new model in TorchServe.", "registerModel")
        .params(vec![
            param("query", "url", "Model archive download url, support local file or HTTP(s) protocol. For S3, consider use pre-signed url.", true, obj(vec![("type", s("string"))])),
            query("model_name", "Name of model. This value will override modelName in MANIFEST.json if present.", "string", None),
            query("handler", "Inference handler entry-point. This value will override handler in MANIFEST.json if present.", "string", None),
            param("query", "runtime", "Runtime for the model custom service code. This value will override runtime in MANIFEST.json if present.", false, runtime),
            query("batch_size", "Inference batch size, default: 1.", "integer", Some("1")),
            query("max_batch_delay", "Maximum delay for batch aggregation, default: 100.", "integer", Some("100")),
            query("response_timeout", "Maximum time, in seconds, the TorchServe waits for a response from the model inference code, default: 120.", "integer", Some("2")),
            query("startup_timeout", "Maximum time, in seconds, the TorchServe waits for the model to startup/initialize, default: 120.", "integer", Some("120")),
            query("initial_workers", "Number of initial workers, default: 0.", "integer", Some("0")),
            query("synchronous", "Decides whether creation of worker synchronous or not, default: false.", "boolean", Some("false")),
            query("s3_sse_kms", "Model mar file is S3 SSE KMS(server side encryption) enabled or not, default: false.", "boolean", Some("false")),
        ])
        .respond("200", status("Model registered"))
        .respond("202", status("Accepted"))
        .respond("210", status("Partial Success"))
        .errors(&[
            ("400", "Bad request"),
            ("404", "Model not found"),
            ("409", "Model already registered"),
            INTERNAL,
        ])
}

const NOT_FOUND: (&str, &str) = ("404", "Model not found or Model version not found");

/// The operations on `/models/{model_name}[/{model_version}]`, without and then with version.
fn model_operations() -> Vec<Operation> {
    let mut operations = Vec::new();
    for versioned in [false, true] {
        let (path, prefix, which) = if versioned {
            (
                "/models/{model_name}/{model_version}",
                "version_",
                "a specified version",
            )
        } else {
            ("/models/{model_name}", "", "a default version")
        };
        let names = |verb: &str| {
            let mut params = vec![path_param(
                "model_name",
                &format!("Name of model to {verb}."),
            )];
            if versioned {
                params.push(path_param(
                    "model_version",
                    &format!("Version of model to {verb}."),
                ));
            }
            params
        };
        let describe = if versioned {
            "Provides detailed information about the specified version of a model.If \"all\" is specified as version, returns the details about all the versions of the model."
        } else {
            "Provides detailed information about the default version of a model."
        };
        operations.push(
            Operation::new(path, "get", describe, &format!("{prefix}describeModel"))
                .params(names("describe"))
                .respond(
                    "200",
                    response("OK", "application/json", model_description()),
                )
                .errors(&[NOT_FOUND, INTERNAL]),
        );
        let mut scale = names("scale workers");
        scale.extend([
            query(
                "min_worker",
                "Minimum number of worker processes.",
                "integer",
                Some("1"),
            ),
            query(
                "max_worker",
                "Maximum number of worker processes.",
                "integer",
                Some("1"),
            ),
            query(
                "number_gpu",
                "Number of GPU worker processes to create.",
                "integer",
                Some("0"),
            ),
            synchronous(),
            timeout(),
        ]);
        operations.push(
            Operation::new(path, "put", &format!("Configure number of workers for {which} of a model. This is an asynchronous call by default. Caller need to call describeModel to check if the model workers has been changed."), &format!("{prefix}setAutoScale"))
                .params(scale)
                .respond("200", status("Model workers updated"))
                .respond("202", status("Accepted"))
                .respond("210", status("Partial Success"))
                .errors(&[("400", "Bad request"), NOT_FOUND, INTERNAL]),
        );
        let mut unregister = names("unregister");
        unregister.extend([synchronous(), timeout()]);
        let description = if versioned {
            "Unregister the specified version of a model from TorchServe. This is an asynchronous call by default. Caller can call listModels to confirm model is unregistered"
        } else {
            "Unregister the default version of a model from TorchServe if it is the only version available. This is an asynchronous call by default. Caller can call listModels to confirm model is unregistered."
        };
        operations.push(
            Operation::new(
                path,
                "delete",
                description,
                &format!("{prefix}unregisterModel"),
            )
            .params(unregister)
            .respond("200", status("Model unregistered"))
            .respond("202", status("Accepted"))
            .errors(&[NOT_FOUND, ("408", "Request Timeout Error"), INTERNAL]),
        );
    }
    operations.push(
        Operation::new(
            "/models/{model_name}/{model_version}/set-default",
            "put",
            "Set default version of a model",
            "setDefault",
        )
        .params(vec![
            path_param(
                "model_name",
                "Name of model whose default version needs to be updated.",
            ),
            path_param(
                "model_version",
                "Version of model to be set as default version for the model",
            ),
        ])
        .respond(
            "200",
            status("Default version successfully updated for model"),
        )
        .errors(&[NOT_FOUND, INTERNAL]),
    );
    operations
}

fn synchronous() -> Node {
    query(
        "synchronous",
        "Decides whether the call is synchronous or not, default: false.",
        "boolean",
        Some("false"),
    )
}

fn timeout() -> Node {
    query("timeout", "Waiting up to the specified wait time if necessary for a worker to complete all pending requests. Use 0 to terminate backend worker process immediately. Use -1 for wait infinitely.", "integer", Some("-1"))
}

/// The schema of `describeModel`'s answer.
fn model_description() -> Node {
    let worker = object(
        &["id", "startTime", "status"],
        vec![
            ("id", field("string", "Worker id")),
            ("startTime", field("string", "Worker start time")),
            ("gpu", field("boolean", "If running on GPU")),
            (
                "status",
                obj(vec![
                    ("type", s("string")),
                    ("description", s("Worker status")),
                    ("enum", strings(&["READY", "LOADING", "UNLOADING"])),
                ]),
            ),
        ],
    );
    let metrics = object(
        &["rejectedRequests", "waitingQueueSize", "requests"],
        vec![
            (
                "rejectedRequests",
                field(
                    "integer",
                    "Number requests has been rejected in last 10 minutes.",
                ),
            ),
            (
                "waitingQueueSize",
                field("integer", "Number requests waiting in the queue."),
            ),
            (
                "requests",
                field("integer", "Number requests processed in last 10 minutes."),
            ),
        ],
    );
    let queue = object(
        &["remainingCapacity", "pendingRequests"],
        vec![
            (
                "remainingCapacity",
                field("integer", "Number of new requests that can be queued."),
            ),
            (
                "pendingRequests",
                field("integer", "Number of requests waiting in the queue."),
            ),
        ],
    );
    object(
        &[
            "modelName",
            "modelVersion",
            "modelUrl",
            "minWorkers",
            "maxWorkers",
            "status",
            "workers",
            "metrics",
            "jobQueueStatus",
        ],
        vec![
            ("modelName", field("string", "Name of the model.")),
            ("modelVersion", field("string", "Version of the model.")),
            ("modelUrl", field("string", "URL of the model.")),
            (
                "minWorkers",
                field("integer", "Configured minimum number of worker."),
            ),
            (
                "maxWorkers",
                field("integer", "Configured maximum number of worker."),
            ),
            ("batchSize", field("integer", "Configured batch size.")),
            (
                "maxBatchDelay",
                field("integer", "Configured maximum batch delay in ms."),
            ),
            (
                "status",
                field("string", "Overall health status of the model"),
            ),
            (
                "workers",
                obj(vec![
                    ("type", s("array")),
                    ("items", worker),
                    ("description", s("A list of active backend workers.")),
                ]),
            ),
            ("metrics", metrics),
            ("jobQueueStatus", queue),
        ],
    )
}

/// A document as the HTTP answer.
pub fn answer(document: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document,
    )
        .into_response()
}
