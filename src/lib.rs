//! Flotilla: a fleet gateway for the Model Context Protocol. Data flows one
//! way, source → fleet → catalog → gateway; see README.md for the tour.

pub mod api;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod gateway;
mod layers;
pub mod sim;
pub mod source;
pub mod telemetry;

/// The MCPServer CRD as YAML, exactly what `crds/` holds.
pub fn crd_yaml() -> anyhow::Result<String> {
    use kube::CustomResourceExt;
    Ok(serde_saphyr::to_string(&api::MCPServer::crd())?)
}
