//! Workflows: `.war` archives, the spec and its DAG, the node models, and the executor.

mod archive;
mod claims;
mod dag;
mod executor;
mod handler_scan;
mod loader;
mod open_inference;
mod picture;
mod plan;
mod remote;
mod route;
mod served_workflow;
mod spec;
mod stage;

pub use claims::Claims;
pub use executor::execute;
pub use loader::{
    register_workflow, scale_workflow, unregister_workflow, update_workflow, WorkflowOptions,
};
pub use picture::{budget, dot, mermaid, svg, Picture};
pub use served_workflow::Workflow;
