//! `metrics_mode=log`: TorchServe's metric lines, written as each metric is updated, the
//! server's under the `TS_METRICS` target (`ts_metrics.log`) and the handlers' under
//! `MODEL_METRICS` (`model_metrics.log`):
//! `Requests2XX.Count:1.0|#Level:Host|#hostname:my-host,timestamp:1700000000`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes the server's metric lines.
#[derive(Clone)]
pub struct MetricLog {
    hostname: Arc<str>,
    /// The frontend metrics a `metrics_config` keeps; `None` keeps them all.
    kept: Option<Arc<HashSet<String>>>,
}

impl MetricLog {
    pub fn new(hostname: Arc<str>, kept: Option<HashSet<String>>) -> Self {
        Self {
            hostname,
            kept: kept.map(Arc::new),
        }
    }

    /// Logs one update of metric `name` (in `unit`) with its dimensions besides the host.
    pub fn update(&self, name: &str, unit: &str, dimensions: &[(&str, &str)], value: f64) {
        if self.kept.as_ref().is_some_and(|kept| !kept.contains(name)) {
            return;
        }
        let line = line(name, unit, dimensions, &self.hostname, value);
        tracing::info!(target: "TS_METRICS", "{line}");
    }
}

/// TorchServe's `LogMetric` line: `name.unit:value|#dim:value,...|#hostname:host,timestamp:s`,
/// the value written as Java writes a double (`1.0`).
pub fn line<N: AsRef<str>, V: AsRef<str>>(
    name: &str,
    unit: &str,
    dimensions: &[(N, V)],
    hostname: &str,
    value: f64,
) -> String {
    let dimensions: Vec<String> = dimensions
        .iter()
        .map(|(name, value)| format!("{}:{}", name.as_ref(), value.as_ref()))
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{name}.{unit}:{value:?}|#{}|#hostname:{hostname},timestamp:{now}",
        dimensions.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_torchserves() {
        let line = line("Requests2XX", "Count", &[("Level", "Host")], "h", 1.0);
        let (head, time) = line.split_once(",timestamp:").unwrap();
        assert_eq!(head, "Requests2XX.Count:1.0|#Level:Host|#hostname:h");
        assert!(time.parse::<u64>().unwrap() > 1_600_000_000);
        let none: [(&str, &str); 0] = [];
        assert!(super::line("X", "ms", &none, "h", 2.5).starts_with("X.ms:2.5|#|#hostname:h,"));
    }
}
