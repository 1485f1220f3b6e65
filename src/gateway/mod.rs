//! The gateway: the MCP endpoint clients talk to, its HTTP routes, and the
//! shared state (catalog snapshot, connected clients) behind them.

mod agent_door;
pub mod audit;
mod auth_status;
pub mod call_record;
mod confirm;
mod demo_identity;
mod edge;
mod envelope;
mod fanout;
mod fast_list;
mod fleet_page;
mod forward;
mod handler;
mod held_sessions;
mod http;
mod input_rounds;
mod input_wait;
mod listener;
pub mod metrics;
mod overview;
mod parking;
mod rate_limit;
mod relay;
mod replicas;
mod revision;
pub mod scrape;
mod session;
mod settings;
mod state;
pub mod status;
mod stream_tags;
pub mod tool_tally;
pub mod trace;
mod user_view;
mod view;

pub use edge::{AllowedHosts, AllowedOrigins};
pub use handler::GatewayHandler;
pub use http::router;
pub use listener::{HttpLimits, serve};
pub use replicas::{PeerSource, ReplicaSettings};
pub use settings::{FanOutSettings, GatewaySettings, RateLimitSettings};
pub use state::GatewayState;
