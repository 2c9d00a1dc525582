//! An SVG drawing surface for layout-rs, used instead of the crate's own `SVGWriter`, which
//! sized the canvas from each label's character count (a tall blank strip under every
//! picture), drew edges over their labels and set text in Times. This one keeps the true
//! bounding box of what was drawn, draws all text last with a halo in its background colour so
//! an edge running through a label cannot strike it out, and sets text in a sans-serif font.

use std::fmt::Write;

use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;

/// Line height of text, in font sizes.
const LINE_HEIGHT: f64 = 1.25;
/// Width of an average character of the sans-serif font, in font sizes (generous, so text
/// measured with it fits in the common fonts: DejaVu Sans, Helvetica, Arial).
const CHAR_WIDTH: f64 = 0.62;
/// Blank space around the picture.
const MARGIN: f64 = 12.0;
/// Colour of edges and their arrowheads (one marker serves every edge).
const EDGE_COLOUR: &str = "#333333";

/// The size that `text` (lines split by `\n`) takes at `font_size`.
pub fn text_size(text: &str, font_size: usize) -> Point {
    let font = font_size as f64;
    let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let lines = text.lines().count().max(1);
    Point::new(
        widest as f64 * font * CHAR_WIDTH,
        lines as f64 * font * LINE_HEIGHT,
    )
}

/// Collects draw calls from a layout and writes them as one standalone SVG document.
#[derive(Debug)]
pub struct SvgCanvas {
    /// Boxes, ellipses, lines and edges, in drawing order.
    shapes: String,
    /// Text, drawn over every shape.
    labels: String,
    /// Clip paths, for the `<defs>`.
    clips: Vec<String>,
    /// Top-left and bottom-right corners of everything drawn so far.
    bounds: Option<(Point, Point)>,
}

impl SvgCanvas {
    /// An empty canvas.
    pub fn new() -> Self {
        Self {
            shapes: String::new(),
            labels: String::new(),
            clips: Vec::new(),
            bounds: None,
        }
    }

    /// Widens the bounds to the box at `xy` (top-left) of `size`.
    fn include(&mut self, xy: Point, size: Point) {
        let far = Point::new(xy.x + size.x, xy.y + size.y);
        self.bounds = Some(match self.bounds {
            None => (xy, far),
            Some((low, high)) => (
                Point::new(low.x.min(xy.x), low.y.min(xy.y)),
                Point::new(high.x.max(far.x), high.y.max(far.y)),
            ),
        });
    }

    /// The SVG document titled `title`: white background, everything drawn, and a viewBox that
    /// holds it all with a margin.
    pub fn finish(&self, title: &str) -> String {
        let (low, high) = self
            .bounds
            .unwrap_or((Point::new(0.0, 0.0), Point::new(0.0, 0.0)));
        let (x, y) = (low.x - MARGIN, low.y - MARGIN);
        let (w, h) = (high.x - low.x + 2.0 * MARGIN, high.y - low.y + 2.0 * MARGIN);
        let (x, y, w, h) = (num(x), num(y), num(w), num(h));
        let mut svg = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
             viewBox=\"{x} {y} {w} {h}\" font-family=\"Helvetica, Arial, sans-serif\">"
        );
        let _ = writeln!(svg, "<title>{}</title>", escape(title));
        let _ = writeln!(
            svg,
            "<defs><marker id=\"arrowhead\" markerWidth=\"10\" markerHeight=\"7\" refX=\"10\" \
             refY=\"3.5\" orient=\"auto\"><polygon points=\"0 0, 10 3.5, 0 7\" \
             fill=\"{EDGE_COLOUR}\"/></marker>{}</defs>",
            self.clips.concat()
        );
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>"
        );
        svg.push_str(&self.shapes);
        svg.push_str(&self.labels);
        svg.push_str("</svg>\n");
        svg
    }
}

impl Default for SvgCanvas {
    fn default() -> Self {
        Self::new()
    }
}

impl RenderBackend for SvgCanvas {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        _properties: Option<String>,
        clip: Option<ClipHandle>,
    ) {
        self.include(xy, size);
        let clip = clip
            .map(|c| format!(" clip-path=\"url(#clip{c})\""))
            .unwrap_or_default();
        let _ = writeln!(
            self.shapes,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"{}\" {}{clip}/>",
            num(xy.x),
            num(xy.y),
            num(size.x),
            num(size.y),
            look.rounded,
            paint(look)
        );
    }

    fn draw_line(
        &mut self,
        start: Point,
        stop: Point,
        look: &StyleAttr,
        _properties: Option<String>,
    ) {
        self.include(start, Point::new(0.0, 0.0));
        self.include(stop, Point::new(0.0, 0.0));
        let _ = writeln!(
            self.shapes,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"{}\"/>",
            num(start.x),
            num(start.y),
            num(stop.x),
            num(stop.y),
            colour(&look.line_color.to_web_color()),
            look.line_width
        );
    }

    fn draw_circle(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        _properties: Option<String>,
    ) {
        self.include(Point::new(xy.x - size.x / 2.0, xy.y - size.y / 2.0), size);
        let _ = writeln!(
            self.shapes,
            "<ellipse cx=\"{}\" cy=\"{}\" rx=\"{}\" ry=\"{}\" {}/>",
            num(xy.x),
            num(xy.y),
            num(size.x / 2.0),
            num(size.y / 2.0),
            paint(look)
        );
    }

    fn draw_text(&mut self, xy: Point, text: &str, look: &StyleAttr) {
        let size = text_size(text, look.font_size);
        self.include(Point::new(xy.x - size.x / 2.0, xy.y - size.y / 2.0), size);
        let line_height = look.font_size as f64 * LINE_HEIGHT;
        let lines = text.lines().count();
        let first = xy.y - (lines.saturating_sub(1)) as f64 * line_height / 2.0;
        let halo = look
            .fill_color
            .map(|c| colour(&c.to_web_color()))
            .unwrap_or_else(|| "#ffffff".to_string());
        let _ = write!(
            self.labels,
            "<text font-size=\"{}\" text-anchor=\"middle\" dominant-baseline=\"central\" \
             fill=\"#000000\" stroke=\"{halo}\" stroke-width=\"4\" stroke-linejoin=\"round\" \
             paint-order=\"stroke\">",
            look.font_size
        );
        for (i, line) in text.lines().enumerate() {
            // The first of several lines names what the rest describe.
            let weight = if i == 0 && lines > 1 {
                " font-weight=\"bold\""
            } else {
                ""
            };
            let _ = write!(
                self.labels,
                "<tspan x=\"{}\" y=\"{}\"{weight}>{}</tspan>",
                num(xy.x),
                num(first + i as f64 * line_height),
                escape(line)
            );
        }
        self.labels.push_str("</text>\n");
    }

    /// `path` is the exit point and control point of the source, then the entry points and
    /// control points of each point the edge passes through; `text` is empty because layout-rs
    /// draws edge labels as text of their own.
    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        dashed: bool,
        head: (bool, bool),
        look: &StyleAttr,
        _properties: Option<String>,
        _text: &str,
    ) {
        for (point, control) in path {
            self.include(*point, Point::new(0.0, 0.0));
            self.include(*control, Point::new(0.0, 0.0));
        }
        let mut d = String::new();
        for (i, (point, control)) in path.iter().enumerate() {
            let (px, py, cx, cy) = (num(point.x), num(point.y), num(control.x), num(control.y));
            let _ = match i {
                0 => write!(d, "M {px} {py} C {cx} {cy}, "),
                1 => write!(d, "{px} {py}, {cx} {cy}"),
                _ => write!(d, " S {px} {py}, {cx} {cy}"),
            };
        }
        let dash = if dashed {
            " stroke-dasharray=\"5,5\""
        } else {
            ""
        };
        let start = if head.0 {
            " marker-start=\"url(#arrowhead)\""
        } else {
            ""
        };
        let end = if head.1 {
            " marker-end=\"url(#arrowhead)\""
        } else {
            ""
        };
        let _ = writeln!(
            self.shapes,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{EDGE_COLOUR}\" stroke-width=\"{}\"{dash}{start}{end}/>",
            look.line_width
        );
    }

    fn create_clip(&mut self, xy: Point, size: Point, rounded_px: usize) -> ClipHandle {
        let handle = self.clips.len();
        self.clips.push(format!(
            "<clipPath id=\"clip{handle}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" \
             rx=\"{rounded_px}\"/></clipPath>",
            num(xy.x),
            num(xy.y),
            num(size.x),
            num(size.y)
        ));
        handle
    }
}

/// Fill and stroke attributes of a shape in `look`.
fn paint(look: &StyleAttr) -> String {
    let fill = look
        .fill_color
        .map(|c| colour(&c.to_web_color()))
        .unwrap_or_else(|| "none".to_string());
    format!(
        "fill=\"{fill}\" stroke=\"{}\" stroke-width=\"{}\"",
        colour(&look.line_color.to_web_color()),
        look.line_width
    )
}

/// `#rrggbb` of layout-rs's `#rrggbbaa` (every colour here is opaque; some viewers and
/// converters do not read the eight-digit form).
fn colour(web: &str) -> String {
    web.get(..7).unwrap_or(web).to_string()
}

/// A coordinate with one decimal at most.
fn num(value: f64) -> String {
    let rounded = format!("{value:.1}");
    rounded
        .strip_suffix(".0")
        .map(String::from)
        .unwrap_or(rounded)
}

/// `text` safe inside an XML element or attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use layout::core::color::Color;

    fn look(fill: &str) -> StyleAttr {
        StyleAttr::new(Color::fast("black"), 1, Color::from_name(fill), 0, 14)
    }

    #[test]
    fn the_view_box_is_what_was_drawn_plus_the_margin() {
        let mut canvas = SvgCanvas::new();
        canvas.draw_rect(
            Point::new(-20.0, 10.0),
            Point::new(100.0, 50.0),
            &look("#cfe2ff"),
            None,
            None,
        );
        canvas.draw_text(Point::new(30.0, 35.0), "label\nline 2", &look("#cfe2ff"));
        let svg = canvas.finish("wf");
        assert!(svg.contains("viewBox=\"-32 -2 124 74\""), "{svg}");
        assert!(svg.contains("width=\"124\" height=\"74\""), "{svg}");
    }

    #[test]
    fn text_is_escaped_centred_by_line_and_drawn_over_shapes() {
        let mut canvas = SvgCanvas::new();
        canvas.draw_text(Point::new(50.0, 100.0), "a<b\nc & d", &look("#d1e7dd"));
        canvas.draw_rect(
            Point::new(0.0, 0.0),
            Point::new(10.0, 10.0),
            &look("#d1e7dd"),
            None,
            None,
        );
        let svg = canvas.finish("<wf>");
        assert!(svg.contains("<title>&lt;wf&gt;</title>"));
        // Two lines of 14 px at 1.25: 17.5 apart, centred on y = 100.
        assert!(
            svg.contains("<tspan x=\"50\" y=\"91.2\" font-weight=\"bold\">a&lt;b</tspan>"),
            "{svg}"
        );
        assert!(
            svg.contains("<tspan x=\"50\" y=\"108.8\">c &amp; d</tspan>"),
            "{svg}"
        );
        assert!(
            svg.contains("stroke=\"#d1e7dd\""),
            "the halo is the background: {svg}"
        );
        assert!(svg.find("<rect x=\"0\"").unwrap() < svg.find("<text").unwrap());
    }

    #[test]
    fn numbers_keep_one_decimal_at_most() {
        assert_eq!(num(272.53324890120496), "272.5");
        assert_eq!(num(30.0), "30");
    }
}
