//! SSO benchmark (`cargo bench --bench sso`): `tools/call` through the
//! gateway to a server reached with an exchanged token (per-user session,
//! exchanged-token cache hit) against the same call to a server reached with
//! a static `Authorization` header, measured side by side in one run, plus
//! the same call sent straight to the upstream. The identity providers are
//! the test peers (npm `oidc-provider` as central IdP and cluster Dex); the
//! upstream is this binary re-run with `--upstream` (the echo server shared
//! with the gateway benchmark).

#[path = "support/client.rs"]
#[allow(dead_code)] // shared with the gateway bench, which uses the rest
mod client;
#[path = "../tests/integration/common/mod.rs"]
mod common;
#[path = "support/echo_child.rs"]
mod echo_child;
#[path = "support/upstream.rs"]
mod upstream;

use client::{Request, Samples, http_client, sequential};
use common::idp::{Idp, gateway_login};
use common::{Gateway, http_manifest, write_manifest};

const ROUNDS: usize = 5;
const CALLS_PER_ROUND: usize = 1000;
const WARMUP: usize = 300;
const GW_SECRET: &str = "bench-gateway-secret";
const DEX_SECRET: &str = "bench-dex-secret";

fn main() {
    if echo_child::serve_if_asked() {
        return;
    }
    if let Err(error) = run() {
        eprintln!("sso bench failed: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let logs = tempfile::tempdir().map_err(|e| e.to_string())?;
    let manifests = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (upstream, port) = echo_child::start(logs.path())?;
    let central = Idp::central(
        logs.path(),
        &[("flotilla", GW_SECRET, &["http://127.0.0.1/oauth/callback"])],
        3600,
    );
    let dex = Idp::cluster(
        logs.path(),
        "dex",
        &central.issuer,
        &[("flotilla-x", DEX_SECRET)],
        "cluster-x",
        3600,
        None,
    );
    let fleet = [
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: dex\n  namespace: default\nstringData:\n  client-id: flotilla-x\n  client-secret: {DEX_SECRET}\n---\n"
        ),
        http_manifest(
            "exchanged",
            &format!("http://127.0.0.1:{port}/s/0/mcp"),
            &format!(
                "  auth:\n    tokenExchange:\n      enabled: true\n      dexTokenEndpoint: {}\n      connectorId: central\n      clientCredentialsSecretRef:\n        name: dex\n",
                dex.token_endpoint()
            ),
        ),
        "---\n".into(),
        http_manifest(
            "static",
            &format!("http://127.0.0.1:{port}/s/1/mcp"),
            "  headers:\n    Authorization: Bearer static-token\n",
        ),
    ]
    .concat();
    write_manifest(manifests.path(), "fleet.yaml", &fleet);
    std::fs::write(logs.path().join("oidc-secret"), GW_SECRET).map_err(|e| e.to_string())?;
    let config = logs.path().join("flotilla.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  oidc:\n    issuer: {}\n    clientId: flotilla\n    clientSecretFile: oidc-secret\n",
            central.issuer
        ),
    )
    .map_err(|e| e.to_string())?;
    let gateway = Gateway::start_with(
        manifests.path(),
        logs.path(),
        &["--config", config.to_str().unwrap_or_default()],
    );
    let login = gateway_login(&format!("http://127.0.0.1:{}", gateway.port), "alice");
    let gateway_url = gateway.url();
    let direct_url = format!("http://127.0.0.1:{port}/s/1/mcp");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (sso, fixed, direct) = runtime.block_on(async {
        let http = http_client();
        let sso = Request::call(&gateway_url, "x_exchanged_echo").with_bearer(&login.access_token);
        let fixed = Request::call(&gateway_url, "x_static_echo").with_bearer(&login.access_token);
        let direct = Request::call(&direct_url, "echo").with_bearer("static-token");
        for request in [&sso, &fixed, &direct] {
            sequential(&http, request, WARMUP).await?;
        }
        let (mut a, mut b, mut c) = (Samples(vec![]), Samples(vec![]), Samples(vec![]));
        // Interleaved rounds, so drift on the machine hits all three alike.
        for _ in 0..ROUNDS {
            a.extend(&sequential(&http, &sso, CALLS_PER_ROUND).await?);
            b.extend(&sequential(&http, &fixed, CALLS_PER_ROUND).await?);
            c.extend(&sequential(&http, &direct, CALLS_PER_ROUND).await?);
        }
        Ok::<_, String>((a, b, c))
    })?;
    let exchanges = dex.stats()["exchanges_total"].as_u64().unwrap_or(0);
    println!(
        "SSO benchmark: tools/call, sequential, {} calls each",
        sso.len()
    );
    println!("{:<44} {:>9} {:>9}", "", "p50 µs", "p99 µs");
    for (name, samples) in [
        ("gateway → exchanged-token server (cache hit)", &sso),
        ("gateway → static-token server", &fixed),
        ("direct to the upstream, static token", &direct),
    ] {
        println!(
            "{name:<44} {:>9.0} {:>9.0}",
            samples.pct_us(50.0),
            samples.pct_us(99.0)
        );
    }
    println!(
        "exchanged / static through the gateway (p50): {:.2}",
        sso.pct_us(50.0) / fixed.pct_us(50.0)
    );
    println!(
        "added by SSO per call (p50): {:.0} µs",
        sso.pct_us(50.0) - fixed.pct_us(50.0)
    );
    println!("token exchanges at the cluster's Dex during the run: {exchanges}");
    drop(gateway);
    drop(upstream);
    Ok(())
}
