//! The gateway: the MCP endpoint clients talk to, its HTTP routes, and the
//! shared state (catalog snapshot, connected clients) behind them.

mod fanout;
mod fast_list;
mod handler;
mod http;
mod overview;
mod state;
pub mod status;

pub use fanout::FanOutSettings;
pub use handler::GatewayHandler;
pub use http::{AllowedHosts, router};
pub use state::{GatewaySettings, GatewayState};
