//! What the config file sets for the MCP endpoint's behaviour. The bottom
//! of the gateway folder: it names nothing else of it.

/// Behaviour settings of the MCP endpoint.
#[derive(Clone, Debug, Default)]
pub struct GatewaySettings {
    pub fan_out: FanOutSettings,
    /// Per-caller rate limits (`rateLimit`); `None`: off.
    pub rate_limit: Option<RateLimitSettings>,
    /// The MCP endpoint as clients reach it (for reports).
    pub endpoint: String,
    /// Callers may name themselves in headers (`demo_identity`); never with auth on.
    pub demo_identity: bool,
    /// Pings on each agent's connection (`agentHeartbeatSeconds`).
    pub agent_heartbeat: std::time::Duration,
}

/// Fan-out limits, from the gateway's config.
#[derive(Clone, Debug)]
pub struct FanOutSettings {
    /// Members called at once.
    pub max_concurrency: usize,
    /// Upper bound on the merged text, in bytes.
    pub output_budget: usize,
    /// Allow tools not marked read-only to run on several instances at once.
    pub allow_destructive: bool,
}

impl Default for FanOutSettings {
    fn default() -> Self {
        Self {
            max_concurrency: 100,
            output_budget: 100 * 1024,
            allow_destructive: false,
        }
    }
}

/// Per-caller rate limits (`rateLimit` in the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Calls a caller may make per minute, refilled evenly.
    pub calls_per_minute: u32,
    /// Calls a caller may make at once after a quiet spell.
    pub burst: u32,
}
