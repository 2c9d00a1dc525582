//! The Prometheus text format (0.0.4) as TorchServe writes it: a trailing comma after the last
//! label and numbers as Java prints doubles (`3.0`, `290371.129`, `1.2345E7`).

use std::fmt::Write;

/// Renders label pairs as `name="value",` for each, values escaped.
pub fn labels(names: &[impl AsRef<str>], values: &[String]) -> String {
    let mut out = String::new();
    for (name, value) in names.iter().zip(values) {
        out.push_str(name.as_ref());
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push_str("\",");
    }
    out
}

/// Appends one sample line: `name{labels} value`, without braces when there are no labels.
pub fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, value: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() {
        out.push('{');
        out.push_str(labels);
        out.push('}');
    }
    out.push(' ');
    java_double(out, value);
    out.push('\n');
}

/// Writes `value` as Java's `Double.toString` does (what TorchServe's exposition shows): plain
/// with at least one decimal from 10⁻³ up to 10⁷, else scientific with `E`.
pub fn java_double(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value == 0.0 || (1e-3..1e7).contains(&value.abs()) {
        let start = out.len();
        let _ = write!(out, "{value}");
        if !out[start..].contains('.') {
            out.push_str(".0");
        }
    } else {
        let scientific = format!("{value:e}");
        let (mantissa, exponent) = scientific.split_once('e').expect("{:e} has an exponent");
        out.push_str(mantissa);
        if !mantissa.contains('.') {
            out.push_str(".0");
        }
        out.push('E');
        out.push_str(exponent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn java(value: f64) -> String {
        let mut out = String::new();
        java_double(&mut out, value);
        out
    }

    #[test]
    fn doubles_print_as_java_does() {
        assert_eq!(java(3.0), "3.0");
        assert_eq!(java(0.0), "0.0");
        assert_eq!(java(290371.129), "290371.129");
        assert_eq!(java(0.001), "0.001");
        assert_eq!(java(9999999.5), "9999999.5");
        assert_eq!(java(1e7), "1.0E7");
        assert_eq!(java(12345678.0), "1.2345678E7");
        assert_eq!(java(0.0005), "5.0E-4");
        assert_eq!(java(-2.5), "-2.5");
        assert_eq!(java(f64::INFINITY), "+Inf");
    }

    #[test]
    fn samples_end_labels_with_a_comma_and_escape_values() {
        let mut out = String::new();
        let labels = labels(&["model_name", "hostname"], &["a\"b\\".into(), "h".into()]);
        sample(&mut out, "ts_x", "", &labels, 1.0);
        assert_eq!(out, "ts_x{model_name=\"a\\\"b\\\\\",hostname=\"h\",} 1.0\n");
        out.clear();
        sample(&mut out, "up", "", "", 2.0);
        assert_eq!(out, "up 2.0\n");
    }
}
