//! Pictures of a workflow: [`graph`] turns a workflow into a neutral list of nodes and edges,
//! [`dot`] and [`mermaid`] render that list as text, [`svg`] lays it out and draws it on a [`canvas`],
//! within the [`budget`].

pub mod budget;
pub mod canvas;
pub mod dot;
pub mod graph;
pub mod mermaid;
pub mod svg;

pub use graph::Picture;
