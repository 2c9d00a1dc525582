//! State shared by every API handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};
use crate::gpu::Gpus;
use crate::metrics::{Metrics, ModelLabels};
use crate::model::{Autoscaler, ModelDefinition, ServedModel};
use crate::python_env::PythonEnv;
use crate::snapshot::Snapshotter;
use crate::versioned::VersionedRegistry;
use crate::workflow::{Claims, Workflow};

/// The server's models, metrics, settings and Python environment.
pub struct AppState {
    pub config: ServerConfig,
    pub registry: VersionedRegistry<ServedModel>,
    pub workflows: VersionedRegistry<Workflow>,
    /// Workflow names whose registration is under way.
    pub workflow_claims: Claims,
    pub metrics: Metrics,
    pub python: PythonEnv,
    /// The GPUs workers are placed on.
    pub gpus: Arc<Gpus>,
    pub snapshots: Snapshotter,
    /// Scales every model's and workflow node's pool within the server's worker budget.
    pub autoscaler: Arc<Autoscaler>,
    /// True until the start-up snapshot, models and workflows have been loaded (or have
    /// failed); `/ping` answers Unhealthy meanwhile.
    pub starting: AtomicBool,
}

impl AppState {
    /// TorchServe's health rule: done starting, and the default version of every model
    /// (workflow nodes included) has at least its minimum workers ready.
    pub fn healthy(&self) -> bool {
        !self.starting.load(Ordering::Acquire) && self.registry.list().iter().all(|m| m.healthy())
    }

    /// Marks start-up loading as done.
    pub fn started(&self) {
        self.starting.store(false, Ordering::Release);
    }

    /// Registers a model and starts its workers; with `synchronous`, waits for them and
    /// unregisters the model again if none could load.
    pub async fn start_model(
        &self,
        def: ModelDefinition,
        synchronous: bool,
    ) -> ApiResult<Arc<ServedModel>> {
        let refused = if self.registry.contains(&def.name, &def.version) {
            Err(ApiError::conflict(format!(
                "Model version {} is already registered for model {}",
                def.version, def.name
            )))
        } else {
            def.settings
                .check_workers(self.config.max_workers_per_model)
        };
        if let Err(e) = refused {
            def.remove_files().await;
            return Err(e);
        }
        let labels = ModelLabels {
            model_name: def.name.clone(),
            model_version: def.version.clone(),
        };
        let (min, max) = (def.settings.min_workers, def.settings.max_workers);
        let model = Arc::new(ServedModel::new(
            def,
            self.python.clone(),
            self.metrics.for_model(labels),
            self.config.decode_input_request,
            self.config.service_envelope.as_deref(),
            &self.gpus,
            self.config.cpu_pinning.as_ref(),
        ));
        if let Err(e) = self.registry.insert(model.clone()) {
            model.shutdown().await;
            return Err(e);
        }
        if let Err(e) = model.scale(min, max, synchronous).await {
            self.stop_model(&model).await;
            return Err(e);
        }
        self.autoscaler.watch(&model);
        Ok(model)
    }

    /// Unregisters one version of a model and stops its workers.
    pub async fn unregister_model(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> ApiResult<Arc<ServedModel>> {
        let model = self.registry.remove(name, version)?;
        self.stop_model(&model).await;
        Ok(model)
    }

    async fn stop_model(&self, model: &Arc<ServedModel>) {
        let _ = self
            .registry
            .remove(&model.def.name, Some(&model.def.version));
        model.shutdown().await;
        self.metrics.remove_model(&model.metrics().labels);
    }
}
