//! The workflow specification (YAML): node properties and the DAG, parsed and validated.

use std::collections::BTreeMap;

use serde_yaml_ng::Value as Yaml;

use crate::archive::parse_yaml;

/// Per-node serving properties, global defaults overridden per model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeProps {
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    pub max_batch_delay: u64,
    pub retry_attempts: usize,
    pub timeout_ms: u64,
    /// `fuse`: whether a model node runs the function chains next to it (the one that feeds
    /// only it, the one only it feeds) in its own worker call (docs/workflows.md).
    pub fuse: bool,
}

impl Default for NodeProps {
    fn default() -> Self {
        Self {
            min_workers: 1,
            max_workers: 1,
            batch_size: 1,
            max_batch_delay: 50,
            retry_attempts: 1,
            timeout_ms: 10_000,
            fuse: true,
        }
    }
}

impl NodeProps {
    /// Applies one `key: value` property; errors name the key.
    fn set(&mut self, key: &str, value: &Yaml, owner: &str) -> Result<(), String> {
        let number = || {
            value.as_u64().ok_or_else(|| {
                format!(
                    "{owner}: {key} must be a non-negative integer, got {}",
                    show(value)
                )
            })
        };
        match key {
            "min-workers" => self.min_workers = number()? as usize,
            "max-workers" => self.max_workers = number()? as usize,
            "batch-size" => self.batch_size = number()? as usize,
            "max-batch-delay" => self.max_batch_delay = number()?,
            "retry-attempts" => self.retry_attempts = number()? as usize,
            "timeout-ms" => self.timeout_ms = number()?,
            "fuse" => {
                self.fuse = value.as_bool().ok_or_else(|| {
                    format!("{owner}: fuse must be true or false, got {}", show(value))
                })?
            }
            _ => return Err(format!("{owner}: unknown property {key:?}")),
        }
        Ok(())
    }

    fn check(&self, owner: &str) -> Result<(), String> {
        if self.batch_size == 0 {
            return Err(format!("{owner}: batch-size must be at least 1"));
        }
        if self.timeout_ms == 0 {
            return Err(format!("{owner}: timeout-ms must be at least 1"));
        }
        if self.max_workers < self.min_workers {
            return Err(format!(
                "{owner}: max-workers ({}) is less than min-workers ({})",
                self.max_workers, self.min_workers
            ));
        }
        Ok(())
    }
}

/// Where a node model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// `url:` an archive; the workflow gets a node model of its own.
    Archive(String),
    /// `model:` a model registered on its own, whose worker pool the node shares.
    Registered(String),
    /// `remote:` a model served by another server, called over HTTP(S).
    Remote(RemoteSpec),
}

/// The API a remote node speaks, told by its URL's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteProtocol {
    /// TorchServe's and torchyard's `/predictions/{model}[/{version}]`: the node's input is
    /// sent as the body (several fields as multipart form data), the answer's body is the
    /// node's output.
    Predictions,
    /// The Open Inference Protocol (KServe v2), `.../v2/models/{model}[/versions/{v}]/infer`:
    /// JSON tensors both ways (see [`super::open_inference`]).
    OpenInference,
}

/// Where a remote node's bearer token comes from: the spec should name an environment
/// variable of the server rather than carry the secret in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `token: VALUE`.
    Literal(String),
    /// `token-env: NAME`, read when the workflow is registered.
    Env(String),
}

/// A model entry with `remote: URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub url: String,
    pub protocol: RemoteProtocol,
    pub token: Option<TokenSource>,
    /// `ca-file: PATH`: a PEM certificate to trust for an https URL, besides the system's;
    /// relative to the unpacked archive.
    pub ca_file: Option<String>,
}

impl RemoteProtocol {
    /// How describe (and pictures) name the protocol.
    pub fn label(self) -> &'static str {
        match self {
            Self::Predictions => "predictions",
            Self::OpenInference => "open-inference-v2",
        }
    }

    /// The protocol of `url`: Open Inference when its path ends in `/v2/models/.../infer`.
    pub fn of(url: &str) -> Self {
        let path = url.split(['?', '#']).next().unwrap_or_default();
        if path.contains("/v2/models/") && path.ends_with("/infer") {
            Self::OpenInference
        } else {
            Self::Predictions
        }
    }
}

/// How a node chooses, per request, which of its children run: an entry of `routes:`, with
/// children of type `C` (names in the spec, indices once resolved against the DAG).
#[derive(Debug, Clone, PartialEq)]
pub enum Route<C> {
    /// `cases:`: the node's output names a case (the output itself as text or a JSON string,
    /// or its JSON `field:`), and the children listed for it run; `default:` when none matches.
    Cases {
        field: Option<String>,
        cases: Vec<(String, Vec<C>)>,
        default: Option<Vec<C>>,
    },
    /// `split:`: one child per request, drawn with the given weights; deterministic under
    /// `seed:` (the n-th request through the node always takes the same child).
    Split {
        weights: Vec<(C, f64)>,
        seed: Option<u64>,
    },
}

/// A route as the spec names it.
pub type RouteSpec = Route<String>;

impl<C> Route<C> {
    /// The route with every child mapped through `f`, or `f`'s first error.
    pub fn try_map<D, E>(&self, mut f: impl FnMut(&C) -> Result<D, E>) -> Result<Route<D>, E> {
        let mut list = |children: &[C]| children.iter().map(&mut f).collect::<Result<Vec<D>, E>>();
        Ok(match self {
            Self::Cases {
                field,
                cases,
                default,
            } => {
                let mut mapped = Vec::with_capacity(cases.len());
                for (case, children) in cases {
                    mapped.push((case.clone(), list(children)?));
                }
                Route::Cases {
                    field: field.clone(),
                    cases: mapped,
                    default: default.as_deref().map(&mut list).transpose()?,
                }
            }
            Self::Split { weights, seed } => {
                let mut mapped = Vec::with_capacity(weights.len());
                for (child, weight) in weights {
                    mapped.push((f(child)?, *weight));
                }
                Route::Split {
                    weights: mapped,
                    seed: *seed,
                }
            }
        })
    }

    /// Every child the route can choose (as often as it is named).
    pub fn children(&self) -> Vec<&C> {
        match self {
            Self::Cases { cases, default, .. } => cases
                .iter()
                .flat_map(|(_, c)| c)
                .chain(default.iter().flatten())
                .collect(),
            Self::Split { weights, .. } => weights.iter().map(|(c, _)| c).collect(),
        }
    }
}

/// A model of the `models` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub source: ModelSource,
    pub props: NodeProps,
}

/// A parsed, validated-in-shape workflow spec (the DAG itself is checked by [`super::dag`]).
#[derive(Debug, Clone)]
pub struct WorkflowSpec {
    pub globals: NodeProps,
    pub models: BTreeMap<String, ModelEntry>,
    /// Node → the nodes it feeds, in spec order.
    pub dag: Vec<(String, Vec<String>)>,
    /// Node → how it chooses its children (torchyard's `routes:` section), in spec order.
    pub routes: Vec<(String, RouteSpec)>,
}

fn show(value: &Yaml) -> String {
    serde_yaml_ng::to_string(value)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

fn key_name(key: &Yaml, section: &str) -> Result<String, String> {
    match key {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Number(n) => Ok(n.to_string()),
        other => Err(format!("{section}: key {} is not a name", show(other))),
    }
}

impl WorkflowSpec {
    /// Parses the YAML text of a spec file, refusing deep nesting before the full parse.
    pub fn parse(text: &str) -> Result<Self, String> {
        let doc: Yaml = parse_yaml(text).map_err(|e| format!("malformed YAML: {e}"))?;
        let Yaml::Mapping(root) = doc else {
            return Err("the spec must be a mapping with 'models' and 'dag'".into());
        };
        for key in root.keys() {
            let key = key_name(key, "spec")?;
            if !["models", "dag", "routes"].contains(&key.as_str()) {
                return Err(format!("unknown top-level section {key:?}"));
            }
        }
        let models = match root.get("models") {
            None | Some(Yaml::Null) => serde_yaml_ng::Mapping::new(),
            Some(Yaml::Mapping(m)) => m.clone(),
            Some(other) => return Err(format!("'models' must be a mapping, got {}", show(other))),
        };
        let dag = match root.get("dag") {
            Some(Yaml::Mapping(m)) if !m.is_empty() => m,
            Some(Yaml::Mapping(_)) | None | Some(Yaml::Null) => {
                return Err("the spec has no 'dag' section".into())
            }
            Some(other) => return Err(format!("'dag' must be a mapping, got {}", show(other))),
        };
        let mut globals = NodeProps::default();
        let mut entries = Vec::new();
        for (key, value) in &models {
            let key = key_name(key, "models")?;
            match value {
                Yaml::Mapping(m) => entries.push((key, m)),
                scalar => globals.set(&key, scalar, "models")?,
            }
        }
        globals.check("models")?;
        let mut parsed = BTreeMap::new();
        for (name, fields) in entries {
            let owner = format!("model {name:?}");
            let mut props = globals.clone();
            let mut source = None;
            let mut remote = RemoteFields::default();
            for (key, value) in fields {
                let key = key_name(key, &owner)?;
                if !matches!(
                    key.as_str(),
                    "url" | "model" | "remote" | "token" | "token-env" | "ca-file"
                ) {
                    props.set(&key, value, &owner)?;
                    continue;
                }
                let text = value
                    .as_str()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| format!("{owner}: {key} must be a non-empty string"))?
                    .to_string();
                let mut token = |t| remote.token.replace(t).is_none();
                let fresh = match key.as_str() {
                    "token" => token(TokenSource::Literal(text)),
                    "token-env" => token(TokenSource::Env(text)),
                    "ca-file" => remote.ca_file.replace(text).is_none(),
                    _ => source.replace((key.clone(), text)).is_none(),
                };
                if !fresh {
                    return Err(format!(
                        "{owner}: give one of url, model and remote, and not both token and token-env"
                    ));
                }
            }
            props.check(&owner)?;
            let source = match source {
                None => return Err(format!("{owner} has no url")),
                Some((key, text)) if key == "remote" => ModelSource::Remote(RemoteSpec {
                    protocol: RemoteProtocol::of(&text),
                    url: text,
                    token: remote.token,
                    ca_file: remote.ca_file,
                }),
                Some(_) if remote.token.is_some() || remote.ca_file.is_some() => {
                    return Err(format!(
                        "{owner}: token, token-env and ca-file belong to a remote model"
                    ))
                }
                Some((key, text)) if key == "url" => ModelSource::Archive(text),
                Some((_, text)) => ModelSource::Registered(text),
            };
            parsed.insert(name, ModelEntry { source, props });
        }
        let mut edges = Vec::new();
        for (node, children) in dag {
            let node = key_name(node, "dag")?;
            let children = match children {
                Yaml::Sequence(items) => items
                    .iter()
                    .map(|c| key_name(c, &format!("dag node {node:?}")))
                    .collect::<Result<Vec<_>, _>>()?,
                Yaml::Null => Vec::new(),
                Yaml::String(single) => vec![single.clone()],
                other => {
                    return Err(format!(
                        "dag node {node:?} must list the nodes it feeds, got {}",
                        show(other)
                    ))
                }
            };
            edges.push((node, children));
        }
        let routes = match root.get("routes") {
            None | Some(Yaml::Null) => Vec::new(),
            Some(Yaml::Mapping(m)) => m
                .iter()
                .map(|(node, route)| {
                    let node = key_name(node, "routes")?;
                    let route = parse_route(&node, route)?;
                    Ok((node, route))
                })
                .collect::<Result<_, String>>()?,
            Some(other) => return Err(format!("'routes' must be a mapping, got {}", show(other))),
        };
        Ok(Self {
            globals,
            models: parsed,
            dag: edges,
            routes,
        })
    }
}

/// The remote-only fields of a model entry, gathered before the entry's source is known.
#[derive(Default)]
struct RemoteFields {
    token: Option<TokenSource>,
    ca_file: Option<String>,
}

/// A list of node names: a sequence, or one name.
fn names(value: &Yaml, owner: &str) -> Result<Vec<String>, String> {
    match value {
        Yaml::Sequence(items) => items.iter().map(|c| key_name(c, owner)).collect(),
        Yaml::String(single) => Ok(vec![single.clone()]),
        other => Err(format!("{owner} must list node names, got {}", show(other))),
    }
}

/// One entry of `routes:`: either `cases:` (with `field:` and `default:`) or `split:` (with
/// `seed:`).
fn parse_route(node: &str, value: &Yaml) -> Result<RouteSpec, String> {
    let owner = format!("routes.{node}");
    let Yaml::Mapping(fields) = value else {
        return Err(format!(
            "{owner} must be a mapping with 'cases' or 'split', got {}",
            show(value)
        ));
    };
    for key in fields.keys() {
        let key = key_name(key, &owner)?;
        if !["cases", "default", "field", "split", "seed"].contains(&key.as_str()) {
            return Err(format!("{owner}: unknown key {key:?}"));
        }
    }
    match (fields.get("cases"), fields.get("split")) {
        (Some(Yaml::Mapping(cases)), None) => {
            if fields.contains_key("seed") {
                return Err(format!("{owner}: seed belongs to a split"));
            }
            let field = match fields.get("field") {
                None => None,
                Some(Yaml::String(f)) if !f.is_empty() => Some(f.clone()),
                Some(other) => {
                    return Err(format!(
                        "{owner}.field must be a field name, got {}",
                        show(other)
                    ))
                }
            };
            let cases = cases
                .iter()
                .map(|(case, children)| {
                    let case = key_name(case, &owner)?;
                    let children = names(children, &format!("{owner}.cases.{case}"))?;
                    Ok((case, children))
                })
                .collect::<Result<Vec<_>, String>>()?;
            if cases.is_empty() {
                return Err(format!("{owner}.cases is empty"));
            }
            let default = fields
                .get("default")
                .map(|d| names(d, &format!("{owner}.default")))
                .transpose()?;
            Ok(RouteSpec::Cases {
                field,
                cases,
                default,
            })
        }
        (None, Some(Yaml::Mapping(weights))) => {
            if ["cases", "default", "field"]
                .iter()
                .any(|k| fields.contains_key(*k))
            {
                return Err(format!(
                    "{owner}: a split takes only 'split' and 'seed', not cases, default or field"
                ));
            }
            let weights = weights
                .iter()
                .map(|(child, weight)| {
                    let child = key_name(child, &owner)?;
                    match weight.as_f64() {
                        Some(w) if w > 0.0 && w.is_finite() => Ok((child, w)),
                        _ => Err(format!(
                            "{owner}.split.{child}: the weight must be a positive number, got {}",
                            show(weight)
                        )),
                    }
                })
                .collect::<Result<Vec<_>, String>>()?;
            let seed = match fields.get("seed") {
                None => None,
                Some(seed) => Some(seed.as_u64().ok_or_else(|| {
                    format!(
                        "{owner}.seed must be a non-negative integer, got {}",
                        show(seed)
                    )
                })?),
            };
            Ok(RouteSpec::Split { weights, seed })
        }
        (Some(_), Some(_)) => Err(format!("{owner}: give either cases or split, not both")),
        (None, None) => Err(format!("{owner} needs 'cases' or 'split'")),
        _ => Err(format!("{owner}: cases and split must be mappings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "
models:
    min-workers: 1
    max-workers: 4
    batch-size: 3
    max-batch-delay : 5000
    retry-attempts : 3
    timeout-ms : 5000
    m1:
       url : model1.mar
       min-workers: 1
       max-workers: 2
       batch-size: 4
    m2:
       url : model2.mar
dag:
  pre_processing : [m1]
  m1 : [m2]
  m2 : [postprocessing]
";

    #[test]
    fn globals_apply_and_models_override() {
        let spec = WorkflowSpec::parse(SEED).unwrap();
        assert_eq!(spec.globals.max_workers, 4);
        let m1 = &spec.models["m1"].props;
        assert_eq!((m1.max_workers, m1.batch_size, m1.timeout_ms), (2, 4, 5000));
        let m2 = &spec.models["m2"].props;
        assert_eq!(
            (m2.max_workers, m2.batch_size, m2.retry_attempts),
            (4, 3, 3)
        );
        assert_eq!(spec.dag.len(), 3);
    }

    #[test]
    fn fuse_is_a_boolean_property_with_a_global_default() {
        let yaml = "models:\n  fuse: false\n  m1:\n    url: a.mar\n    fuse: true\n  m2:\n    url: b.mar\ndag:\n  m1: [m2]\n";
        let spec = WorkflowSpec::parse(yaml).unwrap();
        assert!(!spec.globals.fuse);
        assert!(spec.models["m1"].props.fuse && !spec.models["m2"].props.fuse);
        assert!(NodeProps::default().fuse);
        let bad = "models:\n  m1:\n    url: a.mar\n    fuse: 1\ndag:\n  m1: []\n";
        assert_eq!(
            WorkflowSpec::parse(bad).unwrap_err(),
            "model \"m1\": fuse must be true or false, got 1"
        );
    }

    #[test]
    fn defaults_match_torchserve() {
        let spec = WorkflowSpec::parse("models:\n  m:\n    url: m.mar\ndag:\n  m: []\n").unwrap();
        assert_eq!(spec.models["m"].props, NodeProps::default());
        let shared = WorkflowSpec::parse("models:\n  m:\n    model: resnet\ndag:\n  m: []\n");
        assert_eq!(
            shared.unwrap().models["m"].source,
            ModelSource::Registered("resnet".into())
        );
    }

    #[test]
    fn remote_models_keep_their_url_protocol_and_token_source() {
        let spec = WorkflowSpec::parse(
            "models:\n  timeout-ms: 300\n  r:\n    remote: https://gpu/v2/models/r/infer\n    token-env: GPU_TOKEN\n    ca-file: ca.pem\n\
             dag:\n  r: []\n",
        )
        .unwrap();
        let r = &spec.models["r"];
        assert_eq!(r.props.timeout_ms, 300);
        assert_eq!(
            r.source,
            ModelSource::Remote(RemoteSpec {
                url: "https://gpu/v2/models/r/infer".into(),
                protocol: RemoteProtocol::OpenInference,
                token: Some(TokenSource::Env("GPU_TOKEN".into())),
                ca_file: Some("ca.pem".into()),
            })
        );
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        let cases = [
            ("models: [\n", "malformed YAML"),
            (
                "models:\n  m:\n    min-workers: 1\ndag:\n  m: []\n",
                "has no url",
            ),
            ("models:\n  batch-size: many\ndag:\n  a: []\n", "batch-size"),
            (
                "models:\n  m:\n    url: m.mar\n    speed: 3\ndag:\n  m: []\n",
                "unknown property",
            ),
            ("models:\n  m:\n    url: m.mar\n", "no 'dag'"),
            (
                "models:\n  m:\n    url: m.mar\n    model: x\ndag:\n  m: []\n",
                "not both",
            ),
            ("dag: 5\n", "'dag' must be a mapping"),
            (
                "models:\n  min-workers: 3\n  max-workers: 2\ndag:\n  a: []\n",
                "less than",
            ),
            ("dag:\n  a: {b: 1}\n", "must list"),
            (
                "models:\n  m:\n    url: m.mar\n    token: t\ndag:\n  m: []\n",
                "belong to a remote model",
            ),
            (
                "models:\n  m:\n    remote: http://h/p/m\n    token: t\n    token-env: T\ndag:\n  m: []\n",
                "not both token and token-env",
            ),
            ("dag:\n  a: []\nroutes: [a]\n", "'routes' must be a mapping"),
            ("dag:\n  a: []\nroutes:\n  a: b\n", "routes.a must be a mapping"),
            ("dag:\n  a: []\nroutes:\n  a:\n    cases: {}\n", "routes.a.cases is empty"),
            ("dag:\n  a: []\nroutes:\n  a:\n    split: {b: 1}\n    seed: -1\n", "seed must be"),
            (&"[".repeat(100_000), "nested deeper than 64 levels"),
        ];
        for (text, expected) in cases {
            let err = WorkflowSpec::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}

#[cfg(test)]
mod robustness {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::WorkflowSpec;
    use crate::workflow::dag::Dag;

    /// Every file of the corpus parses or fails with a message; none panics or hangs.
    #[test]
    fn corpus_specs_fail_cleanly_or_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/spec");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            if let Err(message) = WorkflowSpec::parse(&text) {
                assert!(!message.is_empty());
            }
            seen += 1;
        }
        assert!(seen >= 5, "the corpus is missing");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = WorkflowSpec::parse(&text);
        }

        /// Generated DAGs either fail validation or yield an order that respects every edge.
        #[test]
        fn generated_dags_validate_consistently(
            edges in prop::collection::vec((0usize..6, 0usize..6), 1..12),
            batch in 0u64..4,
        ) {
            let names: Vec<String> = (0..6).map(|i| format!("n{i}")).collect();
            let mut text = format!("models:\n  batch-size: {batch}\n  n0:\n    url: n0.mar\ndag:\n");
            let mut children: Vec<Vec<&str>> = vec![Vec::new(); 6];
            for &(from, to) in &edges {
                children[from].push(&names[to]);
            }
            for (i, kids) in children.iter().enumerate() {
                if !kids.is_empty() {
                    text.push_str(&format!("  {}: [{}]\n", names[i], kids.join(", ")));
                }
            }
            let functions: HashSet<String> = names.iter().skip(1).cloned().collect();
            let Ok(spec) = WorkflowSpec::parse(&text) else {
                prop_assert_eq!(batch, 0);
                return Ok(());
            };
            if let Ok(dag) = Dag::build(&spec, &functions) {
                let position = |i: usize| dag.order.iter().position(|&o| o == i).unwrap();
                for (i, node) in dag.nodes.iter().enumerate() {
                    for &child in &node.children {
                        prop_assert!(position(i) < position(child));
                    }
                }
                prop_assert!(dag.nodes[dag.entry].parents.is_empty());
            }
        }
    }
}
