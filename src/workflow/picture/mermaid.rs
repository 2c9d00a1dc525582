//! Mermaid flowchart text of a [`Picture`].

use std::fmt::Write;

use super::super::dag::NodeKind;
use super::graph::{style, Picture};

/// Text safe inside a Mermaid `"…"` label: quotes and angle brackets become entity codes, so a
/// name or route case cannot close the label or open HTML of its own.
fn escaped(s: &str) -> String {
    s.replace('"', "#quot;")
        .replace('<', "#lt;")
        .replace('>', "#gt;")
}

/// The picture as a `flowchart TD`: nodes `n0…` labelled with name, kind and details,
/// shaped and styled by kind; edges labelled with their route case or split weight.
pub fn render(picture: &Picture) -> String {
    let mut out = String::from("flowchart TD\n");
    for (i, node) in picture.nodes.iter().enumerate() {
        let mut label = format!("{}<br/>[{}]", escaped(&node.name), node.kind.label());
        for line in &node.details {
            let _ = write!(label, "<br/>{}", escaped(line));
        }
        let (open, close) = match node.kind {
            NodeKind::Model => ("[", "]"),
            NodeKind::Function => ("(", ")"),
            NodeKind::Remote => ("{{", "}}"),
        };
        let _ = writeln!(out, "  n{i}{open}\"{label}\"{close}");
    }
    for edge in &picture.edges {
        match &edge.label {
            Some(l) => {
                let _ = writeln!(out, "  n{} -->|\"{}\"| n{}", edge.from, escaped(l), edge.to);
            }
            None => {
                let _ = writeln!(out, "  n{} --> n{}", edge.from, edge.to);
            }
        }
    }
    for kind in [NodeKind::Model, NodeKind::Function, NodeKind::Remote] {
        let _ = writeln!(out, "  classDef {} fill:{}", kind.label(), style(kind).1);
    }
    for (i, node) in picture.nodes.iter().enumerate() {
        let _ = writeln!(out, "  class n{i} {}", node.kind.label());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::graph::tests::sample;
    use super::*;

    #[test]
    fn flowchart_has_nodes_edges_and_classes() {
        let text = render(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "flowchart TD");
        assert_eq!(lines[1], "  n0(\"pre<br/>[function]<br/>workers 1-1\")");
        assert!(lines[3].starts_with("  n2{{\"m2<br/>[remote]"));
        assert_eq!(lines[5], "  n0 -->|\"0.7\"| n1");
        assert_eq!(lines[7], "  n1 --> n3");
        assert_eq!(text.matches("classDef").count(), 3);
        assert!(text.contains("class n3 function"));
    }

    #[test]
    fn labels_cannot_close_themselves_or_open_html() {
        assert_eq!(escaped(r#"a"b<img src=x>"#), "a#quot;b#lt;img src=x#gt;");
    }
}
