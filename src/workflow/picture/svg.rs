//! SVG of a [`Picture`], laid out in-process by the `layout-rs` crate (no Graphviz binary) and
//! drawn on an [`SvgCanvas`].

use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;

use super::super::dag::NodeKind;
use super::canvas::{text_size, SvgCanvas};
use super::graph::{style, Picture};

/// Font size of node labels.
const FONT_SIZE: usize = 14;
/// Space between a node's text and its border, left and right; top and bottom get half.
const PADDING: f64 = 16.0;

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
            let text = text_size(&label, FONT_SIZE);
            let size = Point::new(text.x + 2.0 * PADDING, text.y + PADDING);
            graph.add_node(Element::create(
                ShapeKind::new_box(&label),
                look(node.kind),
                Orientation::TopToBottom,
                size,
            ))
        })
        .collect();
    // Edges keep layout-rs's simple look (labels on white, 15 px): its placer may move a label
    // onto a connector of its own, which has that look.
    for edge in &picture.edges {
        let arrow = Arrow::simple(edge.label.as_deref().unwrap_or(""));
        graph.add_edge(arrow, handles[edge.from], handles[edge.to]);
    }
    let mut canvas = SvgCanvas::new();
    graph.do_it(false, false, false, &mut canvas);
    canvas.finish(&format!("workflow {}", picture.title))
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

    /// The numbers in attribute `name="..."` of each `<rect` after the background.
    fn node_rects(svg: &str) -> Vec<[f64; 4]> {
        let attr = |tag: &str, name: &str| -> f64 {
            let start = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            tag[start..].split('"').next().unwrap().parse().unwrap()
        };
        svg.split("<rect")
            .skip(2)
            .map(|tag| {
                [
                    attr(tag, "x"),
                    attr(tag, "y"),
                    attr(tag, "width"),
                    attr(tag, "height"),
                ]
            })
            .collect()
    }

    #[test]
    fn the_view_box_fits_the_boxes_with_a_small_margin() {
        let svg = render(&sample());
        let view_box = svg
            .split("viewBox=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let v: Vec<f64> = view_box.split(' ').map(|n| n.parse().unwrap()).collect();
        let rects = node_rects(&svg);
        assert_eq!(rects.len(), 4);
        let right = rects.iter().map(|r| r[0] + r[2]).fold(f64::MIN, f64::max);
        let bottom = rects.iter().map(|r| r[1] + r[3]).fold(f64::MIN, f64::max);
        for r in &rects {
            assert!(r[0] > v[0] && r[1] > v[1], "{r:?} outside {view_box}");
        }
        // Only the margin beyond the lowest and rightmost boxes (text sits inside them).
        assert!(
            (v[1] + v[3] - bottom - 12.0).abs() < 0.2,
            "{view_box}, bottom {bottom}"
        );
        assert!(v[0] + v[2] - right <= 12.2, "{view_box}, right {right}");
    }
}
