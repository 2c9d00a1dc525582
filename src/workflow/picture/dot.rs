//! Graphviz DOT text of a [`Picture`].

use std::fmt::Write;

use super::graph::{style, Picture};

/// `s` as a DOT double-quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The picture as a `digraph`: one node statement per node (its name, kind and details in
/// the label, shaped and filled by kind), one edge statement per edge.
pub fn render(picture: &Picture) -> String {
    let mut out = format!("digraph {} {{\n  rankdir=TB;\n", quoted(&picture.title));
    out.push_str("  node [style=filled, fontname=\"Helvetica\"];\n");
    for node in &picture.nodes {
        let (shape, fill) = style(node.kind);
        let mut label = format!("{}\n[{}]", node.name, node.kind.label());
        for line in &node.details {
            label.push('\n');
            label.push_str(line);
        }
        let _ = writeln!(
            out,
            "  {} [label={}, shape={shape}, fillcolor={}];",
            quoted(&node.name),
            quoted(&label).replace('\n', "\\n"),
            quoted(fill)
        );
    }
    for edge in &picture.edges {
        let (from, to) = (&picture.nodes[edge.from].name, &picture.nodes[edge.to].name);
        let label = match &edge.label {
            Some(l) => format!(" [label={}]", quoted(l)),
            None => String::new(),
        };
        let _ = writeln!(out, "  {} -> {}{label};", quoted(from), quoted(to));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::graph::tests::sample;
    use super::*;

    #[test]
    fn one_statement_per_node_and_edge() {
        let dot = render(&sample());
        assert!(dot.starts_with("digraph \"wf\" {"));
        assert!(dot.trim_end().ends_with('}'));
        let nodes = dot
            .lines()
            .filter(|l| l.contains("[label=") && !l.contains("->"));
        assert_eq!(nodes.count(), 4);
        let edges: Vec<&str> = dot.lines().filter(|l| l.contains("->")).collect();
        assert_eq!(edges.len(), 4);
        assert!(edges[0].contains("\"pre\" -> \"m1\" [label=\"0.7\"]"));
        assert!(dot.contains("shape=hexagon"));
        assert!(dot.contains("label=\"pre\\n[function]\\nworkers 1-1\""));
    }

    #[test]
    fn quotes_are_escaped() {
        assert_eq!(quoted("a\"b\\"), "\"a\\\"b\\\\\"");
    }
}
