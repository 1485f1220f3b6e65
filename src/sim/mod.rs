//! A simulated Kubernetes cluster's MCP server (`flotilla sim-cluster`):
//! a small stdio server with Kubernetes-style read-only tools (pods, events,
//! logs) over synthetic data that differs per cluster name. It lets the
//! quickstart and the tests run a whole fleet with nothing but cargo.
//! `--writable` adds `delete_pod` (annotated destructive), so tool policies
//! have something to guard.

mod data;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    ErrorData, Implementation, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;

pub use data::{Cluster, Pod};

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct NamespaceArgs {
    /// Namespace to look in; omit for all namespaces.
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct LogArgs {
    /// Pod name, as returned by list_pods.
    pub pod: String,
    /// Namespace of the pod.
    pub namespace: String,
    /// How many of the last lines to return (default 20).
    #[serde(default)]
    pub tail_lines: Option<u32>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PodArgs {
    /// Pod name, as returned by list_pods.
    pub pod: String,
    /// Namespace of the pod.
    pub namespace: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SleepArgs {
    /// Seconds to wait before answering.
    pub seconds: f64,
    /// Also say the most sleep calls that have run at once so far.
    #[serde(default)]
    pub report_concurrency: bool,
}

#[derive(Clone)]
pub struct SimCluster {
    cluster: std::sync::Arc<Cluster>,
    cancelled: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Sleep calls running now, and the most that ever ran at once.
    sleeping: std::sync::Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
    /// Serve an older `list_pods` schema (tests schema divergence in families).
    old_schema: bool,
    /// Pods `delete_pod` removed, as (namespace, name).
    deleted: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>>,
    tool_router: ToolRouter<Self>,
}

/// What a simulated cluster serves beyond its read-only tools.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimOptions {
    /// `sleep` and `cancellations`, for the test suite.
    pub test_tools: bool,
    /// An older `list_pods` schema, for the test suite.
    pub old_schema: bool,
    /// `delete_pod`, a destructive tool.
    pub writable: bool,
}

#[tool_router]
impl SimCluster {
    /// `test_tools` adds `sleep` and `cancellations`, used by the test suite
    /// to observe cancellation and concurrency end to end; the quickstart
    /// leaves them out.
    pub fn new(name: &str, options: SimOptions) -> Self {
        let mut tool_router = Self::tool_router();
        if options.test_tools {
            tool_router += Self::test_router();
        }
        if options.writable {
            tool_router += Self::writable_router();
        }
        Self {
            cluster: std::sync::Arc::new(Cluster::generate(name)),
            cancelled: Default::default(),
            sleeping: Default::default(),
            old_schema: options.old_schema,
            deleted: Default::default(),
            tool_router,
        }
    }

    #[tool(
        description = "List pods with their phase, restarts and node. Optionally filter by namespace.",
        annotations(title = "List pods", read_only_hint = true, open_world_hint = false)
    )]
    fn list_pods(&self, Parameters(args): Parameters<NamespaceArgs>) -> Json<data::PodList> {
        let mut list = self.cluster.pods_in(args.namespace.as_deref());
        if let Ok(deleted) = self.deleted.lock() {
            list.pods
                .retain(|p| !deleted.contains(&(p.namespace.clone(), p.name.clone())));
        }
        Json(list)
    }

    #[tool(
        description = "Recent cluster events (type, reason, object, message), newest first. Optionally filter by namespace.",
        annotations(title = "Get events", read_only_hint = true, open_world_hint = false)
    )]
    fn get_events(&self, Parameters(args): Parameters<NamespaceArgs>) -> String {
        self.cluster.events_text(args.namespace.as_deref())
    }

    #[tool(
        description = "The last lines of a pod's log.",
        annotations(title = "Get pod logs", read_only_hint = true, open_world_hint = false)
    )]
    fn get_pod_logs(&self, Parameters(args): Parameters<LogArgs>) -> Result<String, String> {
        self.cluster
            .logs(&args.namespace, &args.pod, args.tail_lines.unwrap_or(20))
            .ok_or_else(|| {
                format!(
                    "pod {}/{} not found in cluster {}; call list_pods to see the pods",
                    args.namespace, args.pod, self.cluster.name
                )
            })
    }

    #[tool(
        description = "Cluster name, Kubernetes version, provider, region and node count.",
        annotations(title = "Cluster info", read_only_hint = true, open_world_hint = false)
    )]
    fn cluster_info(&self) -> String {
        self.cluster.info_text()
    }
}

#[tool_router(router = writable_router)]
impl SimCluster {
    #[tool(
        description = "Delete a pod. Its workload does not bring it back in this simulation.",
        annotations(
            title = "Delete pod",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    fn delete_pod(&self, Parameters(args): Parameters<PodArgs>) -> Result<String, String> {
        let exists = self
            .cluster
            .pods
            .iter()
            .any(|p| p.namespace == args.namespace && p.name == args.pod);
        let key = (args.namespace.clone(), args.pod.clone());
        let newly = exists
            && self
                .deleted
                .lock()
                .map(|mut deleted| deleted.insert(key))
                .unwrap_or(false);
        if newly {
            Ok(format!(
                "pod {}/{} deleted from cluster {}",
                args.namespace, args.pod, self.cluster.name
            ))
        } else {
            Err(format!(
                "pod {}/{} not found in cluster {}; call list_pods to see the pods",
                args.namespace, args.pod, self.cluster.name
            ))
        }
    }
}

#[tool_router(router = test_router)]
impl SimCluster {
    #[tool(
        description = "Wait, then answer; counts the calls cancelled while waiting, and the most that ran at once.",
        annotations(read_only_hint = true)
    )]
    async fn sleep(
        &self,
        Parameters(args): Parameters<SleepArgs>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> String {
        use std::sync::atomic::Ordering::SeqCst;
        let wait = std::time::Duration::from_secs_f64(args.seconds.clamp(0.0, 600.0));
        let (running, most) = &*self.sleeping;
        /// Counts the call as running until it ends, however it ends.
        struct Running<'a>(&'a std::sync::atomic::AtomicU64);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let now = running.fetch_add(1, SeqCst) + 1;
        let running = Running(running);
        most.fetch_max(now, SeqCst);
        let answer = tokio::select! {
            _ = tokio::time::sleep(wait) => format!("slept {}", args.seconds),
            _ = cancel.cancelled() => {
                self.cancelled.fetch_add(1, SeqCst);
                "cancelled".into()
            }
        };
        drop(running);
        if args.report_concurrency {
            return format!("{answer} (at most {} at once)", most.load(SeqCst));
        }
        answer
    }

    #[tool(description = "How many sleep calls were cancelled so far.")]
    fn cancellations(&self) -> String {
        self.cancelled
            .load(std::sync::atomic::Ordering::SeqCst)
            .to_string()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for SimCluster {
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        let mut tools = self.tool_router.list_all();
        if self.old_schema {
            // An older release called the filter `ns`.
            for tool in tools.iter_mut().filter(|t| t.name == "list_pods") {
                let mut schema = (*tool.input_schema).clone();
                schema.insert(
                    "properties".into(),
                    serde_json::json!({"ns": {"type": "string", "description": "Namespace"}}),
                );
                tool.input_schema = std::sync::Arc::new(schema);
            }
        }
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new(
            "flotilla-sim-cluster",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(format!(
            "Simulated Kubernetes cluster {}",
            self.cluster.name
        ))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let mut summary =
            Resource::new(self.summary_uri(), format!("{} summary", self.cluster.name));
        summary.mime_type = Some("text/plain".into());
        Ok(ListResourcesResult::with_all_items(vec![summary]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        if request.uri != self.summary_uri() {
            return Err(ErrorData::resource_not_found(
                format!("no resource {}", request.uri),
                None,
            ));
        }
        Ok(ReadResourceResponse::Complete(ReadResourceResult::new(
            vec![ResourceContents::text(
                self.cluster.info_text(),
                request.uri,
            )],
        )))
    }
}

impl SimCluster {
    fn summary_uri(&self) -> String {
        format!("cluster://{}/summary", self.cluster.name)
    }
}

/// Serves one simulated cluster on stdin/stdout until the client goes away.
pub async fn serve_stdio(name: &str, options: SimOptions) -> anyhow::Result<()> {
    let service = SimCluster::new(name, options)
        .serve(rmcp::transport::stdio())
        .await?;
    service.waiting().await?;
    Ok(())
}
