//! `GET /ui`: the fleet as an operator wants to see it, as one
//! server-rendered HTML page (no JavaScript; it reloads itself every 10 s).
//! Families and their instances (state, tool count, protocol version, last
//! error, labels, aliases), servers outside families, manifest problems,
//! and per exposed tool the calls, errors and latency since start and over
//! the last five minutes (from `tool_tally.rs`).
//!
//! [`collect`] reads the gateway into a [`Page`]; [`render`] turns a page
//! into HTML and is pure, so tests render hostile pages without a gateway.
//! Every string that came from a manifest, an upstream or the catalog is
//! escaped; `http.rs` serves it behind the same login as `/status`, with a
//! Content-Security-Policy that allows inline styles and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::state::GatewayState;
use super::status::server_status;
use super::tool_tally::{Counts, ToolStats, WINDOW};
use crate::api::ServerState;
use crate::auth::html::escape;
use crate::catalog::family::DEFAULT_INSTANCE_ARG;
use crate::fleet::agents::AgentPresence;

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 10;
/// Longer error texts are cut (an upstream chooses what it sends).
const MAX_ERROR_CHARS: usize = 600;

/// Everything the page shows, read at one moment.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// When it was read (RFC 3339, UTC).
    pub generated: String,
    pub uptime: Duration,
    pub families: Vec<FamilyView>,
    /// Servers outside any family, by name.
    pub servers: Vec<ServerRow>,
    /// Invalid manifests, as `/status` lists them.
    pub problems: Vec<String>,
    /// Exposed tools and tools called since start, by name.
    pub tools: Vec<ToolRow>,
    /// Calls of tools beyond the tally's bound.
    pub untracked_calls: u64,
    pub exposed_tools: usize,
    pub clients: usize,
    /// Agents connected to this replica, by name.
    pub agents: Vec<AgentPresence>,
    /// Servers of `type: agent` declared (the agents section shows when any are).
    pub agent_servers: usize,
}

/// One family and its members, sorted by instance.
#[derive(Clone, Debug, Default)]
pub struct FamilyView {
    pub name: String,
    pub instance_arg: String,
    pub members: Vec<ServerRow>,
}

/// One server as the page shows it.
#[derive(Clone, Debug)]
pub struct ServerRow {
    pub name: String,
    pub server_type: &'static str,
    pub instance: Option<String>,
    pub aliases: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub state: ServerState,
    pub tool_count: u32,
    pub protocol_version: Option<String>,
    pub last_error: Option<String>,
    pub last_connected: Option<String>,
    /// Where it was declared (`file#document`).
    pub origin: String,
    /// Conditions beyond readiness (name collisions, schema divergences,
    /// invalid specs), as `reason: message`.
    pub warnings: Vec<String>,
}

/// One tool's row.
#[derive(Clone, Debug, Default)]
pub struct ToolRow {
    pub stats: ToolStats,
    /// The server or family that serves it; empty when the shared catalog
    /// does not list it (it was removed, or only logged-in users' own
    /// upstreams serve it).
    pub served_by: String,
}

/// Reads the gateway's fleet, catalog and tally.
pub fn collect(state: &GatewayState) -> Page {
    let catalog = state.catalog();
    let problems = state.fleet.problems();
    let mut families: BTreeMap<String, FamilyView> = BTreeMap::new();
    let mut servers = Vec::new();
    for upstream in state.fleet.upstreams() {
        let desired = upstream.desired();
        let health = upstream.health();
        let status = server_status(&upstream, &catalog, &problems);
        let family = desired.spec.family.as_ref();
        let row = ServerRow {
            name: upstream.name.to_string(),
            server_type: desired.spec.server_type.as_str(),
            instance: status.instance.clone(),
            aliases: family.map(|f| f.aliases.clone()).unwrap_or_default(),
            labels: desired.labels.clone(),
            state: status.state,
            tool_count: status.tool_count,
            protocol_version: health.protocol_version.clone(),
            last_error: status.last_error.clone(),
            last_connected: health
                .last_connected
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            origin: desired.origin.clone(),
            warnings: status
                .conditions
                .iter()
                .filter(|c| c.condition_type != "Ready")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .collect(),
        };
        match family {
            Some(family) => {
                let view = families
                    .entry(family.name.clone())
                    .or_insert_with(|| FamilyView {
                        name: family.name.clone(),
                        instance_arg: catalog
                            .families
                            .get(&family.name)
                            .map(|f| f.instance_arg.clone())
                            .or_else(|| family.instance_arg.clone())
                            .unwrap_or_else(|| DEFAULT_INSTANCE_ARG.to_string()),
                        members: Vec::new(),
                    });
                view.members.push(row);
            }
            None => servers.push(row),
        }
    }
    let mut families: Vec<FamilyView> = families.into_values().collect();
    for family in &mut families {
        family
            .members
            .sort_by(|a, b| (&a.instance, &a.name).cmp(&(&b.instance, &b.name)));
    }
    servers.sort_by(|a, b| a.name.cmp(&b.name));

    let tally = state.metrics.tally.snapshot();
    let mut tools: BTreeMap<String, ToolRow> = catalog
        .tools
        .iter()
        .map(|tool| {
            let name = tool.name.to_string();
            let served_by = if let Some(route) = catalog.tool(&name) {
                route.server.to_string()
            } else if let Some(family) = catalog.family_tool(&name) {
                format!("family {}", family.family)
            } else {
                String::new()
            };
            let row = ToolRow {
                stats: ToolStats {
                    tool: name.clone(),
                    ..ToolStats::default()
                },
                served_by,
            };
            (name, row)
        })
        .collect();
    for stats in tally.tools {
        match tools.get_mut(&stats.tool) {
            Some(row) => row.stats = stats,
            None => {
                tools.insert(
                    stats.tool.clone(),
                    ToolRow {
                        stats,
                        served_by: String::new(),
                    },
                );
            }
        }
    }
    Page {
        generated: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        uptime: state.metrics.tally.uptime(),
        families,
        servers,
        problems: problems.iter().map(|p| p.to_string()).collect(),
        tools: tools.into_values().collect(),
        untracked_calls: tally.untracked,
        exposed_tools: catalog.tools.len(),
        clients: state.clients.count(),
        agents: state.fleet.agents().connected(),
        agent_servers: state
            .fleet
            .upstreams()
            .iter()
            .filter(|u| u.desired().spec.server_type == crate::api::ServerType::Agent)
            .count(),
    }
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#d0d7de}
main{padding:8px 24px 32px}
h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
h3 small{font-weight:normal;color:#57606a}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{background:#f6f8fa;font-weight:600;white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.chip{display:inline-block;background:#eaeef2;border-radius:10px;padding:0 7px;margin:1px 2px 1px 0;font-size:12px}
.state{display:inline-block;border-radius:10px;padding:1px 9px;font-weight:600;white-space:nowrap}
.s-Connected{background:#dafbe1;color:#116329}
.s-Connecting{background:#fff8c5;color:#7d4e00}
.s-Failed,.s-Invalid{background:#ffebe9;color:#a40e26}
.s-AuthRequired{background:#fbefff;color:#6e40c9}
.s-Stopped{background:#eaeef2;color:#57606a}
.err{color:#a40e26;word-break:break-word;max-width:38em}
.warn{color:#7d4e00;word-break:break-word}
.muted{color:#57606a}
.bad{color:#a40e26;font-weight:600}
";

/// The page as HTML.
pub fn render(page: &Page) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let all: Vec<&ServerRow> = page
        .families
        .iter()
        .flat_map(|f| f.members.iter())
        .chain(page.servers.iter())
        .collect();
    let connected = all
        .iter()
        .filter(|s| s.state == ServerState::Connected)
        .count();
    // Writing into a String cannot fail.
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Flotilla fleet</title><style>{STYLE}</style></head><body>\
         <header><h1>Flotilla fleet</h1><p id=\"summary\">{} of {} servers connected \
         &middot; {} tools exposed &middot; {} client sessions &middot; up {} \
         &middot; read at {} &middot; reloads every {REFRESH_SECONDS} s</p></header><main>",
        connected,
        all.len(),
        page.exposed_tools,
        page.clients,
        uptime(page.uptime),
        escape(&page.generated),
    );

    html.push_str("<section id=\"families\"><h2>Families</h2>");
    if page.families.is_empty() {
        html.push_str("<p class=\"muted\">No families.</p>");
    }
    for family in &page.families {
        let up = family
            .members
            .iter()
            .filter(|m| m.state == ServerState::Connected)
            .count();
        let _ = write!(
            html,
            "<h3>{} <small>&middot; instance argument <code>{}</code> &middot; {up} of {} connected</small></h3>",
            escape(&family.name),
            escape(&family.instance_arg),
            family.members.len(),
        );
        server_table(&mut html, &family.members, true);
    }
    html.push_str("</section>");

    html.push_str("<section id=\"servers\"><h2>Servers outside families</h2>");
    if page.servers.is_empty() {
        html.push_str("<p class=\"muted\">None.</p>");
    } else {
        server_table(&mut html, &page.servers, false);
    }
    html.push_str("</section>");

    agent_table(&mut html, page);

    html.push_str("<section id=\"problems\"><h2>Manifest problems</h2>");
    if page.problems.is_empty() {
        html.push_str("<p class=\"muted\">None.</p>");
    } else {
        html.push_str("<ul>");
        for problem in &page.problems {
            let _ = write!(html, "<li class=\"err\">{}</li>", escape(problem));
        }
        html.push_str("</ul>");
    }
    html.push_str("</section>");

    tool_table(&mut html, page);
    html.push_str("</main></body></html>\n");
    html
}

/// The agents connected now, when the fleet has servers behind agents.
fn agent_table(html: &mut String, page: &Page) {
    if page.agents.is_empty() && page.agent_servers == 0 {
        return;
    }
    html.push_str("<section id=\"agents\"><h2>Agents</h2>");
    if page.agents.is_empty() {
        html.push_str("<p class=\"muted\">None connected.</p></section>");
        return;
    }
    html.push_str(
        "<table><tr><th>Agent</th><th>Servers it offers</th><th class=\"n\">Sessions</th></tr>",
    );
    for agent in &page.agents {
        let offers: String = agent
            .servers
            .iter()
            .map(|s| format!("<span class=\"chip\">{}</span>", escape(s)))
            .collect();
        let _ = write!(
            html,
            "<tr><td><strong>{}</strong></td><td>{offers}</td><td class=\"n\">{}</td></tr>",
            escape(&agent.name),
            agent.sessions
        );
    }
    html.push_str("</table></section>");
}

fn server_table(html: &mut String, rows: &[ServerRow], family: bool) {
    html.push_str("<table><thead><tr>");
    if family {
        html.push_str("<th>Instance</th>");
    }
    html.push_str("<th>Server</th><th>State</th><th class=\"n\">Tools</th><th>Protocol</th>");
    if family {
        html.push_str("<th>Aliases</th>");
    }
    html.push_str("<th>Labels</th><th>Last error</th></tr></thead><tbody>");
    for row in rows {
        let _ = write!(html, "<tr data-server=\"{}\">", escape(&row.name));
        if family {
            let _ = write!(
                html,
                "<td><strong>{}</strong></td>",
                escape(row.instance.as_deref().unwrap_or("-"))
            );
        }
        let _ = write!(
            html,
            "<td><code>{}</code><br><span class=\"muted\">{} &middot; {}</span></td>",
            escape(&row.name),
            escape(row.server_type),
            escape(&row.origin),
        );
        let state = row.state.as_str();
        let _ = write!(
            html,
            "<td><span class=\"state s-{state}\">{} {state}</span>",
            state_mark(row.state)
        );
        if let Some(since) = &row.last_connected {
            let _ = write!(
                html,
                "<br><span class=\"muted\">last connected {}</span>",
                escape(since)
            );
        }
        let _ = write!(
            html,
            "</td><td class=\"n\">{}</td><td>{}</td>",
            row.tool_count,
            escape(row.protocol_version.as_deref().unwrap_or("-")),
        );
        if family {
            html.push_str("<td>");
            for alias in &row.aliases {
                let _ = write!(html, "<span class=\"chip\">{}</span>", escape(alias));
            }
            html.push_str("</td>");
        }
        html.push_str("<td>");
        for (key, value) in &row.labels {
            let _ = write!(
                html,
                "<span class=\"chip\">{}={}</span>",
                escape(key),
                escape(value)
            );
        }
        html.push_str("</td><td>");
        if let Some(error) = &row.last_error {
            let _ = write!(html, "<div class=\"err\">{}</div>", escape(&cut(error)));
        }
        for warning in &row.warnings {
            let _ = write!(html, "<div class=\"warn\">{}</div>", escape(&cut(warning)));
        }
        html.push_str("</td></tr>");
    }
    html.push_str("</tbody></table>");
}

fn tool_table(html: &mut String, page: &Page) {
    let window = WINDOW.as_secs() / 60;
    let _ = write!(
        html,
        "<section id=\"tools\"><h2>Tool calls</h2><p class=\"muted\">Upstream calls per exposed \
         tool (a call fanned out to several instances counts once per instance). Errors are \
         tool errors, protocol errors, timeouts, unreachable upstreams and denials; p50 and p95 \
         are the upper bounds of the latency buckets holding them.</p>\
         <table><thead><tr><th rowspan=\"2\">Tool</th><th rowspan=\"2\">Served by</th>\
         <th colspan=\"5\">Last {window} minutes</th><th colspan=\"6\">Since start</th></tr>\
         <tr><th class=\"n\">Calls/min</th><th class=\"n\">Calls</th><th class=\"n\">Errors</th>\
         <th class=\"n\">Error rate</th><th class=\"n\">Mean</th><th class=\"n\">Calls</th><th class=\"n\">Errors</th>\
         <th class=\"n\">Error rate</th><th class=\"n\">Mean</th><th class=\"n\">p50</th>\
         <th class=\"n\">p95</th></tr></thead><tbody>"
    );
    if page.tools.is_empty() {
        html.push_str("<tr><td colspan=\"13\" class=\"muted\">No tools.</td></tr>");
    }
    for row in &page.tools {
        let stats = &row.stats;
        let served_by = if row.served_by.is_empty() {
            "<span class=\"muted\">not in the shared catalog</span>".to_string()
        } else {
            escape(&row.served_by)
        };
        let per_minute = stats.recent.calls as f64 / (WINDOW.as_secs_f64() / 60.0);
        let _ = write!(
            html,
            "<tr data-tool=\"{}\"><td><code>{}</code></td><td>{served_by}</td>\
             <td class=\"n\">{per_minute:.1}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>{}\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>{}<td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&stats.tool),
            escape(&stats.tool),
            stats.recent.calls,
            stats.recent.errors,
            rate_cell(&stats.recent),
            stats.recent.mean().map(duration).unwrap_or_else(dash),
            stats.total.calls,
            stats.total.errors,
            rate_cell(&stats.total),
            stats.total.mean().map(duration).unwrap_or_else(dash),
            bound(stats.total.calls, stats.p50),
            bound(stats.total.calls, stats.p95),
        );
    }
    html.push_str("</tbody></table>");
    if page.untracked_calls > 0 {
        let _ = write!(
            html,
            "<p class=\"warn\">{} calls of tools beyond the {} tracked are not broken down here \
             (see <code>/metrics</code>).</p>",
            page.untracked_calls,
            super::tool_tally::MAX_TOOLS
        );
    }
    html.push_str("</section>");
}

/// A symbol beside the colour, so the state reads without colour too.
fn state_mark(state: ServerState) -> &'static str {
    match state {
        ServerState::Connected => "&#9679;",
        ServerState::Connecting => "&#9684;",
        ServerState::Failed | ServerState::Invalid => "&#10006;",
        ServerState::AuthRequired => "&#9888;",
        ServerState::Stopped => "&#9675;",
    }
}

fn rate_cell(counts: &Counts) -> String {
    match counts.error_rate() {
        None => "<td class=\"n muted\">-</td>".to_string(),
        Some(rate) if rate > 0.0 => format!("<td class=\"n bad\">{:.1}%</td>", rate * 100.0),
        Some(_) => "<td class=\"n\">0%</td>".to_string(),
    }
}

fn dash() -> String {
    "-".to_string()
}

fn bound(calls: u64, bound: Option<Duration>) -> String {
    match (calls, bound) {
        (0, _) => dash(),
        (_, Some(bound)) => format!("&le; {}", duration(bound)),
        (_, None) => "&gt; 60 s".to_string(),
    }
}

fn duration(took: Duration) -> String {
    let ms = took.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.1} s", ms / 1e3)
    }
}

fn uptime(up: Duration) -> String {
    let s = up.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

/// At most [`MAX_ERROR_CHARS`] characters, marked when cut.
fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>&";

    fn server(name: &str, instance: Option<&str>, state: ServerState) -> ServerRow {
        ServerRow {
            name: name.to_string(),
            server_type: "stdio",
            instance: instance.map(str::to_string),
            aliases: Vec::new(),
            labels: BTreeMap::new(),
            state,
            tool_count: 4,
            protocol_version: Some("2025-11-25".into()),
            last_error: None,
            last_connected: None,
            origin: "a.yaml#0".into(),
            warnings: Vec::new(),
        }
    }

    fn page() -> Page {
        let mut a = server(
            "cluster-a-mcp-kubernetes",
            Some("cluster-a"),
            ServerState::Connected,
        );
        a.aliases = vec!["prod-eu".into()];
        a.labels = BTreeMap::from([("env".into(), "prod".into())]);
        let mut b = server(
            "cluster-b-mcp-kubernetes",
            Some("cluster-b"),
            ServerState::Failed,
        );
        b.last_error = Some("connection refused".into());
        let stopped = server("legacy", None, ServerState::Stopped);
        Page {
            generated: "2026-01-01T00:00:00Z".into(),
            uptime: Duration::from_secs(4000),
            families: vec![FamilyView {
                name: "kubernetes".into(),
                instance_arg: "management_cluster".into(),
                members: vec![a, b],
            }],
            servers: vec![stopped],
            problems: vec!["bad.yaml#0: spec.comand: unknown field".into()],
            tools: vec![ToolRow {
                stats: ToolStats {
                    tool: "x_kubernetes_list_pods".into(),
                    total: Counts {
                        calls: 4,
                        errors: 1,
                        micros: 8_000,
                    },
                    recent: Counts {
                        calls: 2,
                        errors: 0,
                        micros: 4_000,
                    },
                    p50: Some(Duration::from_micros(2_500)),
                    p95: Some(Duration::from_millis(5)),
                },
                served_by: "family kubernetes".into(),
            }],
            untracked_calls: 0,
            exposed_tools: 5,
            clients: 1,
            agents: Vec::new(),
            agent_servers: 0,
        }
    }

    #[test]
    fn agents_are_shown_only_where_the_fleet_has_servers_behind_them() {
        assert!(
            !render(&page()).contains("id=\"agents\""),
            "no agent servers, no section"
        );
        let mut waiting = page();
        waiting.agent_servers = 2;
        assert!(render(&waiting).contains("<h2>Agents</h2><p class=\"muted\">None connected.</p>"));
        let mut connected = waiting;
        connected.agents = vec![AgentPresence {
            name: HOSTILE.into(),
            servers: vec!["kubernetes".into(), HOSTILE.into()],
            sessions: 2,
        }];
        let html = render(&connected);
        assert!(
            html.contains("<span class=\"chip\">kubernetes</span>"),
            "{html}"
        );
        assert!(
            html.contains("<td class=\"n\">2</td></tr></table></section>"),
            "{html}"
        );
        assert!(!html.contains("<script>alert"), "escaped: {html}");
    }

    #[test]
    fn shows_families_instances_states_and_tool_numbers() {
        let html = render(&page());
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        assert!(html.contains("1 of 3 servers connected"), "{html}");
        assert!(html.contains("<h3>kubernetes <small>"), "{html}");
        assert!(html.contains("<code>management_cluster</code>"), "{html}");
        assert!(html.contains("1 of 2 connected"), "{html}");
        assert!(html.contains("<strong>cluster-a</strong>"), "{html}");
        assert!(
            html.contains("<span class=\"state s-Connected\">&#9679; Connected</span>"),
            "{html}"
        );
        assert!(html.contains("s-Failed\">&#10006; Failed"), "{html}");
        assert!(html.contains("s-Stopped\">&#9675; Stopped"), "{html}");
        assert!(
            html.contains("<span class=\"chip\">prod-eu</span>"),
            "{html}"
        );
        assert!(
            html.contains("<span class=\"chip\">env=prod</span>"),
            "{html}"
        );
        assert!(html.contains("connection refused"), "{html}");
        assert!(html.contains("spec.comand: unknown field"), "{html}");
        assert!(html.contains("<section id=\"servers\"><h2>Servers outside families</h2><table>"));
        // 2 calls in 5 minutes: 0.4 a minute; 1 error in 4: 25%.
        assert!(
            html.contains("<td class=\"n\">0.4</td><td class=\"n\">2</td><td class=\"n\">0</td><td class=\"n\">0%</td><td class=\"n\">2.0 ms</td>"),
            "{html}"
        );
        assert!(html.contains("<td class=\"n bad\">25.0%</td>"), "{html}");
        assert!(html.contains("<td class=\"n\">2.0 ms</td>"), "{html}");
        assert!(html.contains("&le; 2.5 ms"), "{html}");
        assert!(html.contains("up 1 h 6 min"), "{html}");
        assert!(!html.contains("<script"), "no script of its own: {html}");
    }

    #[test]
    fn escapes_everything_that_came_from_outside() {
        let mut page = page();
        let mut hostile = server(HOSTILE, Some(HOSTILE), ServerState::Failed);
        hostile.last_error = Some(HOSTILE.into());
        hostile.labels = BTreeMap::from([(HOSTILE.into(), HOSTILE.into())]);
        hostile.aliases = vec![HOSTILE.into()];
        hostile.protocol_version = Some(HOSTILE.into());
        hostile.origin = HOSTILE.into();
        hostile.warnings = vec![HOSTILE.into()];
        page.families.push(FamilyView {
            name: HOSTILE.into(),
            instance_arg: HOSTILE.into(),
            members: vec![hostile.clone()],
        });
        page.servers.push(hostile);
        page.problems.push(HOSTILE.into());
        page.tools.push(ToolRow {
            stats: ToolStats {
                tool: HOSTILE.into(),
                ..ToolStats::default()
            },
            served_by: HOSTILE.into(),
        });
        page.generated = HOSTILE.into();
        let html = render(&page);
        for raw in ["<script", "<img", "\"><img", "'x'", "alert(1)>"] {
            assert!(!html.contains(raw), "{raw} unescaped in {html}");
        }
        assert!(
            html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;&lt;img"),
            "{html}"
        );
    }

    #[test]
    fn an_empty_fleet_says_so_and_tools_without_calls_show_dashes() {
        let page = Page {
            tools: vec![ToolRow {
                stats: ToolStats {
                    tool: "x_a".into(),
                    ..ToolStats::default()
                },
                served_by: String::new(),
            }],
            untracked_calls: 7,
            ..Page::default()
        };
        let html = render(&page);
        assert!(html.contains("No families."), "{html}");
        assert!(html.contains("0 of 0 servers connected"), "{html}");
        assert!(html.contains("not in the shared catalog"), "{html}");
        assert!(html.contains("<td class=\"n muted\">-</td>"), "{html}");
        assert!(
            html.contains("7 calls of tools beyond the 10000 tracked"),
            "{html}"
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_CHARS + 10);
        let cut = cut(&long);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(super::cut("short"), "short");
    }
}
