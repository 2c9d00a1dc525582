//! SVG of a [`Picture`], laid out in-process by the `layout-rs` crate (no Graphviz binary).

use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::style::StyleAttr;
use layout::std_shapes::render::get_shape_size;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::super::dag::NodeKind;
use super::graph::{style, Picture};

/// Font size of node and edge labels.
const FONT_SIZE: usize = 14;

/// Node look by kind: the fill colour shared with DOT, rounded corners for functions and a
/// thick border for remote nodes (layout-rs draws boxes, circles and records only).
fn look(kind: NodeKind) -> StyleAttr {
    let fill = Color::from_name(style(kind).1);
    let (line_width, rounded) = match kind {
        NodeKind::Model => (1, 0),
        NodeKind::Function => (1, 12),
        NodeKind::Remote => (3, 0),
    };
    StyleAttr::new(Color::fast("black"), line_width, fill, rounded, FONT_SIZE)
}

/// The picture as a standalone SVG document, top to bottom.
pub fn render(picture: &Picture) -> String {
    let mut graph = VisualGraph::new(Orientation::TopToBottom);
    let handles: Vec<_> = picture
        .nodes
        .iter()
        .map(|node| {
            let mut label = format!("{}\n[{}]", node.name, node.kind.label());
            for line in &node.details {
                label.push('\n');
                label.push_str(line);
            }
            let shape = ShapeKind::new_box(&label);
            let size = get_shape_size(Orientation::TopToBottom, &shape, FONT_SIZE, false);
            graph.add_node(Element::create(
                shape,
                look(node.kind),
                Orientation::TopToBottom,
                size,
            ))
        })
        .collect();
    for edge in &picture.edges {
        let arrow = Arrow::simple(edge.label.as_deref().unwrap_or(""));
        graph.add_edge(arrow, handles[edge.from], handles[edge.to]);
    }
    let mut writer = SVGWriter::new();
    graph.do_it(false, false, false, &mut writer);
    writer.finalize()
}

#[cfg(test)]
mod tests {
    use super::super::graph::tests::sample;
    use super::*;

    #[test]
    fn every_node_and_edge_label_is_drawn() {
        let picture = sample();
        let svg = render(&picture);
        assert!(svg.contains("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for node in &picture.nodes {
            assert!(svg.contains(&node.name), "{} missing", node.name);
        }
        assert!(svg.contains("0.7"));
    }
}
