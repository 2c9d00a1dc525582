//! The names the server's own metric families take, which no handler metric may take too: two
//! families of one name make Prometheus scrapers reject the whole exposition.

use std::collections::HashSet;

use super::config::MetricKind;
use super::family::Render;

/// The names of the server's own families and of their samples (a histogram's `_bucket`,
/// `_count` and `_sum`).
#[derive(Debug, Default)]
pub struct ReservedNames(HashSet<String>);

impl ReservedNames {
    /// The names `families` take.
    pub fn of(families: &[Box<dyn Render>]) -> Self {
        let names = families
            .iter()
            .flat_map(|family| family.sample_names().into_iter())
            .chain(families.iter().map(|family| family.name().to_string()));
        Self(names.collect())
    }

    /// Why a family of `kind` called `name` may not be exported, when it would take a name
    /// (its own, or one of its samples') that the server's families take.
    pub fn clash(&self, kind: MetricKind, name: &str) -> Option<String> {
        let taken = std::iter::once(name.to_string())
            .chain(kind.sample_names(name))
            .find(|taken| self.0.contains(taken))?;
        Some(format!(
            "{taken} is taken by one of the server's own metrics, and a second family of that \
             name would make scrapers reject /metrics"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::family::{Counter, Family, Histogram};

    fn reserved() -> ReservedNames {
        let latency = Family::with("lat", "Latency", &[], || Histogram::new([1.0].into()));
        let families: Vec<Box<dyn Render>> = vec![
            Box::new(Family::<Counter>::new("Requests2XX", "Answers", &[])),
            Box::new(Family::<Counter>::new("size_count", "Sizes", &[])),
            Box::new(latency),
        ];
        ReservedNames::of(&families)
    }

    #[test]
    fn family_and_sample_names_are_taken() {
        let reserved = reserved();
        for (kind, name, taken) in [
            (MetricKind::Gauge, "Requests2XX", "Requests2XX"),
            (MetricKind::Counter, "lat", "lat"),
            (MetricKind::Counter, "lat_count", "lat_count"),
            (MetricKind::Gauge, "lat_bucket", "lat_bucket"),
            (MetricKind::Histogram, "Requests2XX", "Requests2XX"),
            (MetricKind::Histogram, "size", "size_count"),
        ] {
            let why = reserved.clash(kind, name).unwrap_or_default();
            assert!(
                why.starts_with(&format!("{taken} is taken ")),
                "{name}: {why}"
            );
        }
    }

    #[test]
    fn other_names_are_free() {
        let reserved = reserved();
        assert_eq!(
            reserved.clash(MetricKind::Counter, "Requests2XX_total"),
            None
        );
        assert_eq!(reserved.clash(MetricKind::Histogram, "lat2"), None);
        assert_eq!(reserved.clash(MetricKind::Counter, "size"), None);
        assert_eq!(reserved.clash(MetricKind::Gauge, "requests2xx"), None);
    }
}
