//! The process's logging and trace export: log lines to stderr (with the
//! spans they happen in, so a line inside a request names its trace id,
//! method and tool), and, when `tracing.otlpEndpoint` is set, every span
//! exported over OTLP/HTTP (protobuf) through the OpenTelemetry SDK.
//!
//! `main` reads the config file's `tracing` section before installing the
//! subscriber; with tracing off the OTLP layer is absent altogether.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How often finished spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `tracing` in the config file, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is added).
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans (default `flotilla`).
    pub service_name: String,
    /// Share of new traces recorded (0.0-1.0, default 1.0); a trace the
    /// client started follows the client's sampling decision.
    pub sample_ratio: f64,
}

/// The installed subscriber, and the trace exporter when there is one.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: `default_filter` unless `RUST_LOG`
    /// says otherwise, lines to stderr (stdout carries MCP for
    /// `sim-cluster` and the audit log for `serve`), and spans to the OTLP
    /// collector when `tracing` is given. Needs the Tokio runtime (the
    /// exporter's requests run on it).
    pub fn init(default_filter: &str, tracing: Option<&TracingSettings>) -> anyhow::Result<Self> {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
        let lines = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter);
        let (provider, spans) = match tracing {
            Some(settings) => {
                let provider = provider(settings)?;
                // Only the gateway's own spans: a dependency's debug spans
                // would cost on every request and tell an operator nothing.
                let layer = tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("flotilla"))
                    .with_filter(EnvFilter::new("flotilla=info"));
                (Some(provider), Some(layer))
            }
            None => (None, None),
        };
        let _ = tracing_subscriber::registry()
            .with(spans)
            .with(lines)
            .try_init();
        if let Some(settings) = tracing {
            tracing::info!(
                endpoint = settings.otlp_endpoint,
                ratio = settings.sample_ratio,
                "exporting traces over OTLP"
            );
        }
        Ok(Self { provider })
    }

    /// Sends the spans still buffered (at shutdown).
    pub async fn flush(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The SDK waits for its export thread, whose request runs on this runtime.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Err(error)) => tracing::warn!(%error, "sending the last spans failed"),
            Err(error) => tracing::warn!(%error, "sending the last spans failed"),
            Ok(Ok(())) => {}
        }
    }
}

/// The SDK's tracer provider exporting to `settings.otlp_endpoint`.
fn provider(settings: &TracingSettings) -> anyhow::Result<SdkTracerProvider> {
    let endpoint = format!("{}/v1/traces", settings.otlp_endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(&endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(RuntimeClient::new()?)
        .build()
        .with_context(|| format!("tracing.otlpEndpoint {endpoint:?} is not usable"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(EXPORT_EVERY)
                .build(),
        )
        .build();
    let ratio = settings.sample_ratio.clamp(0.0, 1.0);
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build())
}

/// The exporter's HTTP client: the gateway's reqwest, run on the Tokio
/// runtime it was built in (the SDK's batch processor calls from a thread
/// of its own, where reqwest has no runtime).
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl RuntimeClient {
    fn new() -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(EXPORT_TIMEOUT)
            .build()
            .context("building the trace exporter's HTTP client")?;
        let runtime = tokio::runtime::Handle::try_current()
            .context("the trace exporter needs the async runtime")?;
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            let mut answer = Response::builder().status(status);
            if let Some(all) = answer.headers_mut() {
                *all = headers;
            }
            Ok::<_, HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}
