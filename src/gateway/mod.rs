//! The gateway: the MCP endpoint clients talk to, its HTTP routes, and the
//! shared state (catalog snapshot, connected clients) behind them.

mod handler;
mod http;
mod state;
pub mod status;

pub use handler::GatewayHandler;
pub use http::{AllowedHosts, router};
pub use state::GatewayState;
