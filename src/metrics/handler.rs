//! Metrics handlers record through `context.metrics` (TorchServe's custom metrics API). The
//! worker sends each batch's updates with its reply; they land in families named as the handler
//! named them, labelled with its dimensions plus `Hostname`, as TorchServe exports them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use super::config::{is_label_name, is_metric_name, Declaration, MetricKind};
use super::family::{Counter, Family, Histogram, Render, Value};
use super::log::line;
use super::reserved::ReservedNames;

/// The label TorchServe adds to every handler metric.
const HOSTNAME: &str = "Hostname";

/// Bucket bounds of handler histograms: the Prometheus Java client's defaults, as TorchServe's.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// One series' updates since the worker's last reply: `[kind, name, unit, dimension names,
/// dimension values, values]`, the values being a counter's sum, a gauge's last value or every
/// histogram observation, applied in order.
#[derive(Debug, Clone, Deserialize)]
pub struct HandlerSample {
    pub kind: MetricKind,
    pub name: String,
    pub unit: String,
    pub dimension_names: Vec<String>,
    pub dimension_values: Vec<String>,
    pub values: Vec<f64>,
}

/// A handler metric's family, of the kind it was declared or first recorded with.
#[derive(Clone)]
enum HandlerFamily {
    Counter(Family<Counter>),
    Gauge(Family<Value>),
    Histogram(Family<Histogram>),
}

impl HandlerFamily {
    fn new(kind: MetricKind, name: &str, unit: &str, dimensions: &[String]) -> Self {
        let help = super::ts_help(kind.as_str(), unit);
        let mut labels: Vec<&str> = dimensions.iter().map(String::as_str).collect();
        labels.push(HOSTNAME);
        match kind {
            MetricKind::Counter => Self::Counter(Family::new(name, help, &labels)),
            MetricKind::Gauge => Self::Gauge(Family::new(name, help, &labels)),
            MetricKind::Histogram => Self::Histogram(Family::with(name, help, &labels, || {
                Histogram::new(Arc::from(BUCKETS.as_slice()))
            })),
        }
    }

    /// Applies one update to the series of `values` (dimension values, then the host).
    fn update(&self, values: &[&str], value: f64) {
        match self {
            Self::Counter(family) if value >= 0.0 => family.get_or_create(values).add(value),
            Self::Counter(_) => {}
            Self::Gauge(family) => family.get_or_create(values).set(value),
            Self::Histogram(family) => family.get_or_create(values).observe(value),
        }
    }

    /// The gauge series of `values`, for a gauge family.
    fn gauge(&self, values: &[&str]) -> Option<Arc<Value>> {
        match self {
            Self::Gauge(family) => Some(family.get_or_create(values)),
            _ => None,
        }
    }

    fn render(&self) -> &dyn Render {
        match self {
            Self::Counter(family) => family,
            Self::Gauge(family) => family,
            Self::Histogram(family) => family,
        }
    }
}

/// A registered handler metric, or a name refused once (so it is warned about once).
#[derive(Clone)]
enum Entry {
    Metric {
        family: HandlerFamily,
        dimensions: usize,
    },
    Refused,
}

/// Every handler metric of the server.
pub struct HandlerMetrics {
    hostname: Arc<str>,
    /// Registers metrics no `model_metrics` entry declared on their first update.
    auto_detect: bool,
    /// Writes every update to the log as TorchServe's `model_metrics.log` lines.
    log: bool,
    declared: Arc<[Declaration]>,
    /// The server's own names, which handler metrics may not take.
    reserved: ReservedNames,
    entries: RwLock<BTreeMap<String, Entry>>,
}

impl HandlerMetrics {
    /// The metrics of `declared`, with those handlers add when `auto_detect` is set; none of
    /// them may take a `reserved` name (a `metrics_config` declaring one is refused on load).
    pub fn new(
        hostname: Arc<str>,
        declared: Vec<Declaration>,
        auto_detect: bool,
        log: bool,
        reserved: ReservedNames,
    ) -> Self {
        let entries = declared
            .iter()
            .map(|d| {
                let family = HandlerFamily::new(d.kind, &d.name, &d.unit, &d.dimensions);
                let dimensions = d.dimensions.len();
                (d.name.clone(), Entry::Metric { family, dimensions })
            })
            .collect();
        Self {
            hostname,
            auto_detect,
            log,
            declared: declared.into(),
            reserved,
            entries: RwLock::new(entries),
        }
    }

    /// The declared metrics, which each worker's metric cache starts with.
    pub fn declared(&self) -> &[Declaration] {
        &self.declared
    }

    /// Applies a batch's updates. An update whose metric is unknown (without auto-detection),
    /// badly named, named as one of the server's own metrics, or given the wrong number of
    /// dimension values is dropped with a warning: a refused metric is warned about once, a
    /// misfit update each time.
    pub fn record(&self, model: &str, samples: &[HandlerSample]) {
        for sample in samples {
            if self.log {
                self.log_sample(sample);
            }
            let entry = self
                .entries
                .read()
                .expect("handler metrics lock")
                .get(&sample.name)
                .cloned();
            let entry = match entry {
                Some(entry) => entry,
                None => self.register(model, sample),
            };
            let Entry::Metric { family, dimensions } = entry else {
                continue;
            };
            if sample.dimension_values.len() != dimensions {
                tracing::warn!(
                    "model {model}: metric {} takes {dimensions} dimension values, got {:?}",
                    sample.name,
                    sample.dimension_values
                );
                continue;
            }
            let mut values: Vec<&str> =
                sample.dimension_values.iter().map(String::as_str).collect();
            values.push(&self.hostname);
            for value in &sample.values {
                family.update(&values, *value);
            }
        }
    }

    /// Registers the metric of a first update, or refuses it (once, with a warning).
    fn register(&self, model: &str, sample: &HandlerSample) -> Entry {
        let refusal = self
            .reserved
            .clash(sample.kind, &sample.name)
            .or_else(|| self.unfit(sample).map(String::from));
        let mut entries = self.entries.write().expect("handler metrics lock");
        entries
            .entry(sample.name.clone())
            .or_insert_with(|| match refusal {
                Some(why) => {
                    tracing::warn!("model {model}: metric {:?} is dropped: {why}", sample.name);
                    Entry::Refused
                }
                None => Entry::Metric {
                    family: HandlerFamily::new(
                        sample.kind,
                        &sample.name,
                        &sample.unit,
                        &sample.dimension_names,
                    ),
                    dimensions: sample.dimension_names.len(),
                },
            })
            .clone()
    }

    /// Why the metric of a first update may not be registered, if its name is not taken.
    fn unfit(&self, sample: &HandlerSample) -> Option<&'static str> {
        if !self.auto_detect {
            Some("it is not declared in metrics_config and model_metrics_auto_detect is false")
        } else if !is_metric_name(&sample.name) {
            Some("it is not a valid Prometheus metric name")
        } else if sample
            .dimension_names
            .iter()
            .any(|d| !is_label_name(d) || d == HOSTNAME)
        {
            Some("a dimension name is not a valid Prometheus label name, or is Hostname")
        } else {
            None
        }
    }

    /// The gauge series `name{ModelName=model, Level="Model", Hostname}` of a metric shaped as
    /// TorchServe's `PredictionTime`: declared as a gauge with dimensions `[ModelName, Level]`,
    /// or, with auto-detection, declared nowhere (then registered so, as TorchServe's frontend
    /// registers the backend's undeclared metrics).
    pub fn model_gauge(&self, name: &str, model: &str) -> Option<Arc<Value>> {
        let dimensions = ["ModelName".to_string(), "Level".to_string()];
        let fits = match self.declared.iter().find(|d| d.name == name) {
            Some(d) => d.kind == MetricKind::Gauge && d.dimensions == dimensions,
            None => self.auto_detect && self.reserved.clash(MetricKind::Gauge, name).is_none(),
        };
        if !fits {
            return None;
        }
        let mut entries = self.entries.write().expect("handler metrics lock");
        let entry = entries
            .entry(name.to_string())
            .or_insert_with(|| Entry::Metric {
                family: HandlerFamily::new(MetricKind::Gauge, name, "ms", &dimensions),
                dimensions: dimensions.len(),
            });
        match entry {
            Entry::Metric {
                family,
                dimensions: 2,
            } => family.gauge(&[model, "Model", &self.hostname]),
            _ => None,
        }
    }

    /// Writes one update as TorchServe's `model_metrics.log` does.
    fn log_sample(&self, sample: &HandlerSample) {
        let dimensions: Vec<(&String, &String)> = sample
            .dimension_names
            .iter()
            .zip(&sample.dimension_values)
            .collect();
        for value in &sample.values {
            let line = line(
                &sample.name,
                &sample.unit,
                &dimensions,
                &self.hostname,
                *value,
            );
            tracing::info!(target: "MODEL_METRICS", "{line}");
        }
    }

    /// Renders the families `wanted` accepts, by name.
    pub fn render(&self, out: &mut String, wanted: impl Fn(&str) -> bool) {
        for (name, entry) in self.entries.read().expect("handler metrics lock").iter() {
            if let Entry::Metric { family, .. } = entry {
                if wanted(name) {
                    family.render().render(out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: MetricKind, name: &str, dims: &[(&str, &str)], value: f64) -> HandlerSample {
        HandlerSample {
            kind,
            name: name.into(),
            unit: "ms".into(),
            dimension_names: dims.iter().map(|(n, _)| n.to_string()).collect(),
            dimension_values: dims.iter().map(|(_, v)| v.to_string()).collect(),
            values: vec![value],
        }
    }

    fn rendered(metrics: &HandlerMetrics) -> String {
        let mut out = String::new();
        metrics.render(&mut out, |_| true);
        out
    }

    const MODEL: [(&str, &str); 2] = [("ModelName", "m"), ("Level", "Model")];

    #[test]
    fn prediction_time_is_registered_undeclared_only_with_auto_detection() {
        for auto_detect in [true, false] {
            let metrics = HandlerMetrics::new(
                "h".into(),
                vec![],
                auto_detect,
                false,
                ReservedNames::default(),
            );
            let gauge = metrics.model_gauge("PredictionTime", "m");
            assert_eq!(gauge.is_some(), auto_detect);
            if let Some(gauge) = gauge {
                gauge.set(12.5);
                let text = rendered(&metrics);
                assert!(text.contains(
                    "PredictionTime{ModelName=\"m\",Level=\"Model\",Hostname=\"h\",} 12.5\n"
                ));
            }
        }
    }

    #[test]
    fn updates_reach_their_kind_of_series_with_the_host_label() {
        let metrics =
            HandlerMetrics::new("h".into(), vec![], true, false, ReservedNames::default());
        let calls = sample(MetricKind::Counter, "CallCount", &MODEL, 2.0);
        metrics.record("m", &[calls.clone(), calls]);
        metrics.record("m", &[sample(MetricKind::Gauge, "Temp", &MODEL, 3.5)]);
        metrics.record("m", &[sample(MetricKind::Histogram, "Size", &MODEL, 0.3)]);
        let text = rendered(&metrics);
        assert!(text.contains("# TYPE CallCount counter\n"), "{text}");
        assert!(text.contains("CallCount{ModelName=\"m\",Level=\"Model\",Hostname=\"h\",} 4.0\n"));
        assert!(text.contains("Temp{ModelName=\"m\",Level=\"Model\",Hostname=\"h\",} 3.5\n"));
        assert!(text.contains(
            "Size_bucket{ModelName=\"m\",Level=\"Model\",Hostname=\"h\",le=\"0.5\",} 1.0\n"
        ));
        assert!(text.contains("# HELP Temp Torchserve prometheus gauge metric with unit: ms\n"));
    }

    #[test]
    fn declared_metrics_keep_their_kind_and_undeclared_ones_need_auto_detection() {
        let declared = vec![Declaration {
            kind: MetricKind::Gauge,
            name: "Declared".into(),
            unit: "ms".into(),
            dimensions: vec!["ModelName".into(), "Level".into()],
        }];
        let metrics =
            HandlerMetrics::new("h".into(), declared, false, false, ReservedNames::default());
        assert!(rendered(&metrics).contains("# TYPE Declared gauge\n"));
        metrics.record("m", &[sample(MetricKind::Counter, "Declared", &MODEL, 1.0)]);
        metrics.record("m", &[sample(MetricKind::Counter, "Declared", &MODEL, 5.0)]);
        metrics.record("m", &[sample(MetricKind::Counter, "Other", &MODEL, 1.0)]);
        let text = rendered(&metrics);
        assert!(text.contains("Declared{ModelName=\"m\",Level=\"Model\",Hostname=\"h\",} 5.0\n"));
        assert!(!text.contains("Other"), "{text}");
        assert!(metrics.model_gauge("Declared", "m").is_some());
    }

    #[test]
    fn bad_updates_are_dropped() {
        let metrics =
            HandlerMetrics::new("h".into(), vec![], true, false, ReservedNames::default());
        metrics.record("m", &[sample(MetricKind::Counter, "bad name", &MODEL, 1.0)]);
        metrics.record(
            "m",
            &[sample(MetricKind::Counter, "C", &[("Hostname", "x")], 1.0)],
        );
        metrics.record("m", &[sample(MetricKind::Counter, "D", &MODEL, -1.0)]);
        metrics.record("m", &[sample(MetricKind::Counter, "D", &MODEL[..1], 1.0)]);
        let text = rendered(&metrics);
        assert!(!text.contains("bad name") && !text.contains("C{"), "{text}");
        assert!(
            text.contains("# TYPE D counter\n") && !text.contains("D{"),
            "{text}"
        );
    }
}
