//! Every integration test, in one binary: each module is one area of
//! behaviour, `common` the shared fixtures (processes on 127.0.0.1 that bind
//! port 0, the pinned third-party peers of `tests/peers/`, a gateway over a
//! manifest directory) and `kube_api` the Kubernetes API test server.
//! One binary links the crate and its dependencies once instead of once per
//! file. Run one area with `cargo test --test integration relay::`.

mod common;
mod kube_api;

mod agent_chart;
mod agents;
mod call_limits;
mod conformance;
mod discovery;
mod families;
mod fuzz;
mod gateway;
mod helm_chart;
mod idp_peers;
mod kube_api_server;
mod kubernetes;
mod limits;
mod matrix;
mod observability;
mod parking;
mod policy;
mod relay;
mod replicas;
mod sso;
mod sso_clients;
mod task_extension;
mod ui;
mod upstream_sessions;
