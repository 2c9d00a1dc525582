//! OpenAPI 3 descriptions answered by `OPTIONS /` on the inference and management listeners.

use serde_json::{json, Map, Value};

/// One operation: summary, query parameters and the success status.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [&'static str],
}

const INFERENCE: &[Op] = &[
    Op {
        method: "options",
        path: "/",
        summary: "This API description.",
        query: &[],
    },
    Op {
        method: "get",
        path: "/ping",
        summary: "Health of the server.",
        query: &[],
    },
    Op {
        method: "post",
        path: "/predictions/{model_name}",
        summary: "Predict with the default version of a model.",
        query: &[],
    },
    Op {
        method: "post",
        path: "/predictions/{model_name}/{model_version}",
        summary: "Predict with one version of a model.",
        query: &[],
    },
    Op {
        method: "post",
        path: "/wfpredict/{workflow_name}",
        summary: "Run a workflow.",
        query: &[],
    },
    Op {
        method: "post",
        path: "/explanations/{model_name}",
        summary: "Explain a prediction of the default version of a model.",
        query: &[],
    },
    Op {
        method: "post",
        path: "/explanations/{model_name}/{model_version}",
        summary: "Explain a prediction of one version of a model.",
        query: &[],
    },
    Op {
        method: "post",
        path: "/v1/models/{model_name}:predict",
        summary: "Predict (KServe v1 protocol).",
        query: &[],
    },
    Op {
        method: "post",
        path: "/v1/models/{model_name}:explain",
        summary: "Explain (KServe v1 protocol).",
        query: &[],
    },
    Op {
        method: "post",
        path: "/v2/models/{model_name}/infer",
        summary: "Predict (KServe v2 protocol).",
        query: &[],
    },
    Op {
        method: "post",
        path: "/v2/models/{model_name}/explain",
        summary: "Explain (KServe v2 protocol).",
        query: &[],
    },
    Op {
        method: "post",
        path: "/invocations",
        summary: "Predict with the model named by model_name (SageMaker).",
        query: &["model_name"],
    },
    Op {
        method: "post",
        path: "/models/{model_name}/invoke",
        summary: "Predict with a model (SageMaker).",
        query: &[],
    },
    Op {
        method: "get",
        path: "/{model_name}/predict",
        summary: "Predict with a model (legacy path).",
        query: &[],
    },
];

const MANAGEMENT: &[Op] = &[
    Op {
        method: "options",
        path: "/",
        summary: "This API description.",
        query: &[],
    },
    Op {
        method: "get",
        path: "/models",
        summary: "List registered models.",
        query: &["limit", "next_page_token"],
    },
    Op {
        method: "post",
        path: "/models",
        summary: "Register a model archive.",
        query: &[
            "url",
            "model_name",
            "handler",
            "runtime",
            "batch_size",
            "max_batch_delay",
            "initial_workers",
            "synchronous",
            "response_timeout",
        ],
    },
    Op {
        method: "get",
        path: "/models/{model_name}",
        summary: "Describe the default version of a model.",
        query: &[],
    },
    Op {
        method: "put",
        path: "/models/{model_name}",
        summary: "Scale the workers of a model.",
        query: &["min_worker", "max_worker", "synchronous"],
    },
    Op {
        method: "delete",
        path: "/models/{model_name}",
        summary: "Unregister the default version of a model.",
        query: &[],
    },
    Op {
        method: "get",
        path: "/models/{model_name}/{model_version}",
        summary: "Describe one version of a model, or all with 'all'.",
        query: &[],
    },
    Op {
        method: "put",
        path: "/models/{model_name}/{model_version}",
        summary: "Scale the workers of one model version.",
        query: &["min_worker", "max_worker", "synchronous"],
    },
    Op {
        method: "delete",
        path: "/models/{model_name}/{model_version}",
        summary: "Unregister one version of a model.",
        query: &[],
    },
    Op {
        method: "put",
        path: "/models/{model_name}/{model_version}/set-default",
        summary: "Make a version the default.",
        query: &[],
    },
];

fn document(title: &str, ops: &[Op]) -> Value {
    let mut paths = Map::new();
    for op in ops {
        let mut params: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.split('}').next())
            .map(|name| json!({"in": "path", "name": name, "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(
            op.query
                .iter()
                .map(|name| json!({"in": "query", "name": name, "required": *name == "url", "schema": {"type": "string"}})),
        );
        let entry = paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}));
        entry[op.method] = json!({
            "summary": op.summary,
            "parameters": params,
            "responses": {
                "200": {"description": "Success"},
                "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
    }
    json!({
        "openapi": "3.0.1",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": {"Error": {
            "type": "object",
            "required": ["code", "type", "message"],
            "properties": {
                "code": {"type": "integer"},
                "type": {"type": "string"},
                "message": {"type": "string"},
            },
        }}},
    })
}

/// The inference API's description.
pub fn inference() -> Value {
    document("torchyard inference API", INFERENCE)
}

/// The management API's description.
pub fn management() -> Value {
    document("torchyard management API", MANAGEMENT)
}
