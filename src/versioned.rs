//! A registry of named, versioned items with a default version per name: models and workflows.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;

use crate::error::{ApiError, ApiResult};

/// An item with a name and a version.
pub trait Versioned {
    /// What the registry holds, for error messages: "Model" or "Workflow".
    const KIND: &'static str;
    fn name(&self) -> &str;
    fn version(&self) -> &str;
    /// The item's entry in the describe API.
    fn describe(&self) -> serde_json::Value;
    /// The item's entry in the list API.
    fn summary(&self) -> serde_json::Value;
}

/// All versions of one name.
struct Versions<T> {
    default: String,
    all: BTreeMap<String, Arc<T>>,
}

/// Items by name and version; the lock is held briefly and never across an await.
pub struct VersionedRegistry<T> {
    items: RwLock<HashMap<String, Versions<T>>>,
}

impl<T> Default for VersionedRegistry<T> {
    fn default() -> Self {
        Self {
            items: RwLock::new(HashMap::new()),
        }
    }
}

fn not_found(kind: &str, name: &str) -> ApiError {
    let message = format!("{kind} not found: {name}");
    if kind == "Workflow" {
        ApiError::workflow_not_found(message)
    } else {
        ApiError::model_not_found(message)
    }
}

/// TorchServe's 404 for a missing version: "Model version: 2.0 does not exist for model: m".
fn version_not_found(kind: &str, name: &str, version: &str) -> ApiError {
    not_found(kind, name).with_message(format!(
        "{kind} version: {version} does not exist for {}: {name}",
        kind.to_lowercase()
    ))
}

/// Orders versions part by part: numeric parts as numbers, others as text.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |v: &str| -> Vec<(u64, String)> {
        v.split('.')
            .map(|part| (part.parse().unwrap_or(u64::MAX), part.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

impl<T: Versioned> VersionedRegistry<T> {
    /// The named version, or the default version.
    pub fn get(&self, name: &str, version: Option<&str>) -> ApiResult<Arc<T>> {
        let items = self.items.read().expect("registry lock");
        let versions = items.get(name).ok_or_else(|| not_found(T::KIND, name))?;
        let version = version.unwrap_or(&versions.default);
        versions
            .all
            .get(version)
            .cloned()
            .ok_or_else(|| version_not_found(T::KIND, name, version))
    }

    /// Every version of a name, lowest first, comparing dotted numbers as numbers
    /// (`1.2.1` before `1.11`).
    pub fn versions(&self, name: &str) -> ApiResult<Vec<Arc<T>>> {
        let items = self.items.read().expect("registry lock");
        let versions = items.get(name).ok_or_else(|| not_found(T::KIND, name))?;
        let mut out: Vec<_> = versions.all.values().cloned().collect();
        out.sort_by(|a, b| version_order(a.version(), b.version()));
        Ok(out)
    }

    /// Whether this name and version is taken.
    pub fn contains(&self, name: &str, version: &str) -> bool {
        let items = self.items.read().expect("registry lock");
        items.get(name).is_some_and(|v| v.all.contains_key(version))
    }

    /// Whether `name:version` is the default version of its name.
    pub fn is_default(&self, name: &str, version: &str) -> bool {
        let items = self.items.read().expect("registry lock");
        items.get(name).is_some_and(|v| v.default == version)
    }

    /// Adds a version; the first version of a name becomes its default. 409 when taken.
    pub fn insert(&self, item: Arc<T>) -> ApiResult<()> {
        let mut items = self.items.write().expect("registry lock");
        let (name, version) = (item.name().to_string(), item.version().to_string());
        let versions = items.entry(name.clone()).or_insert_with(|| Versions {
            default: version.clone(),
            all: BTreeMap::new(),
        });
        if versions.all.contains_key(&version) {
            return Err(ApiError::conflict(format!(
                "{} version {version} is already registered for {} {name}",
                T::KIND,
                T::KIND.to_lowercase()
            )));
        }
        versions.all.insert(version, item);
        Ok(())
    }

    /// Removes one version (the default when `version` is None). As in TorchServe, the
    /// default version goes only last: 403 while other versions remain.
    pub fn remove(&self, name: &str, version: Option<&str>) -> ApiResult<Arc<T>> {
        let mut items = self.items.write().expect("registry lock");
        let versions = items
            .get_mut(name)
            .ok_or_else(|| not_found(T::KIND, name))?;
        let version = version.unwrap_or(&versions.default).to_string();
        if !versions.all.contains_key(&version) {
            return Err(version_not_found(T::KIND, name, &version));
        }
        if versions.default == version && versions.all.len() > 1 {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "InvalidModelVersionException",
                format!(
                    "Cannot remove default version for {} {name}",
                    T::KIND.to_lowercase()
                ),
            ));
        }
        let item = versions.all.remove(&version).expect("checked above");
        if versions.all.is_empty() {
            items.remove(name);
        }
        Ok(item)
    }

    /// When `version` is the default of `name` and other versions remain, makes the highest
    /// of them the default, so that `version` can be removed (a workflow's node models follow
    /// their workflow's versions, whichever is the default).
    pub fn pass_default_from(&self, name: &str, version: &str) {
        let mut items = self.items.write().expect("registry lock");
        if let Some(versions) = items.get_mut(name).filter(|v| v.default == version) {
            let others = versions.all.keys().filter(|v| *v != version);
            if let Some(next) = others.max_by(|a, b| version_order(a, b)) {
                versions.default = next.clone();
            }
        }
    }

    /// Makes `version` the default of `name`.
    pub fn set_default(&self, name: &str, version: &str) -> ApiResult<()> {
        let mut items = self.items.write().expect("registry lock");
        let versions = items
            .get_mut(name)
            .ok_or_else(|| not_found(T::KIND, name))?;
        if !versions.all.contains_key(version) {
            return Err(not_found(T::KIND, name).with_message(format!(
                "{} version {version} does not exist for {} {name}",
                T::KIND,
                T::KIND.to_lowercase()
            )));
        }
        versions.default = version.to_string();
        Ok(())
    }

    /// The default version of every name, sorted by name.
    pub fn list(&self) -> Vec<Arc<T>> {
        let items = self.items.read().expect("registry lock");
        let mut out: Vec<_> = items
            .values()
            .filter_map(|v| v.all.get(&v.default).cloned())
            .collect();
        out.sort_by(|a, b| a.name().cmp(b.name()));
        out
    }

    /// Every version of every name.
    pub fn all(&self) -> Vec<Arc<T>> {
        let items = self.items.read().expect("registry lock");
        items
            .values()
            .flat_map(|v| v.all.values().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Item(&'static str, &'static str);

    impl Versioned for Item {
        const KIND: &'static str = "Model";
        fn name(&self) -> &str {
            self.0
        }
        fn version(&self) -> &str {
            self.1
        }
        fn describe(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn summary(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    #[test]
    fn versions_and_defaults() {
        let registry = VersionedRegistry::default();
        registry.insert(Arc::new(Item("m", "1.0"))).unwrap();
        registry.insert(Arc::new(Item("m", "2.0"))).unwrap();
        assert_eq!(registry.get("m", None).unwrap().version(), "1.0");
        let dup = registry.insert(Arc::new(Item("m", "2.0"))).unwrap_err();
        assert_eq!(dup.status.as_u16(), 409);
        registry.set_default("m", "2.0").unwrap();
        assert_eq!(registry.get("m", None).unwrap().version(), "2.0");
        assert_eq!(registry.versions("m").unwrap()[0].version(), "1.0");
        let default = registry.remove("m", None).unwrap_err();
        assert_eq!(default.status.as_u16(), 403);
        assert_eq!(default.message, "Cannot remove default version for model m");
        let missing = registry.get("m", Some("3.0")).unwrap_err();
        assert_eq!(missing.status.as_u16(), 404);
        assert_eq!(
            missing.message,
            "Model version: 3.0 does not exist for model: m"
        );
        registry.remove("m", Some("1.0")).unwrap();
        registry.remove("m", None).unwrap();
        assert!(registry.list().is_empty());
        assert!(version_order("1.2.1", "1.11").is_lt());
    }
}
