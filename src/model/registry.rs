//! The registry of served models by name and version, with a default version per name.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::served_model::ServedModel;
use crate::error::{ApiError, ApiResult};

/// All versions of one model name.
struct Versions {
    default: String,
    all: BTreeMap<String, Arc<ServedModel>>,
}

/// Models by name; every operation holds the lock only briefly and never across an await.
#[derive(Default)]
pub struct Registry {
    models: RwLock<HashMap<String, Versions>>,
}

fn not_found(name: &str) -> ApiError {
    ApiError::model_not_found(format!("Model not found: {name}"))
}

fn version_not_found(name: &str, version: &str) -> ApiError {
    ApiError::model_not_found(format!(
        "Model version {version} does not exist for model {name}"
    ))
}

impl Registry {
    /// The named version of a model, or its default version.
    pub fn get(&self, name: &str, version: Option<&str>) -> ApiResult<Arc<ServedModel>> {
        let models = self.models.read().expect("registry lock");
        let versions = models.get(name).ok_or_else(|| not_found(name))?;
        let version = version.unwrap_or(&versions.default);
        versions
            .all
            .get(version)
            .cloned()
            .ok_or_else(|| version_not_found(name, version))
    }

    /// Every version of a model, default first.
    pub fn versions(&self, name: &str) -> ApiResult<Vec<Arc<ServedModel>>> {
        let models = self.models.read().expect("registry lock");
        let versions = models.get(name).ok_or_else(|| not_found(name))?;
        let mut out: Vec<_> = versions.all.values().cloned().collect();
        out.sort_by_key(|m| m.def.version != versions.default);
        Ok(out)
    }

    /// Whether this name and version is taken.
    pub fn contains(&self, name: &str, version: &str) -> bool {
        let models = self.models.read().expect("registry lock");
        models
            .get(name)
            .is_some_and(|v| v.all.contains_key(version))
    }

    /// Adds a model version; the first version of a name becomes its default.
    pub fn insert(&self, model: Arc<ServedModel>) -> ApiResult<()> {
        let mut models = self.models.write().expect("registry lock");
        let name = model.def.name.clone();
        let version = model.def.version.clone();
        let versions = models.entry(name.clone()).or_insert_with(|| Versions {
            default: version.clone(),
            all: BTreeMap::new(),
        });
        if versions.all.contains_key(&version) {
            return Err(ApiError::conflict(format!(
                "Model version {version} is already registered for model {name}"
            )));
        }
        versions.all.insert(version, model);
        Ok(())
    }

    /// Removes one version (the default when `version` is None). When the default goes, the
    /// highest remaining version becomes the default.
    pub fn remove(&self, name: &str, version: Option<&str>) -> ApiResult<Arc<ServedModel>> {
        let mut models = self.models.write().expect("registry lock");
        let versions = models.get_mut(name).ok_or_else(|| not_found(name))?;
        let version = version.unwrap_or(&versions.default).to_string();
        let model = versions
            .all
            .remove(&version)
            .ok_or_else(|| version_not_found(name, &version))?;
        match versions.all.keys().next_back() {
            None => {
                models.remove(name);
            }
            Some(highest) if versions.default == version => versions.default = highest.clone(),
            Some(_) => {}
        }
        Ok(model)
    }

    /// Makes `version` the default of `name`.
    pub fn set_default(&self, name: &str, version: &str) -> ApiResult<()> {
        let mut models = self.models.write().expect("registry lock");
        let versions = models.get_mut(name).ok_or_else(|| not_found(name))?;
        if !versions.all.contains_key(version) {
            return Err(version_not_found(name, version));
        }
        versions.default = version.to_string();
        Ok(())
    }

    /// Default version of every model, sorted by name.
    pub fn list(&self) -> Vec<Arc<ServedModel>> {
        let models = self.models.read().expect("registry lock");
        let mut out: Vec<_> = models
            .values()
            .filter_map(|v| v.all.get(&v.default).cloned())
            .collect();
        out.sort_by(|a, b| a.def.name.cmp(&b.def.name));
        out
    }

    /// Every model version.
    pub fn all(&self) -> Vec<Arc<ServedModel>> {
        let models = self.models.read().expect("registry lock");
        models
            .values()
            .flat_map(|v| v.all.values().cloned())
            .collect()
    }
}
