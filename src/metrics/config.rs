//! TorchServe's `metrics_config` YAML: which frontend series (`ts_metrics`) are served and which
//! handler metrics (`model_metrics`) exist before any handler records them.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::family::{Counter, Histogram, Series, Value};

/// A metric's kind, as TorchServe's `MetricTypes` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// The name in the exposition's `# TYPE` line and in TorchServe's help text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }

    /// The names of the samples a family of this kind called `name` writes.
    pub fn sample_names(self, name: &str) -> impl Iterator<Item = String> + '_ {
        let suffixes = match self {
            Self::Counter => Counter::SUFFIXES,
            Self::Gauge => Value::SUFFIXES,
            Self::Histogram => Histogram::SUFFIXES,
        };
        suffixes.iter().map(move |suffix| format!("{name}{suffix}"))
    }
}

/// One metric declared in `model_metrics`: what the worker's metric cache starts with and
/// what `/metrics` lists before the first update. `dimensions` excludes `Hostname`, which the
/// server adds to every handler metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Declaration {
    #[serde(rename = "type")]
    pub kind: MetricKind,
    pub name: String,
    pub unit: String,
    pub dimensions: Vec<String>,
}

/// The settings a `metrics_config` file gives.
#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    /// The frontend series served; `None` serves all of them.
    pub frontend: Option<HashSet<String>>,
    /// Handler metrics registered at start.
    pub model_metrics: Vec<Declaration>,
}

#[derive(Deserialize)]
struct File {
    ts_metrics: Option<Section>,
    model_metrics: Option<Section>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Section {
    counter: Option<Vec<Spec>>,
    gauge: Option<Vec<Spec>>,
    histogram: Option<Vec<Spec>>,
}

#[derive(Deserialize)]
struct Spec {
    name: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    dimensions: Vec<String>,
}

impl Section {
    fn declarations(self) -> Result<Vec<Declaration>> {
        let kinds = [
            (MetricKind::Counter, self.counter),
            (MetricKind::Gauge, self.gauge),
            (MetricKind::Histogram, self.histogram),
        ];
        let mut out = Vec::new();
        for (kind, specs) in kinds {
            for spec in specs.into_iter().flatten() {
                check_name(&spec.name, metric_name_char)
                    .map_err(|e| anyhow!("metric name {:?}: {e}", spec.name))?;
                for dimension in &spec.dimensions {
                    check_name(dimension, label_name_char).map_err(|e| {
                        anyhow!("dimension {dimension:?} of metric {}: {e}", spec.name)
                    })?;
                }
                out.push(Declaration {
                    kind,
                    name: spec.name,
                    unit: spec.unit,
                    dimensions: spec.dimensions,
                });
            }
        }
        Ok(out)
    }
}

impl MetricsConfig {
    /// The handler metrics of TorchServe's default `metrics.yaml`.
    pub fn defaults() -> Self {
        let gauge = |name: &str| Declaration {
            kind: MetricKind::Gauge,
            name: name.into(),
            unit: "ms".into(),
            dimensions: vec!["ModelName".into(), "Level".into()],
        };
        Self {
            frontend: None,
            model_metrics: vec![gauge("HandlerTime"), gauge("PredictionTime")],
        }
    }

    /// Reads a `metrics_config` file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read metrics_config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid metrics_config {}", path.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        let file: File = crate::archive::parse_yaml(text).map_err(|e| anyhow!(e))?;
        let frontend = file
            .ts_metrics
            .map(Section::declarations)
            .transpose()?
            .map(|all| all.into_iter().map(|d| d.name).collect());
        let model_metrics = file
            .model_metrics
            .map(Section::declarations)
            .transpose()?
            .unwrap_or_default();
        let reserved = super::reserved_names();
        for declared in &model_metrics {
            if let Some(clash) = reserved.clash(declared.kind, &declared.name) {
                let (kind, name) = (declared.kind.as_str(), &declared.name);
                bail!("model_metrics {kind} {name:?}: {clash}; rename it");
            }
        }
        Ok(Self {
            frontend,
            model_metrics,
        })
    }
}

fn metric_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn label_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (!first && c.is_ascii_digit())
}

/// Whether `name` is a Prometheus metric or label name, by `allowed(char, is_first)`.
pub fn check_name(name: &str, allowed: fn(char, bool) -> bool) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => Err("must not be empty"),
        Some(c) if !allowed(c, true) => Err("must start with a letter or underscore"),
        _ if !chars.all(|c| allowed(c, false)) => {
            Err("may hold only letters, digits and underscores")
        }
        _ => Ok(()),
    }
}

/// Whether `name` can name a Prometheus metric.
pub fn is_metric_name(name: &str) -> bool {
    check_name(name, metric_name_char).is_ok()
}

/// Whether `name` can name a Prometheus label.
pub fn is_label_name(name: &str) -> bool {
    check_name(name, label_name_char).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUSTOM: &str = r#"
dimensions:
  - &model_name "ModelName"
  - &level "Level"
ts_metrics:
  counter:
    - name: Requests2XX
      unit: Count
      dimensions: [*level, "Hostname"]
  gauge:
    - name: QueueTime
      unit: Milliseconds
      dimensions: [*level, "Hostname"]
model_metrics:
  counter:
    - name: InferenceCount
      unit: count
      dimensions: [*model_name, *level]
  histogram:
    - name: SizeOfImage
      unit: kB
      dimensions: ["Shape", *model_name, *level]
"#;

    #[test]
    fn a_torchserve_file_declares_frontend_and_model_metrics() {
        let config = MetricsConfig::parse(CUSTOM).unwrap();
        let frontend = config.frontend.unwrap();
        assert!(frontend.contains("Requests2XX") && frontend.contains("QueueTime"));
        assert_eq!(frontend.len(), 2);
        assert_eq!(
            config.model_metrics[1],
            Declaration {
                kind: MetricKind::Histogram,
                name: "SizeOfImage".into(),
                unit: "kB".into(),
                dimensions: vec!["Shape".into(), "ModelName".into(), "Level".into()],
            }
        );
    }

    #[test]
    fn bad_names_and_kinds_are_refused() {
        let bad_name = "model_metrics:\n  gauge:\n    - name: 'my metric'\n";
        let error = format!("{:#}", MetricsConfig::parse(bad_name).unwrap_err());
        assert!(error.contains("my metric"), "{error}");
        let bad_label = "model_metrics:\n  gauge:\n    - name: ok\n      dimensions: ['a-b']\n";
        assert!(MetricsConfig::parse(bad_label).is_err());
        let bad_kind = "model_metrics:\n  summary:\n    - name: ok\n";
        assert!(MetricsConfig::parse(bad_kind).is_err());
        let without_frontend = MetricsConfig::parse("model_metrics: {}\n").unwrap();
        assert!(without_frontend.frontend.is_none());
    }

    #[test]
    fn model_metrics_may_not_take_the_servers_names() {
        let declaring = |kind: &str, name: &str| {
            MetricsConfig::parse(&format!("model_metrics:\n  {kind}:\n    - name: {name}\n"))
        };
        for (kind, name, taken) in [
            ("counter", "Requests2XX", "Requests2XX"),
            (
                "gauge",
                "ts_inference_latency_microseconds",
                "ts_inference_latency_microseconds",
            ),
            (
                "counter",
                "torchyard_batch_size_count",
                "torchyard_batch_size_count",
            ),
        ] {
            let error = format!("{:#}", declaring(kind, name).unwrap_err());
            assert!(
                error.contains(&format!("{kind} {name:?}: {taken} is taken")),
                "{error}"
            );
        }
        // TorchServe's default handler metrics are free, and so are frontend series.
        assert!(declaring("gauge", "PredictionTime").is_ok());
        assert!(MetricsConfig::parse("ts_metrics:\n  counter:\n    - name: Requests2XX\n").is_ok());
    }

    #[test]
    fn names_follow_prometheus_rules() {
        assert!(is_metric_name("ts:latency_1"));
        assert!(!is_metric_name("1st"));
        assert!(!is_label_name("a:b"));
        assert!(is_label_name("_Level2"));
    }
}
