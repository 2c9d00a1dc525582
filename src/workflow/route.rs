//! Routes and splits: how a node chooses, per request, which of its children run. A
//! [`Router`] is resolved from the spec's `routes:` entry against the DAG, with children as
//! indices (DAG nodes, or stages once the plan maps them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::spec::{Route, RouteSpec};

/// A node's route resolved to child indices, with the state of its split.
#[derive(Debug, Clone)]
pub struct Router {
    pub route: Route<usize>,
    /// The split's seed: the spec's, else drawn at registration.
    pub seed: u64,
    /// Requests a split has drawn so far, shared by clones.
    drawn: Arc<AtomicU64>,
}

impl Router {
    /// Resolves `spec`, the route of node `node` whose children are `children` (name and
    /// index), checking that it names only those children, each child at least once.
    pub fn resolve(
        node: &str,
        spec: &RouteSpec,
        children: &[(&str, usize)],
    ) -> Result<Self, String> {
        if children.len() < 2 {
            return Err(format!(
                "routes.{node}: a route needs a node with at least two children in the dag, {node:?} has {}",
                children.len()
            ));
        }
        if let Route::Cases { cases, default, .. } = spec {
            let lists = cases
                .iter()
                .map(|(case, c)| (format!("cases.{case}"), c))
                .chain(default.iter().map(|d| ("default".to_string(), d)));
            for (what, list) in lists {
                if list.is_empty() {
                    return Err(format!("routes.{node}.{what} must name at least one child"));
                }
            }
        }
        let route = spec.try_map(|name| {
            children
                .iter()
                .find(|(child, _)| child == name)
                .map(|&(_, i)| i)
                .ok_or_else(|| {
                    format!(
                        "routes.{node} names {name:?}, which is not a child of {node:?} in the dag"
                    )
                })
        })?;
        let named = route.children();
        let unnamed: Vec<&str> = children
            .iter()
            .filter(|(_, i)| !named.contains(&i))
            .map(|&(name, _)| name)
            .collect();
        if !unnamed.is_empty() {
            return Err(format!(
                "routes.{node} never sends a request to {}: every child of a routed node must be named by a case, the default or the split",
                unnamed.join(", ")
            ));
        }
        let seed = match &route {
            Route::Split { weights, seed } => {
                if weights.len() != children.len() {
                    return Err(format!("routes.{node}.split names a child twice"));
                }
                *seed
            }
            Route::Cases { .. } => None,
        };
        Ok(Self {
            route,
            seed: seed.unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0),
            drawn: Arc::default(),
        })
    }

    /// The router with every child index mapped through `f` (DAG nodes to stages).
    pub fn map(&self, f: impl Fn(usize) -> usize) -> Self {
        let Ok(route) = self
            .route
            .try_map(|&i| Ok::<_, std::convert::Infallible>(f(i)));
        Self {
            route,
            ..self.clone()
        }
    }

    /// The route as describe shows it, children named by `names`: `{"cases": {case:
    /// [child…]}, "default": […], "field": …}` or `{"split": {child: weight}, "seed": n}`.
    pub fn describe<'a>(&self, names: impl Fn(&[usize]) -> Vec<&'a str>) -> Value {
        match &self.route {
            Route::Cases {
                field,
                cases,
                default,
            } => {
                let cases: serde_json::Map<String, Value> = cases
                    .iter()
                    .map(|(case, c)| (case.clone(), json!(names(c))))
                    .collect();
                json!({"cases": cases, "default": default.as_deref().map(&names), "field": field})
            }
            Route::Split { weights, .. } => {
                let weights: serde_json::Map<String, Value> = weights
                    .iter()
                    .map(|&(c, w)| (names(&[c])[0].to_string(), json!(w)))
                    .collect();
                json!({"split": weights, "seed": self.seed})
            }
        }
    }

    /// The children that run after the node answered `output`; the error says why the
    /// output chooses none.
    pub fn choose(&self, output: &[u8]) -> Result<&[usize], String> {
        match &self.route {
            Route::Cases {
                field,
                cases,
                default,
            } => {
                let case = case_of(output, field.as_deref())?;
                cases
                    .iter()
                    .find(|(name, _)| *name == case)
                    .map(|(_, children)| children)
                    .or(default.as_ref())
                    .map(Vec::as_slice)
                    .ok_or_else(|| {
                        format!("its output names route {case:?}, which matches no case, and the route has no default")
                    })
            }
            Route::Split { weights, .. } => Ok(self.draw(weights)),
        }
    }

    /// The child of the next request through a split with `weights`: the one a seeded hash
    /// of the request's number falls on.
    fn draw<'w>(&self, weights: &'w [(usize, f64)]) -> &'w [usize] {
        let n = self.drawn.fetch_add(1, Ordering::Relaxed);
        let total: f64 = weights.iter().map(|&(_, w)| w).sum();
        // 53 random bits as a fraction of the total weight.
        let mut point =
            (splitmix64(self.seed ^ splitmix64(n)) >> 11) as f64 / (1u64 << 53) as f64 * total;
        for (child, weight) in weights {
            if point < *weight {
                return std::slice::from_ref(child);
            }
            point -= weight;
        }
        weights
            .last()
            .map(|(child, _)| std::slice::from_ref(child))
            .unwrap_or_default()
    }
}

/// The SplitMix64 mix: consecutive inputs give well-spread outputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The case an output names: its `field` (a JSON object's member), or the whole output (a
/// JSON string or scalar, or plain text), trimmed.
fn case_of(output: &[u8], field: Option<&str>) -> Result<String, String> {
    let json: Option<Value> = serde_json::from_slice(output).ok();
    let value = match (field, json) {
        (Some(field), Some(Value::Object(mut object))) => object
            .remove(field)
            .ok_or_else(|| format!("its output has no field {field:?} to route by"))?,
        (Some(field), _) => {
            return Err(format!(
                "its output is not a JSON object with the field {field:?} to route by"
            ))
        }
        (None, Some(value)) => value,
        (None, None) => Value::String(String::from_utf8_lossy(output).into_owned()),
    };
    match value {
        Value::String(text) => Ok(text.trim().to_string()),
        Value::Number(_) | Value::Bool(_) => Ok(value.to_string()),
        other => Err(format!(
            "its output names no route: {} is not a string, number or boolean",
            other
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIDS: [(&str, usize); 3] = [("breed", 1), ("post", 2), ("log", 3)];

    fn cases(yaml: &str) -> Result<Router, String> {
        let spec = crate::workflow::spec::WorkflowSpec::parse(&format!(
            "dag:\n  c: [breed, post, log]\nroutes:\n  c:\n{yaml}"
        ))?;
        Router::resolve("c", &spec.routes[0].1, &KIDS)
    }

    #[test]
    fn output_text_json_string_or_field_names_the_case() {
        let r =
            cases("    cases: {dog: [breed, log], cat: post}\n    default: [post, log]\n").unwrap();
        assert_eq!(r.choose(b"dog").unwrap(), [1, 3]);
        assert_eq!(r.choose(b" \"cat\"\n").unwrap(), [2]);
        assert_eq!(r.choose(b"fish").unwrap(), [2, 3]);
        let by_field =
            cases("    field: label\n    cases: {dog: [breed, log], other: [post, log]}\n")
                .unwrap();
        assert_eq!(
            by_field.choose(br#"{"label": "dog", "p": 0.9}"#).unwrap(),
            [1, 3]
        );
        let err = by_field.choose(br#"{"label": "cat"}"#).unwrap_err();
        assert!(err.contains("\"cat\", which matches no case"), "{err}");
        assert!(by_field
            .choose(b"[1]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(by_field
            .choose(b"{}")
            .unwrap_err()
            .contains("no field \"label\""));
        let numeric = cases("    cases: {1: [breed, log], 0: post}\n").unwrap();
        assert_eq!(numeric.choose(b"1").unwrap(), [1, 3]);
        assert!(numeric.choose(b"[1]").unwrap_err().contains("not a string"));
    }

    #[test]
    fn resolution_names_the_problem() {
        let problems = [
            (
                "    cases: {dog: [wolf], x: [post, log, breed]}\n",
                "\"wolf\", which is not a child",
            ),
            (
                "    cases: {dog: [breed]}\n    default: post\n",
                "never sends a request to log",
            ),
            (
                "    cases: {dog: []}\n    default: [post, breed, log]\n",
                "cases.dog must name at least one",
            ),
            (
                "    split: {breed: 1, post: 1, log: 0}\n",
                "weight must be a positive number",
            ),
            (
                "    split: {breed: 1, post: -2, log: 1}\n",
                "weight must be a positive number",
            ),
            (
                "    split: {breed: 1, post: x, log: 1}\n",
                "weight must be a positive number",
            ),
            ("    split: {breed: 1}\n    cases: {a: b}\n", "not both"),
            (
                "    split: {breed: 1}\n    field: f\n",
                "takes only 'split' and 'seed'",
            ),
            (
                "    cases: {a: [breed, post, log]}\n    seed: 1\n",
                "seed belongs to a split",
            ),
            ("    weights: {}\n", "unknown key \"weights\""),
            ("    default: [breed]\n", "needs 'cases' or 'split'"),
        ];
        for (yaml, expected) in problems {
            let err = cases(yaml).unwrap_err();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
        let spec = RouteSpec::Split {
            weights: vec![("a".into(), 1.0)],
            seed: None,
        };
        let err = Router::resolve("n", &spec, &[("a", 1)]).unwrap_err();
        assert!(err.contains("at least two children"), "{err}");
    }

    #[test]
    fn a_seeded_split_is_reproducible_and_keeps_its_shares() {
        let split = "    split: {breed: 90, post: 9, log: 1}\n    seed: 7\n";
        let draw = |r: &Router| {
            (0..10_000)
                .map(|_| r.choose(b"").unwrap()[0])
                .collect::<Vec<_>>()
        };
        let (a, b) = (cases(split).unwrap(), cases(split).unwrap());
        let (first, second) = (draw(&a), draw(&b));
        assert_eq!(first, second, "the same seed draws the same sequence");
        let share = |child| first.iter().filter(|&&c| c == child).count();
        assert!((8_800..9_200).contains(&share(1)), "{}", share(1));
        assert!((750..1_050).contains(&share(2)), "{}", share(2));
        assert!((50..150).contains(&share(3)), "{}", share(3));
        let other = cases("    split: {breed: 90, post: 9, log: 1}\n    seed: 8\n").unwrap();
        assert_ne!(draw(&other), first);
        let mapped = a.map(|i| i * 10);
        assert!([10, 20, 30].contains(&mapped.choose(b"").unwrap()[0]));
    }
}
