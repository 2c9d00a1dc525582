//! Where a request's time went: the `Server-Timing` header torchyard puts on inference
//! responses, and the W3C `traceparent` check that decides whether a client's trace context is
//! handed on to handlers.

use std::time::Duration;

/// The response header (lower-case, as the worker protocol carries header names).
pub const SERVER_TIMING: &str = "server-timing";

/// The W3C trace-context request header.
pub const TRACEPARENT: &str = "traceparent";

/// One `Server-Timing` entry, `name;dur=MILLISECONDS`; characters that are not token
/// characters in `name` become `_`.
pub fn entry(name: &str, took: Duration) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{name};dur={:.3}", took.as_secs_f64() * 1e3)
}

/// A workflow node's `Server-Timing` entry: `node.NAME;dur=MILLISECONDS;desc="attempts=N"`,
/// N counting the first try.
pub fn node_entry(node: &str, took: Duration, tries: usize) -> String {
    format!(
        "{};desc=\"attempts={tries}\"",
        entry(&format!("node.{node}"), took)
    )
}

/// Whether `value` is a well-formed W3C `traceparent`: `version-traceid-parentid-flags` in
/// lower-case hex, version not `ff`, ids not all zero; version `00` has nothing after the
/// flags, later versions may append `-...`.
pub fn valid_traceparent(value: &str) -> bool {
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    let (head, rest) = (value.get(..55), value.get(55..).unwrap_or(""));
    let Some(head) = head else { return false };
    let fields: Vec<&str> = head.split('-').collect();
    let [version, trace, parent, flags] = fields[..] else {
        return false;
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2)
        && (rest.is_empty() || (version != "00" && rest.starts_with('-')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn accepts_well_formed_traceparents() {
        assert!(valid_traceparent(GOOD));
        assert!(valid_traceparent(&format!("01{}-extra", &GOOD[2..])));
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "",
            "garbage",
            &GOOD[..54],
            &format!("{GOOD}-x"),
            &GOOD.to_uppercase(),
            &format!("ff{}", &GOOD[2..]),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn entries_are_milliseconds_with_token_names() {
        assert_eq!(
            entry("queue", Duration::from_micros(1500)),
            "queue;dur=1.500"
        );
        assert_eq!(entry("node.a b", Duration::ZERO), "node.a_b;dur=0.000");
    }
}
