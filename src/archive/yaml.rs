//! Parsing YAML from archives with a nesting limit checked before the full parse.
//!
//! libyaml's scanner does work proportional to the flow nesting depth for every token, so a
//! few kilobytes of `[[[[…` cost it minutes. The check below walks libyaml's own events and
//! stops at the first collection deeper than the limit, after reading only about 1 KB past it.

use std::mem::MaybeUninit;

use serde::de::DeserializeOwned;

/// Deepest nesting of sequences and mappings a spec or model-config may have.
pub const MAX_YAML_DEPTH: usize = 64;

/// Parses `text` into `T` unless it is malformed or nests deeper than [`MAX_YAML_DEPTH`].
pub fn parse_yaml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    check_depth(text, MAX_YAML_DEPTH)?;
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
}

/// A libyaml parser reading a borrowed string, deleted on drop.
struct EventParser<'a> {
    parser: Box<MaybeUninit<unsafe_libyaml::yaml_parser_t>>,
    _input: &'a [u8],
}

impl<'a> EventParser<'a> {
    fn new(input: &'a [u8]) -> Result<Self, String> {
        let mut parser = Box::new(MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit());
        // SAFETY: initialize fills the boxed parser, which stays at one address; the input
        // outlives the parser, as the lifetime on `_input` makes sure.
        unsafe {
            if unsafe_libyaml::yaml_parser_initialize(parser.as_mut_ptr()).fail {
                return Err("cannot start the YAML parser".into());
            }
            unsafe_libyaml::yaml_parser_set_encoding(
                parser.as_mut_ptr(),
                unsafe_libyaml::YAML_UTF8_ENCODING,
            );
            unsafe_libyaml::yaml_parser_set_input_string(
                parser.as_mut_ptr(),
                input.as_ptr(),
                input.len() as _,
            );
        }
        Ok(Self {
            parser,
            _input: input,
        })
    }

    /// The type of the next event, or None when the input is malformed.
    fn next(&mut self) -> Option<unsafe_libyaml::yaml_event_type_t> {
        let mut event = MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
        // SAFETY: the parser was initialised in `new`; a parsed event is deleted once read.
        unsafe {
            if unsafe_libyaml::yaml_parser_parse(self.parser.as_mut_ptr(), event.as_mut_ptr()).fail
            {
                return None;
            }
            let kind = (*event.as_ptr()).type_;
            unsafe_libyaml::yaml_event_delete(event.as_mut_ptr());
            Some(kind)
        }
    }
}

impl Drop for EventParser<'_> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, deleted once.
        unsafe { unsafe_libyaml::yaml_parser_delete(self.parser.as_mut_ptr()) }
    }
}

/// Fails when a sequence or mapping of `text` nests deeper than `limit`. Malformed input
/// passes here and is reported by the real parse.
fn check_depth(text: &str, limit: usize) -> Result<(), String> {
    let mut parser = EventParser::new(text.as_bytes())?;
    let mut depth = 0usize;
    while let Some(kind) = parser.next() {
        match kind {
            unsafe_libyaml::YAML_SEQUENCE_START_EVENT
            | unsafe_libyaml::YAML_MAPPING_START_EVENT => {
                depth += 1;
                if depth > limit {
                    return Err(format!("nested deeper than {limit} levels"));
                }
            }
            unsafe_libyaml::YAML_SEQUENCE_END_EVENT | unsafe_libyaml::YAML_MAPPING_END_EVENT => {
                depth -= 1
            }
            unsafe_libyaml::YAML_STREAM_END_EVENT => break,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn parses_ordinary_documents() {
        let value: serde_json::Value = parse_yaml("a: [1, {b: [2]}]\nc:\n  d: x\n").unwrap();
        assert_eq!(value["a"][1]["b"][0], 2);
        assert!(parse_yaml::<serde_json::Value>("a: [\n").is_err());
    }

    #[test]
    fn refuses_deep_documents_quickly() {
        let deep_block: String = (0..70).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let quoted = "[\"]\",".repeat(100_000);
        for text in [
            "[".repeat(100_000),
            "{a: ".repeat(100_000),
            quoted,
            deep_block,
        ] {
            let start = Instant::now();
            let err = parse_yaml::<serde_json::Value>(&text).unwrap_err();
            assert!(err.contains("nested deeper than 64"), "{err}");
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );
        }
    }

    #[test]
    fn accepts_the_limit_itself() {
        let text = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_yaml::<serde_json::Value>(&text).is_ok());
    }
}
