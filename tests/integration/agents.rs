//! Agents behind NAT: `flotilla agent` processes dial the gateway and serve
//! their local servers over that one connection. Two agents fold into one
//! family; calls, fan-out, progress and elicitation travel through them;
//! killing an agent marks its members unreachable and its return restores
//! them; a wrong credential and an agent claiming another cluster's name are
//! refused; the agent listens on no port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::nginx::Nginx;
use crate::common::sa_issuer::SaIssuer;
use crate::common::*;

/// One cluster's agent: its manifest directory and credential file.
pub(crate) struct Cluster {
    name: String,
    dir: tempfile::TempDir,
    token_file: PathBuf,
}

impl Cluster {
    /// A cluster whose agent serves a simulated cluster (with test tools)
    /// named `<name>-mcp-kubernetes`, and holds `credential`.
    pub(crate) fn new(name: &str, credential: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("agent dir");
        let manifests = dir.path().join("servers");
        std::fs::create_dir(&manifests).expect("servers dir");
        write_manifest(
            &manifests,
            "kubernetes.yaml",
            &sim_manifest(&format!("{name}-mcp-kubernetes"), name, "")
                .replace("[sim-cluster,", "[sim-cluster, --test-tools,"),
        );
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, credential).expect("token file");
        Cluster {
            name: name.to_string(),
            dir,
            token_file,
        }
    }

    fn servers(&self) -> PathBuf {
        self.dir.path().join("servers")
    }

    /// Starts `flotilla agent` as `as_name` (normally the cluster's own name).
    fn agent_as(&self, gateway: &Gateway, as_name: &str) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args(["agent", "--gateway"])
            .arg(format!("http://127.0.0.1:{}/", gateway.port))
            .args(["--name", as_name, "--heartbeat-seconds", "2"])
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--manifests")
            .arg(self.servers())
            .env("RUST_LOG", "info,flotilla=debug");
        Proc::spawn(&format!("agent-{as_name}"), cmd, gateway.logs())
    }

    pub(crate) fn agent(&self, gateway: &Gateway) -> Proc {
        self.agent_as(gateway, &self.name)
    }

    /// [`Cluster::agent`], once the gateway shows its server Connected.
    pub(crate) fn connected_agent(&self, gateway: &Gateway) -> Proc {
        let agent = self.agent(gateway);
        gateway.wait_state(
            &format!("{}-mcp-kubernetes", self.name),
            "Connected",
            Duration::from_secs(20),
        );
        agent
    }
}

/// The gateway's MCPServer for `cluster`'s simulated cluster behind its
/// agent, with the agent's credential in a Secret beside it.
fn declared(cluster: &str, credential: &str, labels: &[(&str, &str)]) -> String {
    let labels: String = labels
        .iter()
        .map(|(k, v)| format!("    {k}: {v}\n"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: agent-{cluster}\nstringData:\n  token: {credential}\n---\n\
         apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {cluster}-mcp-kubernetes\n  labels:\n{labels}spec:\n  type: agent\n  timeout: 10\n  agent:\n    name: {cluster}\n    credentialFrom: {{secretName: agent-{cluster}, key: token}}\n  family:\n    name: kubernetes\n    instanceArg: management_cluster\n"
    )
}

const CREDENTIAL_A: &str = "a-credential-for-cluster-a-0123456789";
const CREDENTIAL_B: &str = "b-credential-for-cluster-b-9876543210";

fn two_cluster_gateway() -> Gateway {
    Fleet::new()
        .manifest(
            "a.yaml",
            &declared("cluster-a", CREDENTIAL_A, &[("env", "prod")]),
        )
        .manifest(
            "b.yaml",
            &declared("cluster-b", CREDENTIAL_B, &[("env", "staging")]),
        )
        .start()
}

/// `x_kubernetes_cluster_info` on the instances `which` names.
async fn cluster_info(client: &Client, which: &str) -> rmcp::model::CallToolResult {
    call(
        client,
        "x_kubernetes_cluster_info",
        json!({"management_cluster": which}),
    )
    .await
}

/// server-everything's (tools under `prefix`) four progress steps of a
/// long-running call reach the client, and its elicitation in the middle of
/// a call reaches the client and the client's answer reaches it.
async fn progress_and_a_question_arrive(client: &Client, handler: &TestClient, prefix: &str) {
    let long = format!("{prefix}trigger-long-running-operation");
    let result = call(client, &long, json!({"duration": 1, "steps": 4})).await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let progress = eventually(Duration::from_secs(5), "four progress steps", || async {
        let progress = handler.progress.lock().unwrap().clone();
        (progress.len() >= 4).then_some(progress)
    })
    .await;
    assert_eq!(progress, vec![1.0, 2.0, 3.0, 4.0]);
    // server-everything lists the tools that ask the client once a client that can answer has connected.
    let ask = format!("{prefix}trigger-elicitation-request");
    wait_tool(client, &ask).await;
    let elicited = call(client, &ask, json!({})).await;
    assert!(
        text_of(&elicited).contains("Ada"),
        "the client's answer reached the server behind the agent: {}",
        text_of(&elicited)
    );
}

/// Starts `cluster`'s agent (serving server-everything as `everything`)
/// and, once the gateway shows it Connected, a client that answers the
/// server's questions, with the server's tools listed.
async fn everything_behind(cluster: &Cluster, gateway: &Gateway) -> (Proc, TestClient, Client) {
    let agent = cluster.agent(gateway);
    gateway.wait_state("everything", "Connected", Duration::from_secs(30));
    let handler = TestClient::default();
    let client = connect_with(&gateway.url(), handler.clone()).await;
    wait_tool(&client, "x_everything_trigger-long-running-operation").await;
    (agent, handler, client)
}

/// TCP ports process `pid` listens on (from /proc).
fn listening(pid: i32) -> Vec<u16> {
    listening_ports(pid)
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_fold_into_one_family_and_serve_calls_and_fan_out_while_listening_on_nothing() {
    let gateway = two_cluster_gateway();
    let (a, b) = (
        Cluster::new("cluster-a", CREDENTIAL_A),
        Cluster::new("cluster-b", CREDENTIAL_B),
    );
    // Both dial at once; each is then awaited.
    let agent_a = a.agent(&gateway);
    let agent_b = b.agent(&gateway);
    for server in ["cluster-a-mcp-kubernetes", "cluster-b-mcp-kubernetes"] {
        gateway.wait_state(server, "Connected", Duration::from_secs(20));
    }

    let client = connect(&gateway.url()).await;
    let tools = list_tools(&client).await;
    let pods = tools
        .iter()
        .find(|t| t.name == "x_kubernetes_list_pods")
        .expect("the agents' servers fold into one family tool");
    assert_eq!(
        pods.input_schema["properties"]["management_cluster"]["anyOf"][0]["enum"],
        json!(["cluster-a", "cluster-b"])
    );
    let one = cluster_info(&client, "cluster-b").await;
    assert_eq!(one.is_error, Some(false), "{}", text_of(&one));
    assert!(text_of(&one).contains("cluster-b"), "{}", text_of(&one));
    let all = cluster_info(&client, "*").await;
    let instances = &all.structured_content.as_ref().unwrap()["instances"];
    for name in ["cluster-a", "cluster-b"] {
        let result = instances[name]["result"].as_str().unwrap_or_default();
        assert!(
            result.starts_with(&format!("cluster: {name}\n")),
            "{instances}"
        );
    }
    let prod = cluster_info(&client, "env=prod").await;
    assert_eq!(
        instances_of(&prod),
        ["cluster-a"],
        "labels select agents' members too"
    );

    // A call the client cancels ends at the server behind the agent.
    cancel_and_see_it_arrive(
        &client,
        "x_kubernetes_sleep",
        "x_kubernetes_cancellations",
        json!({"management_cluster": "cluster-a"}),
    )
    .await;

    // The agents dialed out: neither has a listening socket.
    for agent in [&agent_a, &agent_b] {
        assert_eq!(listening(agent.pid()), Vec::<u16>::new(), "{}", agent.name);
    }
    // /status and /metrics show who is connected, with what.
    let agents = gateway.get_json("/status")["agents"].clone();
    assert_eq!(
        agents,
        json!([
            {"name": "cluster-a", "servers": ["cluster-a-mcp-kubernetes"], "sessions": 1},
            {"name": "cluster-b", "servers": ["cluster-b-mcp-kubernetes"], "sessions": 1},
        ])
    );
    let page = reqwest::get(format!("http://127.0.0.1:{}/ui", gateway.port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let agents = page
        .split("<section id=\"agents\">")
        .nth(1)
        .expect("the fleet page has an agents section");
    assert!(
        agents.contains("<strong>cluster-a</strong>")
            && agents.contains("<strong>cluster-b</strong>"),
        "{agents}"
    );
    let connected = tokio::task::block_in_place(|| {
        crate::limits::metric(&gateway, "flotilla_agents_connected")
    });
    assert_eq!(connected, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_marks_its_members_unreachable_and_its_return_restores_them() {
    let gateway = two_cluster_gateway();
    let a = Cluster::new("cluster-a", CREDENTIAL_A);
    let mut agent = a.agent(&gateway);
    gateway.wait_state(
        "cluster-a-mcp-kubernetes",
        "Connected",
        Duration::from_secs(20),
    );
    let client = connect(&gateway.url()).await;

    agent.kill();
    gateway.wait_state(
        "cluster-a-mcp-kubernetes",
        "Failed",
        Duration::from_secs(10),
    );
    let status = gateway.server_status("cluster-a-mcp-kubernetes");
    let error = status["status"]["lastError"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("cluster-a"), "{status}");
    let reason = status.to_string();
    assert!(reason.contains("Unreachable"), "{status}");
    let down = cluster_info(&client, "cluster-a").await;
    assert_eq!(down.is_error, Some(true));
    assert!(text_of(&down).contains("cluster-a"), "{}", text_of(&down));

    // Back within moments, not at the next backoff step: its arrival wakes the server.
    let returned = Instant::now();
    let _agent = a.agent(&gateway);
    gateway.wait_state(
        "cluster-a-mcp-kubernetes",
        "Connected",
        Duration::from_secs(10),
    );
    assert!(
        returned.elapsed() < Duration::from_secs(8),
        "{:?}",
        returned.elapsed()
    );
    let up = cluster_info(&client, "cluster-a").await;
    assert_eq!(up.is_error, Some(false), "{}", text_of(&up));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_credential_and_an_agent_claiming_another_cluster_are_refused() {
    let gateway = two_cluster_gateway();
    // cluster-a's own credential, used to claim cluster-b's name.
    let a = Cluster::new("cluster-a", CREDENTIAL_A);
    let impostor = a.agent_as(&gateway, "cluster-b");
    impostor.wait_log(
        "refused this agent (403 Forbidden)",
        Duration::from_secs(10),
    );
    // A credential that is almost right.
    let wrong = Cluster::new("cluster-a", &CREDENTIAL_A.replace('0', "1"));
    let guesser = wrong.agent(&gateway);
    guesser.wait_log(
        "refused this agent (403 Forbidden)",
        Duration::from_secs(10),
    );
    // A name no MCPServer declares.
    let stranger = a.agent_as(&gateway, "cluster-z");
    stranger.wait_log(
        "refused this agent (403 Forbidden)",
        Duration::from_secs(10),
    );

    for server in ["cluster-a-mcp-kubernetes", "cluster-b-mcp-kubernetes"] {
        let state = gateway.server_status(server)["status"]["state"].clone();
        assert_ne!(
            state, "Connected",
            "{server} was reached by a refused agent"
        );
    }
    let log = log_of(&gateway.logs().join("gateway.log"));
    assert!(
        log.contains("the credential does not match spec.agent.credentialFrom"),
        "the gateway's log says why: {log}"
    );
    assert!(
        log.contains("no MCPServer of type agent declares it"),
        "{log}"
    );
    for secret in [CREDENTIAL_A, CREDENTIAL_B] {
        assert!(!log.contains(secret), "a credential reached the log");
    }

    // Not a WebSocket upgrade at all, and no credential: refused before anything else.
    let http = reqwest::Client::new();
    let door = format!("http://127.0.0.1:{}/agent/connect", gateway.port);
    let plain = http
        .get(&door)
        .header("x-flotilla-agent", "cluster-a")
        .bearer_auth(CREDENTIAL_A)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 426);
    let anonymous = http
        .get(&door)
        .header("x-flotilla-agent", "cluster-a")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The rightful agent still gets in.
    let b = Cluster::new("cluster-b", CREDENTIAL_B);
    let _agent_b = b.connected_agent(&gateway);
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_and_elicitation_travel_through_an_agent() {
    let peers = peers();
    let cluster = Cluster::new("edge", "edge-credential-5555");
    // server-everything over stdio beside the agent, instead of the simulated cluster.
    write_manifest(
        &cluster.servers(),
        "kubernetes.yaml",
        &format!(
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: everything\nspec:\n  type: stdio\n  command: {}\n  args: [--require, {}, {}, stdio]\n",
            peers.get("NODE22"),
            peers.get("LOOPBACK_PRELOAD"),
            peers.get("EVERYTHING_JS")
        ),
    );
    let gateway = Fleet::new()
        .manifest(
            "edge.yaml",
            &declared("edge", "edge-credential-5555", &[])
                .replace("name: edge-mcp-kubernetes", "name: everything")
                .replace(
                    "  family:\n    name: kubernetes\n    instanceArg: management_cluster\n",
                    "",
                ),
        )
        // The same server run by the gateway itself, to compare with.
        .stdio(
            "local",
            &peers.get("NODE22"),
            &[
                "--require",
                &peers.get("LOOPBACK_PRELOAD"),
                &peers.get("EVERYTHING_JS"),
                "stdio",
            ],
        )
        .connected()
        .start();
    let (_agent, handler, client) = everything_behind(&cluster, &gateway).await;
    wait_tool(&client, "x_local_trigger-long-running-operation").await;

    // A client sees the same tools through the agent as from the server run locally.
    let tools = list_tools(&client).await;
    let as_listed = |prefix: &str| -> Vec<serde_json::Value> {
        let mut listed: Vec<serde_json::Value> = tools
            .iter()
            .filter_map(|t| {
                let name = t.name.strip_prefix(prefix)?;
                let mut raw = serde_json::to_value(t).unwrap();
                raw["name"] = json!(name);
                Some(raw)
            })
            .collect();
        listed.sort_by_key(|t| t["name"].to_string());
        listed
    };
    let (remote, local) = (as_listed("x_everything_"), as_listed("x_local_"));
    assert!(!remote.is_empty());
    assert_eq!(remote, local, "the same tools, field for field");
    // And the same prompts, and a prompt and a resource read alike.
    let prompts = client.list_all_prompts().await.expect("prompts");
    let names = |prefix: &str| -> Vec<String> {
        let mut names: Vec<String> = prompts
            .iter()
            .filter_map(|p| p.name.strip_prefix(prefix).map(str::to_string))
            .collect();
        names.sort();
        names
    };
    assert!(!names("x_everything_").is_empty());
    assert_eq!(names("x_everything_"), names("x_local_"));
    let prompt =
        |name: &str| client.get_prompt(rmcp::model::GetPromptRequestParams::new(name.to_string()));
    let (remote, local) = (
        prompt("x_everything_simple-prompt")
            .await
            .expect("through the agent"),
        prompt("x_local_simple-prompt").await.expect("local"),
    );
    assert_eq!(
        serde_json::to_value(&remote.messages).unwrap(),
        serde_json::to_value(&local.messages).unwrap()
    );

    progress_and_a_question_arrive(&client, &handler, "x_everything_").await;
    // Relayed through the agent's channel: numbers as the server wrote them.
    crate::relay::messages_as_written(&gateway, "everything").await;
}

/// The gateway's MCPServer for `cluster`, whose agent proves itself with a
/// service-account token of its own cluster's issuer.
fn declared_by_issuer(cluster: &str, issuer: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {cluster}-mcp-kubernetes\nspec:\n  type: agent\n  timeout: 10\n  agent:\n    name: {cluster}\n    serviceAccount:\n      issuer: {issuer}\n      subject: system:serviceaccount:flotilla:flotilla-agent\n  family:\n    name: kubernetes\n    instanceArg: management_cluster\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_token_of_the_agents_own_cluster_is_accepted_and_no_other() {
    let (north, south) = (SaIssuer::start(), SaIssuer::start());
    let gateway = Fleet::new()
        .manifest("north.yaml", &declared_by_issuer("north", &north.issuer))
        .manifest("south.yaml", &declared_by_issuer("south", &south.issuer))
        .start();
    let own = north.token("flotilla", "flotilla-agent", "flotilla-agent", 600);
    let refused = [
        // South's genuine token, claiming to be north.
        (
            south.token("flotilla", "flotilla-agent", "flotilla-agent", 600),
            "issuer",
        ),
        // North's issuer, another service account.
        (
            north.token("kube-system", "default", "flotilla-agent", 600),
            "not the declared",
        ),
        // North's agent, a token meant for someone else.
        (
            north.token(
                "flotilla",
                "flotilla-agent",
                "https://kubernetes.default.svc",
                600,
            ),
            "none of the accepted audiences (flotilla-agent)",
        ),
        (
            north.token("flotilla", "flotilla-agent", "flotilla-agent", -120),
            "expired",
        ),
    ];
    for (token, why) in refused {
        let cluster = Cluster::new("north", &token);
        let agent = cluster.agent(&gateway);
        agent.wait_log(
            "refused this agent (403 Forbidden)",
            Duration::from_secs(10),
        );
        let log = log_of(&gateway.logs().join("gateway.log"));
        assert!(
            log.lines()
                .any(|l| l.contains("agent refused") && l.contains(why)),
            "the gateway says why ({why}): {log}"
        );
        assert!(!log.contains(&token), "a token reached the log");
    }
    assert_ne!(
        gateway.server_status("north-mcp-kubernetes")["status"]["state"],
        "Connected"
    );
    let cluster = Cluster::new("north", &own);
    let _agent = cluster.agent(&gateway);
    gateway.wait_state("north-mcp-kubernetes", "Connected", Duration::from_secs(20));
}

/// A test CA and a certificate for 127.0.0.1 it signed (openssl):
/// `(ca.pem, cert.pem, key.pem)` in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (tests/peers/install.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flotilla-test-ca",
    ]);
    openssl(&ca);
    let mut request = vec!["req"];
    request.extend(ec);
    request.extend([
        "-keyout",
        "key.pem",
        "-out",
        "cert.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&request);
    std::fs::write(
        dir.join("cert.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "cert.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-extfile",
        "cert.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_reaches_the_gateway_over_tls_through_a_forward_proxy_and_a_reverse_proxy() {
    let gateway = two_cluster_gateway();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    // nginx terminates TLS in front of the gateway, as an ingress would.
    let nginx = Nginx::start_with(dir.path(), &[gateway.port], Some((cert, key)));
    // The cluster's way out: a forward proxy (PyPI proxy.py) the agent must use.
    let mut cmd = Command::new(peers().get("PY"));
    cmd.args(["-m", "proxy", "--hostname", "127.0.0.1", "--port", "0"])
        .args([
            "--num-acceptors",
            "1",
            "--num-workers",
            "1",
            "--log-level",
            "INFO",
        ]);
    let proxy = Proc::spawn("forward-proxy", cmd, dir.path());
    let proxy_port = listening_port(&proxy, Duration::from_secs(20));
    let a = Cluster::new("cluster-a", CREDENTIAL_A);
    let dial = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args(["agent", "--name", "cluster-a", "--gateway"])
            .arg(format!("https://127.0.0.1:{}/", nginx.port))
            .arg("--token-file")
            .arg(&a.token_file)
            .arg("--manifests")
            .arg(a.servers())
            .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .args(extra);
        Proc::spawn("agent-tls", cmd, gateway.logs())
    };
    // Without the CA, the gateway's certificate is not trusted: no connection.
    let untrusting = dial(&[]);
    untrusting.wait_log("dialing the gateway failed", Duration::from_secs(10));
    assert!(
        untrusting.log_text().to_lowercase().contains("certificate"),
        "{}",
        untrusting.log_text()
    );
    drop(untrusting);
    let ca = ca.display().to_string();
    let _agent = dial(&["--ca-file", &ca]);
    gateway.wait_state(
        "cluster-a-mcp-kubernetes",
        "Connected",
        Duration::from_secs(20),
    );
    let client = connect(&gateway.url()).await;
    let info = cluster_info(&client, "cluster-a").await;
    assert!(
        text_of(&info).contains("cluster: cluster-a"),
        "{}",
        text_of(&info)
    );
    // The connection went through the forward proxy's CONNECT tunnel.
    let tunnelled = format!("CONNECT 127.0.0.1:{}", nginx.port);
    proxy.wait_log(&tunnelled, Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_redials_when_its_gateway_is_replaced() {
    let first = two_cluster_gateway();
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path(), &[first.port]);
    let a = Cluster::new("cluster-a", CREDENTIAL_A);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(["agent", "--name", "cluster-a", "--gateway", &nginx.base()])
        .arg("--token-file")
        .arg(&a.token_file)
        .arg("--manifests")
        .arg(a.servers());
    let agent = Proc::spawn("agent-redial", cmd, dir.path());
    first.wait_state(
        "cluster-a-mcp-kubernetes",
        "Connected",
        Duration::from_secs(20),
    );
    // A rollout: the old gateway goes, a new one takes its place behind the proxy.
    drop(first);
    let second = two_cluster_gateway();
    nginx.configure(&[second.port]);
    nginx.reload();
    second.wait_state(
        "cluster-a-mcp-kubernetes",
        "Connected",
        Duration::from_secs(40),
    );
    let log = agent.log_text();
    assert!(log.contains("connection to the gateway ended"), "{log}");
    assert!(
        log.matches("connected to the gateway").count() >= 2,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_carries_a_streamable_http_server_beside_it_with_progress_and_questions() {
    let fleet = Fleet::new();
    let (_everything, port) = everything("streamableHttp", 0, fleet.logs());
    let cluster = Cluster::new("lab", "lab-credential-7777");
    write_manifest(
        &cluster.servers(),
        "kubernetes.yaml",
        &format!(
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: everything\nspec:\n  type: streamable-http\n  url: http://127.0.0.1:{port}/mcp\n"
        ),
    );
    let gateway = fleet
        .manifest(
            "lab.yaml",
            &declared("lab", "lab-credential-7777", &[])
                .replace("name: lab-mcp-kubernetes", "name: everything")
                .replace(
                    "  family:\n    name: kubernetes\n    instanceArg: management_cluster\n",
                    "",
                ),
        )
        .start();
    let (_agent, handler, client) = everything_behind(&cluster, &gateway).await;
    // Progress on the call's own SSE stream, and a question the server asks
    // in the middle of a call, answered by the client.
    progress_and_a_question_arrive(&client, &handler, "x_everything_").await;
    let summed = call(&client, "x_everything_get-sum", json!({"a": 2, "b": 40})).await;
    assert_eq!(text_of(&summed), "The sum of 2 and 40 is 42.");
    let resources = client.list_all_resources().await.expect("resources");
    let first = resources
        .first()
        .expect("the server's resources are listed through the agent");
    let read = client
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            first.uri.to_string(),
        ))
        .await
        .expect("a resource read through the agent");
    assert!(!read.contents.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_credential_closes_the_agents_connection_until_it_presents_the_new_one() {
    let gateway = two_cluster_gateway();
    let a = Cluster::new("cluster-a", CREDENTIAL_A);
    let agent = a.connected_agent(&gateway);
    // The credential is rotated on the gateway's side (say, it leaked).
    let rotated = "a-rotated-credential-for-cluster-a-2468";
    gateway.write_manifest(
        "a.yaml",
        &declared("cluster-a", rotated, &[("env", "prod")]),
    );
    // The connection let in with the old one is closed, and the old one no longer opens it.
    agent.wait_log(
        "refused this agent (403 Forbidden)",
        Duration::from_secs(15),
    );
    let log = log_of(&gateway.logs().join("gateway.log"));
    assert!(log.contains("what its MCPServers declare changed"), "{log}");
    assert_ne!(
        gateway.server_status("cluster-a-mcp-kubernetes")["status"]["state"],
        "Connected"
    );
    // The agent gets the new credential (its Secret is updated): back in.
    std::fs::write(&a.token_file, rotated).unwrap();
    gateway.wait_state(
        "cluster-a-mcp-kubernetes",
        "Connected",
        Duration::from_secs(40),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_agent_is_given_up_after_three_silent_heartbeats_and_its_return_restores_it() {
    let gateway = Fleet::new()
        .manifest(
            "a.yaml",
            &declared("cluster-a", CREDENTIAL_A, &[("env", "prod")]),
        )
        .config("agentHeartbeatSeconds: 1\n")
        .start();
    let a = Cluster::new("cluster-a", CREDENTIAL_A);
    let agent = a.connected_agent(&gateway);
    // A frozen agent (or a NAT mapping that silently died) sends no FIN:
    // only the missing heartbeats tell.
    let stopped = Instant::now();
    unsafe { libc::kill(agent.pid(), libc::SIGSTOP) };
    gateway.wait_state(
        "cluster-a-mcp-kubernetes",
        "Failed",
        Duration::from_secs(15),
    );
    let waited = stopped.elapsed();
    let status = gateway.server_status("cluster-a-mcp-kubernetes");
    assert!(
        status.to_string().contains("no heartbeat for 3s"),
        "{status}"
    );
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    // Thawed, it notices its connection is gone and dials again.
    unsafe { libc::kill(agent.pid(), libc::SIGCONT) };
    gateway.wait_state(
        "cluster-a-mcp-kubernetes",
        "Connected",
        Duration::from_secs(40),
    );
}
