//! Models: their definitions, the live model with its queue and worker pool, the registry of
//! names and versions, and loading archives into it.

mod autoscaler;
mod definition;
mod dependencies;
mod loader;
mod presets;
mod scaling_policy;
mod sequences;
mod served_model;

pub use autoscaler::{usable_cores, Autoscaler};
pub use definition::{check_worker_limit, valid_name, ModelDefinition, ModelSettings};
pub use loader::{archive_stem, prepare_model, register_archive, RegisterOptions};
pub use presets::ModelPresets;
pub use scaling_policy::ScalingSettings;
pub use served_model::ServedModel;
