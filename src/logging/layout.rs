//! log4j2's `PatternLayout`, the part of it TorchServe's log files use: `%d{ISO8601}`,
//! `%-5p`, `%t`, `%c`, `%m`, `%n` and literal text.

use std::fmt::Write;

use super::record::Record;

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    /// The time, as log4j2's `ISO8601` (`2024-01-01T00:00:00,000`) or `DEFAULT`
    /// (`2024-01-01 00:00:00,000`) date format.
    Date {
        separator: char,
    },
    Level(Pad),
    Thread(Pad),
    Logger(Pad),
    Message,
    Newline,
}

/// A conversion's minimum width (`%-5p`: 5, padded on the right).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Pad {
    width: usize,
    left_align: bool,
}

/// A parsed pattern that formats [`Record`]s into lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout(Vec<Piece>);

impl Layout {
    /// Parses a log4j2 pattern; what it cannot render is named in `unsupported` and left out.
    pub fn parse(pattern: &str, unsupported: &mut Vec<String>) -> Self {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                text.push('%');
                continue;
            }
            let mut pad = Pad::default();
            if chars.peek() == Some(&'-') {
                chars.next();
                pad.left_align = true;
            }
            let mut digits = String::new();
            while let Some(d) = chars.next_if(|c| c.is_ascii_digit() || *c == '.') {
                digits.push(d);
            }
            pad.width = digits
                .split('.')
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or(0);
            let mut name = String::new();
            while let Some(l) = chars.next_if(char::is_ascii_alphabetic) {
                name.push(l);
            }
            let mut option = None;
            if chars.peek() == Some(&'{') {
                chars.next();
                option = Some(chars.by_ref().take_while(|c| *c != '}').collect::<String>());
            }
            let piece = match name.as_str() {
                "d" | "date" => match option.as_deref() {
                    None | Some("ISO8601") => Piece::Date { separator: 'T' },
                    Some("DEFAULT") => Piece::Date { separator: ' ' },
                    Some(other) => {
                        unsupported.push(format!("date format %d{{{other}}} (ISO8601 is used)"));
                        Piece::Date { separator: 'T' }
                    }
                },
                "p" | "level" => Piece::Level(pad),
                "t" | "thread" | "tn" | "threadName" => Piece::Thread(pad),
                "c" | "logger" => Piece::Logger(pad),
                "m" | "msg" | "message" => Piece::Message,
                "n" => Piece::Newline,
                other => {
                    unsupported.push(format!("pattern conversion %{other}"));
                    continue;
                }
            };
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(piece);
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Self(pieces)
    }

    /// The record as one line (or whatever the pattern makes of it).
    pub fn format(&self, record: &Record) -> String {
        let mut out = String::with_capacity(64 + record.message.len());
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Date { separator } => {
                    let time = record.time;
                    let _ = write!(
                        out,
                        "{}{separator}{}",
                        time.format("%Y-%m-%d"),
                        time.format("%H:%M:%S,%3f")
                    );
                }
                Piece::Level(pad) => padded(&mut out, record.level_name(), *pad),
                Piece::Thread(pad) => padded(&mut out, &record.thread, *pad),
                Piece::Logger(pad) => padded(&mut out, &record.logger, *pad),
                Piece::Message => out.push_str(&record.message),
                Piece::Newline => out.push('\n'),
            }
        }
        out
    }
}

fn padded(out: &mut String, value: &str, pad: Pad) {
    let _ = match pad.left_align {
        true => write!(out, "{value:<width$}", width = pad.width),
        false => write!(out, "{value:>width$}", width = pad.width),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn record() -> Record {
        Record {
            time: chrono::Local.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap(),
            level: tracing::Level::WARN,
            logger: "MODEL_LOG".into(),
            thread: "W-9000-m_1.0-stderr".into(),
            message: "hello".into(),
        }
    }

    #[test]
    fn renders_torchserves_patterns() {
        let mut unsupported = Vec::new();
        let full = Layout::parse("%d{ISO8601} [%-5p] %t %c - %m%n", &mut unsupported);
        assert_eq!(
            full.format(&record()),
            "2024-01-02T03:04:05,000 [WARN ] W-9000-m_1.0-stderr MODEL_LOG - hello\n"
        );
        let short = Layout::parse("%d - %m%n", &mut unsupported);
        assert_eq!(short.format(&record()), "2024-01-02T03:04:05,000 - hello\n");
        let other = Layout::parse("%d{DEFAULT} %5level 100%% %msg", &mut unsupported);
        assert_eq!(
            other.format(&record()),
            "2024-01-02 03:04:05,000  WARN 100% hello"
        );
        assert!(unsupported.is_empty(), "{unsupported:?}");
    }

    #[test]
    fn names_what_it_cannot_render() {
        let mut unsupported = Vec::new();
        let layout = Layout::parse("%d{HH:mm} %X{id} %m", &mut unsupported);
        assert_eq!(
            unsupported,
            [
                "date format %d{HH:mm} (ISO8601 is used)",
                "pattern conversion %X"
            ]
        );
        assert_eq!(layout.format(&record()), "2024-01-02T03:04:05,000  hello");
    }
}
