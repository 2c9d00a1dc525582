//! Metrics handlers record through `context.metrics` (TorchServe's custom metrics API). The
//! worker sends each batch's updates with its reply; they land in families named as the handler
//! named them, labelled with its dimensions plus `Hostname`, as TorchServe exports them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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

    /// Applies one update to the series of `values` (dimension values, then the host), made
    /// if new while the family holds fewer than `max` series. `None`: the family is full and
    /// the update is dropped; `Some(true)`: the series was made now.
    fn update(&self, values: &[&str], value: f64, max: usize) -> Option<bool> {
        match self {
            Self::Counter(_) if value < 0.0 => Some(false),
            Self::Counter(family) => family.update_within(values, max, |s| s.add(value)),
            Self::Gauge(family) => family.update_within(values, max, |s| s.set(value)),
            Self::Histogram(family) => family.update_within(values, max, |s| s.observe(value)),
        }
    }

    /// Drops the series of `keys`.
    fn remove(&self, keys: &HashSet<Vec<String>>) {
        let made = |values: &[String]| keys.contains(values);
        match self {
            Self::Counter(family) => family.remove_where(made),
            Self::Gauge(family) => family.remove_where(made),
            Self::Histogram(family) => family.remove_where(made),
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
        /// Whether a warning said that the metric is full.
        full_warned: Arc<AtomicBool>,
    },
    Refused,
}

impl Entry {
    fn metric(family: HandlerFamily, dimensions: usize) -> Self {
        Self::Metric {
            family,
            dimensions,
            full_warned: Arc::default(),
        }
    }
}

/// `handler_metric_max_series` when the configuration does not set it.
pub const DEFAULT_MAX_SERIES: usize = 1000;

/// How many series one handler metric may have (`handler_metric_max_series`), and the counter
/// of the updates dropped past that, per model.
pub struct SeriesLimit {
    pub max: usize,
    pub dropped: Family<Counter>,
}

/// A model version: (name, version).
type Owner = (String, String);

/// The series a model version made: per metric, their label values.
type Made = HashMap<String, HashSet<Vec<String>>>;

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
    limit: SeriesLimit,
    /// The series each model version made, per metric: they go when it is unregistered.
    made_by: Mutex<HashMap<Owner, Made>>,
}

impl HandlerMetrics {
    /// The metrics of `declared`, with those handlers add when `auto_detect` is set; none of
    /// them may take a `reserved` name (a `metrics_config` declaring one is refused on load),
    /// nor have more series than `limit` allows.
    pub fn new(
        hostname: Arc<str>,
        declared: Vec<Declaration>,
        auto_detect: bool,
        log: bool,
        reserved: ReservedNames,
        limit: SeriesLimit,
    ) -> Self {
        let entries = declared
            .iter()
            .map(|d| {
                let family = HandlerFamily::new(d.kind, &d.name, &d.unit, &d.dimensions);
                (d.name.clone(), Entry::metric(family, d.dimensions.len()))
            })
            .collect();
        Self {
            hostname,
            auto_detect,
            log,
            declared: declared.into(),
            reserved,
            entries: RwLock::new(entries),
            limit,
            made_by: Mutex::default(),
        }
    }

    /// The declared metrics, which each worker's metric cache starts with.
    pub fn declared(&self) -> &[Declaration] {
        &self.declared
    }

    /// Applies a batch's updates from a handler of `model` version `version`. An update whose
    /// metric is unknown (without auto-detection), badly named, named as one of the server's
    /// own metrics, or given the wrong number of dimension values is dropped with a warning: a
    /// refused metric is warned about once, a misfit update each time. An update that would
    /// make a series past the metric's limit is dropped and counted (warned once per metric).
    pub fn record(&self, model: &str, version: &str, samples: &[HandlerSample]) {
        let mut made: Vec<(&str, Vec<String>)> = Vec::new();
        let mut dropped = 0;
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
            let Entry::Metric {
                family,
                dimensions,
                full_warned,
            } = entry
            else {
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
                match family.update(&values, *value, self.limit.max) {
                    Some(true) => made.push((&sample.name, owned(&values))),
                    Some(false) => {}
                    None => {
                        dropped += 1;
                        if !full_warned.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "model {model}: metric {} has handler_metric_max_series ({}) \
                                 series; updates of new label values are dropped",
                                sample.name,
                                self.limit.max
                            );
                        }
                    }
                }
            }
        }
        if dropped > 0 {
            self.limit
                .dropped
                .get_or_create(&[model, version])
                .add(dropped as f64);
        }
        if !made.is_empty() {
            let mut made_by = self.made_by.lock().expect("handler metrics owners");
            let series = made_by
                .entry((model.to_string(), version.to_string()))
                .or_default();
            for (name, key) in made {
                series.entry(name.to_string()).or_default().insert(key);
            }
        }
    }

    /// Drops the series that model `model` version `version` made, when it is unregistered.
    pub fn remove_model(&self, model: &str, version: &str) {
        let owner = (model.to_string(), version.to_string());
        let Some(made) = self
            .made_by
            .lock()
            .expect("handler metrics owners")
            .remove(&owner)
        else {
            return;
        };
        let entries = self.entries.read().expect("handler metrics lock");
        for (name, keys) in made {
            if let Some(Entry::Metric { family, .. }) = entries.get(&name) {
                family.remove(&keys);
            }
        }
        self.limit
            .dropped
            .remove_where(|values| values[0] == model && values[1] == version);
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
                None => Entry::metric(
                    HandlerFamily::new(
                        sample.kind,
                        &sample.name,
                        &sample.unit,
                        &sample.dimension_names,
                    ),
                    sample.dimension_names.len(),
                ),
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
        let entry = entries.entry(name.to_string()).or_insert_with(|| {
            let family = HandlerFamily::new(MetricKind::Gauge, name, "ms", &dimensions);
            Entry::metric(family, dimensions.len())
        });
        match entry {
            Entry::Metric {
                family,
                dimensions: 2,
                ..
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

/// Label values as a series key.
fn owned(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| v.to_string()).collect()
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

    /// Metrics of host `h` that take every handler metric, at most `max` series each.
    fn auto_detecting(max: usize) -> HandlerMetrics {
        HandlerMetrics::new(
            "h".into(),
            vec![],
            true,
            false,
            ReservedNames::default(),
            limit(max),
        )
    }

    fn limit(max: usize) -> SeriesLimit {
        SeriesLimit {
            max,
            dropped: Family::new("dropped", "Dropped", &["model_name", "model_version"]),
        }
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
                limit(1000),
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
        let metrics = auto_detecting(1000);
        let calls = sample(MetricKind::Counter, "CallCount", &MODEL, 2.0);
        metrics.record("m", "1", &[calls.clone(), calls]);
        metrics.record("m", "1", &[sample(MetricKind::Gauge, "Temp", &MODEL, 3.5)]);
        metrics.record(
            "m",
            "1",
            &[sample(MetricKind::Histogram, "Size", &MODEL, 0.3)],
        );
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
        let metrics = HandlerMetrics::new(
            "h".into(),
            declared,
            false,
            false,
            ReservedNames::default(),
            limit(1000),
        );
        assert!(rendered(&metrics).contains("# TYPE Declared gauge\n"));
        metrics.record(
            "m",
            "1",
            &[sample(MetricKind::Counter, "Declared", &MODEL, 1.0)],
        );
        metrics.record(
            "m",
            "1",
            &[sample(MetricKind::Counter, "Declared", &MODEL, 5.0)],
        );
        metrics.record(
            "m",
            "1",
            &[sample(MetricKind::Counter, "Other", &MODEL, 1.0)],
        );
        let text = rendered(&metrics);
        assert!(text.contains("Declared{ModelName=\"m\",Level=\"Model\",Hostname=\"h\",} 5.0\n"));
        assert!(!text.contains("Other"), "{text}");
        assert!(metrics.model_gauge("Declared", "m").is_some());
    }

    #[test]
    fn bad_updates_are_dropped() {
        let metrics = auto_detecting(1000);
        metrics.record(
            "m",
            "1",
            &[sample(MetricKind::Counter, "bad name", &MODEL, 1.0)],
        );
        metrics.record(
            "m",
            "1",
            &[sample(MetricKind::Counter, "C", &[("Hostname", "x")], 1.0)],
        );
        metrics.record("m", "1", &[sample(MetricKind::Counter, "D", &MODEL, -1.0)]);
        metrics.record(
            "m",
            "1",
            &[sample(MetricKind::Counter, "D", &MODEL[..1], 1.0)],
        );
        let text = rendered(&metrics);
        assert!(!text.contains("bad name") && !text.contains("C{"), "{text}");
        assert!(
            text.contains("# TYPE D counter\n") && !text.contains("D{"),
            "{text}"
        );
    }

    #[test]
    fn series_past_the_limit_are_dropped_and_counted_and_go_with_their_model() {
        let metrics = auto_detecting(2);
        let key = |k: &str| sample(MetricKind::Counter, "Flood", &[("Key", k)], 1.0);
        metrics.record("m", "1", &[key("a"), key("b"), key("c"), key("a")]);
        metrics.record("other", "1", &[key("d")]);
        let text = rendered(&metrics);
        assert!(
            text.contains("Flood{Key=\"a\",Hostname=\"h\",} 2.0\n"),
            "{text}"
        );
        assert!(text.contains("Flood{Key=\"b\","), "{text}");
        assert!(
            !text.contains("Key=\"c\"") && !text.contains("Key=\"d\""),
            "{text}"
        );
        let mut dropped = String::new();
        metrics.limit.dropped.render(&mut dropped);
        assert!(dropped.contains("dropped{model_name=\"m\",model_version=\"1\",} 1.0\n"));
        assert!(dropped.contains("dropped{model_name=\"other\",model_version=\"1\",} 1.0\n"));
        metrics.remove_model("m", "1");
        let text = rendered(&metrics);
        assert!(!text.contains("Flood{"), "{text}");
        metrics.record("other", "1", &[key("d")]);
        assert!(rendered(&metrics).contains("Flood{Key=\"d\","));
    }
}
