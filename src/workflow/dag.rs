//! The workflow graph: nodes, edges, the entry node, the leaves and a topological order.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::route::Router;
use super::spec::{ModelSource, WorkflowSpec};

/// What runs at a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A model of the `models` section served here (`url:` or `model:`).
    Model,
    /// A function of the handler file.
    Function,
    /// A model served by another server (`remote:`), called over HTTP(S).
    Remote,
}

impl NodeKind {
    /// How describe (and pictures) name the kind.
    pub fn label(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Function => "function",
            Self::Remote => "remote",
        }
    }
}

/// One node with its neighbours (indices into [`Dag::nodes`]).
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    pub parents: Vec<usize>,
    pub children: Vec<usize>,
    /// How the node chooses which children run per request (its `routes:` entry); None:
    /// all of them.
    pub route: Option<Router>,
}

/// A validated DAG with one entry node.
#[derive(Debug, Clone)]
pub struct Dag {
    pub nodes: Vec<Node>,
    pub entry: usize,
    pub leaves: Vec<usize>,
    /// Every node after all of its parents.
    pub order: Vec<usize>,
}

impl Dag {
    /// Builds the graph of `spec`, whose non-model nodes must be among `functions`.
    pub fn build(spec: &WorkflowSpec, functions: &HashSet<String>) -> Result<Self, String> {
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut nodes: Vec<Node> = Vec::new();
        let mut add = |name: &str, nodes: &mut Vec<Node>| -> Result<usize, String> {
            if let Some(&i) = index.get(name) {
                return Ok(i);
            }
            let kind = if let Some(model) = spec.models.get(name) {
                match model.source {
                    ModelSource::Remote(_) => NodeKind::Remote,
                    _ => NodeKind::Model,
                }
            } else if functions.contains(name) {
                NodeKind::Function
            } else {
                return Err(format!(
                    "dag node {name:?} is neither a model of the 'models' section nor a function of the handler file"
                ));
            };
            nodes.push(Node {
                name: name.to_string(),
                kind,
                parents: Vec::new(),
                children: Vec::new(),
                route: None,
            });
            index.insert(name.to_string(), nodes.len() - 1);
            Ok(nodes.len() - 1)
        };
        for (node, children) in &spec.dag {
            let from = add(node, &mut nodes)?;
            for child in children {
                let to = add(child, &mut nodes)?;
                if from == to {
                    return Err(format!("dag node {node:?} feeds itself"));
                }
                if !nodes[from].children.contains(&to) {
                    nodes[from].children.push(to);
                    nodes[to].parents.push(from);
                }
            }
        }
        for (node, route) in &spec.routes {
            let &at = index
                .get(node)
                .ok_or_else(|| format!("routes.{node}: {node:?} is not a node of the dag"))?;
            let children: Vec<(&str, usize)> = nodes[at]
                .children
                .iter()
                .map(|&c| (nodes[c].name.as_str(), c))
                .collect();
            nodes[at].route = Some(Router::resolve(node, route, &children)?);
        }
        let order = topological_order(&nodes)?;
        let roots: Vec<usize> = (0..nodes.len())
            .filter(|&i| nodes[i].parents.is_empty())
            .collect();
        if roots.len() != 1 {
            let names: Vec<&str> = roots.iter().map(|&i| nodes[i].name.as_str()).collect();
            return Err(format!(
                "the dag must have exactly one entry node that receives the request, found {}: {}",
                roots.len(),
                names.join(", ")
            ));
        }
        let leaves = (0..nodes.len())
            .filter(|&i| nodes[i].children.is_empty())
            .collect();
        Ok(Self {
            entry: roots[0],
            leaves,
            order,
            nodes,
        })
    }
}

/// Kahn's algorithm; a cycle is reported with the nodes on it.
fn topological_order(nodes: &[Node]) -> Result<Vec<usize>, String> {
    let mut pending: Vec<usize> = nodes.iter().map(|n| n.parents.len()).collect();
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for &child in &nodes[i].children {
            pending[child] -= 1;
            if pending[child] == 0 {
                ready.push(child);
            }
        }
    }
    if order.len() < nodes.len() {
        let cyclic: BTreeSet<&str> = (0..nodes.len())
            .filter(|&i| pending[i] > 0)
            .map(|i| nodes[i].name.as_str())
            .collect();
        return Err(format!(
            "the dag has a cycle through {}",
            cyclic.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(yaml: &str, functions: &[&str]) -> Result<Dag, String> {
        let spec = WorkflowSpec::parse(yaml)?;
        Dag::build(&spec, &functions.iter().map(|s| s.to_string()).collect())
    }

    const MODELS: &str = "models:\n  m1:\n    url: a.mar\n  m2:\n    url: b.mar\n";

    #[test]
    fn parallel_dag_has_one_entry_and_one_leaf() {
        let d = dag(
            &format!("{MODELS}dag:\n  pre: [m1, m2]\n  m1: [agg]\n  m2: [agg]\n"),
            &["pre", "agg"],
        )
        .unwrap();
        assert_eq!(d.nodes[d.entry].name, "pre");
        assert_eq!(d.leaves.len(), 1);
        let agg = &d.nodes[d.leaves[0]];
        assert_eq!(agg.parents.len(), 2);
        assert_eq!(agg.kind, NodeKind::Function);
        let pos = |n: &str| d.order.iter().position(|&i| d.nodes[i].name == n).unwrap();
        assert!(pos("pre") < pos("m1") && pos("m2") < pos("agg"));
    }

    #[test]
    fn rejects_cycles_unknown_nodes_and_several_entries() {
        let cycle = dag(
            &format!("{MODELS}dag:\n  pre: [m1]\n  m1: [m2]\n  m2: [m1]\n"),
            &["pre"],
        );
        assert!(cycle.unwrap_err().contains("cycle through m1, m2"));
        let unknown = dag(&format!("{MODELS}dag:\n  pre: [m3]\n"), &["pre"]);
        assert!(unknown.unwrap_err().contains("\"m3\""));
        let two = dag(
            &format!("{MODELS}dag:\n  m1: [agg]\n  m2: [agg]\n"),
            &["agg"],
        );
        assert!(two.unwrap_err().contains("exactly one entry node"));
        let own = dag(&format!("{MODELS}dag:\n  m1: [m1]\n"), &[]);
        assert!(own.unwrap_err().contains("feeds itself"));
    }

    #[test]
    fn remote_models_and_routes_attach_to_their_nodes() {
        let spec = "models:\n  r:\n    remote: https://gpu:8443/v2/models/r/infer\n    token-env: T\n\
                    dag:\n  pre: [r, post]\n  r: [post]\nroutes:\n  pre:\n    cases: {big: r, small: post}\n";
        let d = dag(spec, &["pre", "post"]).unwrap();
        let at = |n: &str| d.nodes.iter().position(|x| x.name == n).unwrap();
        assert_eq!(d.nodes[at("r")].kind, NodeKind::Remote);
        assert_eq!(NodeKind::Remote.label(), "remote");
        let route = d.nodes[at("pre")].route.as_ref().unwrap();
        assert_eq!(route.choose(b"big").unwrap(), [at("r")]);
        assert!(d.nodes[at("r")].route.is_none());
        let ghost = spec.replace("routes:\n  pre:", "routes:\n  ghost:");
        assert!(dag(&ghost, &["pre", "post"])
            .unwrap_err()
            .contains("routes.ghost: \"ghost\" is not a node"));
        let leaf = spec.replace("routes:\n  pre:", "routes:\n  post:");
        assert!(dag(&leaf, &["pre", "post"])
            .unwrap_err()
            .contains("at least two children"));
    }
}
