//! The drawing model: nodes with a kind and label lines, edges with an optional label.

use super::super::dag::{Dag, NodeKind};
use super::super::served_workflow::Workflow;
use super::super::spec::{NodeProps, Route};

/// One node to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct PicNode {
    pub name: String,
    pub kind: NodeKind,
    /// Lines under the name: workers and batching.
    pub details: Vec<String>,
}

/// One edge to draw, between indices into [`Picture::nodes`].
#[derive(Debug, Clone, PartialEq)]
pub struct PicEdge {
    pub from: usize,
    pub to: usize,
    /// The route case(s) or split weight that takes this edge; None: always taken.
    pub label: Option<String>,
}

/// A workflow as something to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub title: String,
    pub nodes: Vec<PicNode>,
    pub edges: Vec<PicEdge>,
}

impl Picture {
    /// The picture of a running workflow; with `stats`, each node also shows its calls and
    /// median latency so far.
    pub fn of(workflow: &Workflow, stats: bool) -> Self {
        let props: Vec<&NodeProps> = workflow.nodes.iter().map(|n| &n.props).collect();
        let mut picture = Self::build(&workflow.name, &workflow.dag, &props);
        if stats {
            for (node, served) in picture.nodes.iter_mut().zip(&workflow.nodes) {
                let (calls, p50) = served.metrics.calls_and_p50();
                node.details.push(stats_line(calls, p50));
            }
        }
        picture
    }

    /// The picture of `dag`, whose node `i` has properties `props[i]`.
    pub fn build(title: &str, dag: &Dag, props: &[&NodeProps]) -> Self {
        let nodes = dag
            .nodes
            .iter()
            .zip(props)
            .map(|(node, p)| PicNode {
                name: node.name.clone(),
                kind: node.kind,
                details: details(node.kind, p),
            })
            .collect();
        let mut edges = Vec::new();
        for (from, node) in dag.nodes.iter().enumerate() {
            for &to in &node.children {
                let label = node.route.as_ref().map(|r| edge_label(&r.route, to));
                edges.push(PicEdge { from, to, label });
            }
        }
        Self {
            title: title.to_string(),
            nodes,
            edges,
        }
    }
}

/// Workers and batching of a node; a remote node has neither here.
fn details(kind: NodeKind, p: &NodeProps) -> Vec<String> {
    if kind == NodeKind::Remote {
        return vec![format!("timeout {} ms", p.timeout_ms)];
    }
    vec![
        format!("workers {}-{}", p.min_workers, p.max_workers),
        format!("batch {} / {} ms", p.batch_size, p.max_batch_delay),
    ]
}

/// `calls N, p50 <= X ms`; the median is a histogram bucket's bound, `-` without calls and
/// `> max` past the last bucket.
fn stats_line(calls: u64, p50: Option<f64>) -> String {
    match (calls, p50) {
        (0, _) => "calls 0".to_string(),
        (_, Some(bound)) => format!("calls {calls}, p50 <= {} ms", bound * 1000.0),
        (_, None) => format!("calls {calls}, p50 > max bucket"),
    }
}

/// What takes the edge to child `to` under `route`: its cases (`default` included) or its
/// split weight.
fn edge_label(route: &Route<usize>, to: usize) -> String {
    match route {
        Route::Cases { cases, default, .. } => {
            let mut names: Vec<&str> = cases
                .iter()
                .filter(|(_, c)| c.contains(&to))
                .map(|(case, _)| case.as_str())
                .collect();
            if default.as_ref().is_some_and(|d| d.contains(&to)) {
                names.push("default");
            }
            names.join(" | ")
        }
        Route::Split { weights, .. } => weights
            .iter()
            .filter(|(c, _)| *c == to)
            .map(|(_, w)| format!("{w}"))
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

/// The style of a kind, shared by the renderers: (shape name, fill colour).
pub fn style(kind: NodeKind) -> (&'static str, &'static str) {
    match kind {
        NodeKind::Model => ("box", "#cfe2ff"),
        NodeKind::Function => ("ellipse", "#d1e7dd"),
        NodeKind::Remote => ("hexagon", "#fff3cd"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fan-out/fan-in picture: pre -> (m1, m2) -> post, with a split on pre.
    pub fn sample() -> Picture {
        let node = |name: &str, kind| PicNode {
            name: name.into(),
            kind,
            details: vec!["workers 1-1".into()],
        };
        let edge = |from, to, label: Option<&str>| PicEdge {
            from,
            to,
            label: label.map(String::from),
        };
        Picture {
            title: "wf".into(),
            nodes: vec![
                node("pre", NodeKind::Function),
                node("m1", NodeKind::Model),
                node("m2", NodeKind::Remote),
                node("post", NodeKind::Function),
            ],
            edges: vec![
                edge(0, 1, Some("0.7")),
                edge(0, 2, Some("0.3")),
                edge(1, 3, None),
                edge(2, 3, None),
            ],
        }
    }

    #[test]
    fn stats_lines() {
        assert_eq!(stats_line(0, None), "calls 0");
        assert_eq!(stats_line(3, Some(0.005)), "calls 3, p50 <= 5 ms");
        assert_eq!(stats_line(3, None), "calls 3, p50 > max bucket");
    }

    #[test]
    fn edge_labels_name_cases_and_weights() {
        let cases = Route::Cases {
            field: None,
            cases: vec![("a".into(), vec![1]), ("b".into(), vec![1, 2])],
            default: Some(vec![2]),
        };
        assert_eq!(edge_label(&cases, 1), "a | b");
        assert_eq!(edge_label(&cases, 2), "b | default");
        let split = Route::Split {
            weights: vec![(1, 0.25), (2, 0.75)],
            seed: None,
        };
        assert_eq!(edge_label(&split, 2), "0.75");
    }
}
