//! Registered workflows by name.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::served_workflow::Workflow;
use crate::error::{ApiError, ApiResult};

/// Workflows by name; the lock is held only briefly.
#[derive(Default)]
pub struct WorkflowRegistry {
    workflows: RwLock<BTreeMap<String, Arc<Workflow>>>,
}

fn not_found(name: &str) -> ApiError {
    ApiError::workflow_not_found(format!("Workflow not found: {name}"))
}

impl WorkflowRegistry {
    pub fn get(&self, name: &str) -> ApiResult<Arc<Workflow>> {
        let workflows = self.workflows.read().expect("workflow lock");
        workflows.get(name).cloned().ok_or_else(|| not_found(name))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.workflows
            .read()
            .expect("workflow lock")
            .contains_key(name)
    }

    /// Adds a workflow; 409 when the name is taken.
    pub fn insert(&self, workflow: Arc<Workflow>) -> ApiResult<()> {
        let mut workflows = self.workflows.write().expect("workflow lock");
        if workflows.contains_key(&workflow.name) {
            return Err(ApiError::conflict(format!(
                "Workflow {} is already registered",
                workflow.name
            )));
        }
        workflows.insert(workflow.name.clone(), workflow);
        Ok(())
    }

    pub fn remove(&self, name: &str) -> ApiResult<Arc<Workflow>> {
        let mut workflows = self.workflows.write().expect("workflow lock");
        workflows.remove(name).ok_or_else(|| not_found(name))
    }

    /// Every workflow, sorted by name.
    pub fn list(&self) -> Vec<Arc<Workflow>> {
        let workflows = self.workflows.read().expect("workflow lock");
        workflows.values().cloned().collect()
    }
}
