//! Metric families: named series keyed by label values, updated lock-free once created.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use super::text;

/// A floating-point value updated atomically: a counter's total or a gauge's reading.
#[derive(Default)]
pub struct Value(AtomicU64);

impl Value {
    /// Adds `delta` to the value.
    pub fn add(&self, delta: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }

    /// Replaces the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted in cumulative buckets with upper bounds `bounds`.
pub struct Histogram {
    bounds: Arc<[f64]>,
    buckets: Vec<AtomicU64>,
    sum: Value,
    count: AtomicU64,
}

impl Histogram {
    /// An empty histogram; `bounds` must be increasing.
    pub fn new(bounds: Arc<[f64]>) -> Self {
        Self {
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            bounds,
            sum: Value::default(),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|bound| value <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.add(value);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding the `q`-quantile (0..=1) of the observations;
    /// None when there are none, or when it lies above the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(*bound);
            }
        }
        None
    }
}

#[cfg(test)]
mod quantile_tests {
    use super::*;

    #[test]
    fn quantile_is_the_bound_of_its_bucket() {
        let h = Histogram::new(Arc::from(vec![1.0, 2.0, 4.0]));
        assert_eq!(h.quantile_bound(0.5), None);
        for v in [0.5, 1.5, 1.8, 3.0, 9.0] {
            h.observe(v);
        }
        assert_eq!(h.quantile_bound(0.5), Some(2.0));
        assert_eq!(h.quantile_bound(0.1), Some(1.0));
        assert_eq!(h.quantile_bound(0.8), Some(4.0));
        assert_eq!(h.quantile_bound(1.0), None);
    }
}

/// `count` bounds starting at `start`, each `factor` times the previous one.
pub fn exponential_bounds(start: f64, factor: f64, count: usize) -> Arc<[f64]> {
    std::iter::successors(Some(start), |b| Some(b * factor))
        .take(count)
        .collect()
}

/// The suffixes of a histogram's samples.
const BUCKET: &str = "_bucket";
const COUNT: &str = "_count";
const SUM: &str = "_sum";

/// How one series of a kind is written in the text exposition.
pub trait Series: Send + Sync + 'static {
    /// The `# TYPE` of the family.
    const TYPE: &'static str;

    /// What [`Series::write`] appends to the family's name to name its samples.
    const SUFFIXES: &'static [&'static str] = &[""];

    /// Writes the series' sample lines; `labels` is the rendered `name="value",` list.
    fn write(&self, out: &mut String, name: &str, labels: &str);
}

impl Series for Value {
    const TYPE: &'static str = "gauge";

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        text::sample(out, name, "", labels, self.get());
    }
}

/// A value that only grows: written as a Prometheus counter.
#[derive(Default)]
pub struct Counter(Value);

impl Counter {
    /// Adds `delta`, which must not be negative.
    pub fn add(&self, delta: f64) {
        self.0.add(delta);
    }

    /// The value so far.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

impl Series for Counter {
    const TYPE: &'static str = "counter";

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        self.0.write(out, name, labels);
    }
}

impl Series for Histogram {
    const TYPE: &'static str = "histogram";
    const SUFFIXES: &'static [&'static str] = &[BUCKET, COUNT, SUM];

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let labels = format!("{labels}le=\"{bound}\",");
            text::sample(out, name, BUCKET, &labels, cumulative as f64);
        }
        let count = self.count.load(Ordering::Relaxed) as f64;
        text::sample(out, name, BUCKET, &format!("{labels}le=\"+Inf\","), count);
        text::sample(out, name, COUNT, labels, count);
        text::sample(out, name, SUM, labels, self.sum.get());
    }
}

struct Inner<S> {
    name: String,
    help: String,
    label_names: Vec<String>,
    new: Box<dyn Fn() -> S + Send + Sync>,
    series: RwLock<BTreeMap<Vec<String>, Arc<S>>>,
}

/// A named family of series of one kind, one per set of label values; clones share it.
pub struct Family<S>(Arc<Inner<S>>);

impl<S> Clone for Family<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Series + Default> Family<S> {
    /// A family whose series start at their default.
    pub fn new(name: impl Into<String>, help: impl Into<String>, labels: &[&str]) -> Self {
        Self::with(name, help, labels, S::default)
    }
}

impl<S: Series> Family<S> {
    /// A family whose series are made by `new`.
    pub fn with(
        name: impl Into<String>,
        help: impl Into<String>,
        label_names: &[&str],
        new: impl Fn() -> S + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(Inner {
            name: name.into(),
            help: help.into(),
            label_names: label_names.iter().map(|n| n.to_string()).collect(),
            new: Box::new(new),
            series: RwLock::default(),
        }))
    }

    /// The family's help text.
    pub fn help(&self) -> &str {
        &self.0.help
    }

    /// The series with these label values (in the family's label order), created if new.
    pub fn get_or_create(&self, values: &[&str]) -> Arc<S> {
        self.get_or_create_within(values, usize::MAX)
            .expect("no limit")
            .0
    }

    /// The series with these label values, created if new while the family holds fewer than
    /// `max` series: `None` when it is full. The flag says whether the series was made now.
    pub fn get_or_create_within(&self, values: &[&str], max: usize) -> Option<(Arc<S>, bool)> {
        debug_assert_eq!(values.len(), self.0.label_names.len());
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        if let Some(series) = self.0.series.read().expect("family lock").get(&key) {
            return Some((series.clone(), false));
        }
        let mut all = self.0.series.write().expect("family lock");
        if let Some(series) = all.get(&key) {
            return Some((series.clone(), false));
        }
        if all.len() >= max {
            return None;
        }
        let series = Arc::new((self.0.new)());
        all.insert(key, series.clone());
        Some((series, true))
    }

    /// Applies `update` to the series of `values` as [`Family::get_or_create_within`] finds
    /// or makes it: `None` when the family is full, else whether the series was made now.
    pub fn update_within(
        &self,
        values: &[&str],
        max: usize,
        update: impl FnOnce(&S),
    ) -> Option<bool> {
        self.get_or_create_within(values, max)
            .map(|(series, made)| {
                update(&series);
                made
            })
    }

    /// Drops the series whose label values satisfy `remove`.
    pub fn remove_where(&self, remove: impl Fn(&[String]) -> bool) {
        self.0
            .series
            .write()
            .expect("family lock")
            .retain(|values, _| !remove(values));
    }

    /// A handle on one series that creates it on first use, so that it appears only once set.
    pub fn lazy(&self, values: &[&str]) -> LazySeries<S> {
        LazySeries {
            family: self.clone(),
            values: values.iter().map(|v| v.to_string()).collect(),
            series: OnceLock::new(),
        }
    }
}

/// One series of a family, created in the family on first use.
pub struct LazySeries<S> {
    family: Family<S>,
    values: Vec<String>,
    series: OnceLock<Arc<S>>,
}

impl<S: Series> LazySeries<S> {
    /// The series, created now if this is its first use.
    pub fn get(&self) -> &S {
        self.series.get_or_init(|| {
            let values: Vec<&str> = self.values.iter().map(String::as_str).collect();
            self.family.get_or_create(&values)
        })
    }
}

/// A family as the exposition sees it.
pub trait Render: Send + Sync {
    /// The family's name.
    fn name(&self) -> &str;

    /// The names of the family's samples (a histogram's `_bucket`, `_count`, `_sum`), which
    /// no other family may take either.
    fn sample_names(&self) -> Vec<String>;

    /// Appends `# HELP`, `# TYPE` and every series' samples.
    fn render(&self, out: &mut String);
}

impl<S: Series> Render for Family<S> {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn sample_names(&self) -> Vec<String> {
        S::SUFFIXES
            .iter()
            .map(|suffix| format!("{}{suffix}", self.0.name))
            .collect()
    }

    fn render(&self, out: &mut String) {
        let inner = &self.0;
        let _ = writeln!(out, "# HELP {} {}", inner.name, inner.help);
        let _ = writeln!(out, "# TYPE {} {}", inner.name, S::TYPE);
        for (values, series) in inner.series.read().expect("family lock").iter() {
            let labels = text::labels(&inner.label_names, values);
            series.write(out, &inner.name, &labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_count_and_sum() {
        let family = Family::with("lat", "Latency", &["m"], || {
            Histogram::new(exponential_bounds(1.0, 2.0, 2))
        });
        let series = family.get_or_create(&["a"]);
        for value in [0.5, 1.5, 1.7, 9.0] {
            series.observe(value);
        }
        let mut out = String::new();
        family.render(&mut out);
        assert_eq!(
            out,
            "# HELP lat Latency\n# TYPE lat histogram\n\
             lat_bucket{m=\"a\",le=\"1\",} 1.0\n\
             lat_bucket{m=\"a\",le=\"2\",} 3.0\n\
             lat_bucket{m=\"a\",le=\"+Inf\",} 4.0\n\
             lat_count{m=\"a\",} 4.0\n\
             lat_sum{m=\"a\",} 12.7\n"
        );
    }

    #[test]
    fn lazy_series_appear_on_first_use_and_share_the_family_series() {
        let family = Family::<Counter>::new("c", "C", &["m"]);
        let lazy = family.lazy(&["a"]);
        let mut out = String::new();
        family.render(&mut out);
        assert!(!out.contains("c{"));
        lazy.get().add(2.0);
        family.get_or_create(&["a"]).add(1.0);
        out.clear();
        family.render(&mut out);
        assert!(out.ends_with("c{m=\"a\",} 3.0\n"), "{out}");
    }

    #[test]
    fn a_full_family_makes_no_new_series_but_serves_its_own() {
        let family = Family::<Counter>::new("c", "C", &["m"]);
        assert!(family.get_or_create_within(&["a"], 1).unwrap().1);
        assert!(!family.get_or_create_within(&["a"], 1).unwrap().1);
        assert!(family.get_or_create_within(&["b"], 1).is_none());
        family.remove_where(|values| values[0] == "a");
        assert!(family.get_or_create_within(&["b"], 1).is_some());
    }
}
