//! Flotilla: a fleet gateway for the Model Context Protocol. Data flows one
//! way, source → fleet → catalog → gateway; see README.md for the tour.

pub mod agent;
pub mod api;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod gateway;
mod layers;
pub mod policy;
pub mod sim;
pub mod source;
pub mod telemetry;

/// Each CustomResourceDefinition as YAML, with the file `crds/` holds it in.
pub fn crds() -> anyhow::Result<Vec<(&'static str, String)>> {
    use kube::CustomResourceExt;
    Ok(vec![
        (
            "mcpserver.yaml",
            serde_saphyr::to_string(&api::MCPServer::crd())?,
        ),
        (
            "mcpserverset.yaml",
            serde_saphyr::to_string(&api::MCPServerSet::crd())?,
        ),
        (
            "toolpolicy.yaml",
            serde_saphyr::to_string(&api::ToolPolicy::crd())?,
        ),
    ])
}

/// Every CRD as one multi-document YAML stream (`flotilla crd`).
pub fn crd_yaml() -> anyhow::Result<String> {
    let documents: Vec<String> = crds()?.into_iter().map(|(_, yaml)| yaml).collect();
    Ok(documents.join("---\n"))
}
