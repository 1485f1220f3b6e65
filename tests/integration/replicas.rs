//! Several gateway replicas behind a real nginx in round-robin, with no
//! affinity: one client session, initialized once, is served by every
//! replica, through replicas dying and being replaced (a rolling update),
//! and with SSO on, two users' sessions and tokens stay their own.
//!
//! nginx is the fixture of `common/nginx.rs`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::idp::gateway_login;
use crate::common::nginx::Nginx;
use crate::common::sso_world::{self, World, connect_as, token_seen_by};
use crate::common::*;
use crate::limits::metric;

const KEY: &str = "cmVwbGljYXMtc2hhcmUtdGhpcy1rZXktMzItYnl0ZXM=";

/// Replicas of one gateway: the same manifests and config (one key file).
struct Replicas {
    dir: tempfile::TempDir,
    manifests: tempfile::TempDir,
    config: PathBuf,
    running: Vec<Gateway>,
    /// Directories of the peers the replicas use, removed with them.
    owned: Vec<tempfile::TempDir>,
}

impl Replicas {
    fn start(n: usize) -> Replicas {
        Self::start_with(n, &[])
    }

    /// `n` replicas over the simulated cluster `sim-a` and `more` manifests.
    fn start_with(n: usize, more: &[(&str, String)]) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let manifests = tempfile::tempdir().unwrap();
        write_manifest(
            manifests.path(),
            "sim-a.yaml",
            &sim_manifest("sim-a", "cluster-a", ""),
        );
        for (file, yaml) in more {
            write_manifest(manifests.path(), file, yaml);
        }
        std::fs::write(dir.path().join("sealing-key"), format!("{KEY}\n")).unwrap();
        let config = dir.path().join("flotilla.yaml");
        // The replicas find each other in `peers` (written as they start).
        std::fs::write(
            &config,
            "sealingKeyFile: sealing-key\nreplicaPeers: {file: peers}\n",
        )
        .unwrap();
        let mut replicas = Replicas {
            dir,
            manifests,
            config,
            running: Vec::new(),
            owned: Vec::new(),
        };
        for _ in 0..n {
            replicas.add();
        }
        replicas
    }

    /// `n` replicas with server-everything over stdio beside `sim-a`
    /// (each replica runs its own), connected.
    fn start_with_everything(n: usize) -> Replicas {
        let p = peers();
        let stdio = format!(
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: everything\nspec:\n  type: stdio\n  command: {}\n  args: [{}, stdio]\n  timeout: 20\n",
            p.get("NODE22"),
            p.get("EVERYTHING_JS")
        );
        let replicas = Self::start_with(n, &[("everything.yaml", stdio)]);
        for gateway in &replicas.running {
            gateway.wait_state("everything", "Connected", Duration::from_secs(60));
        }
        replicas
    }

    /// `n` replicas with the Python SDK server over HTTP (one process they
    /// all use, returned to be kept) beside `sim-a`, connected.
    fn start_with_python(n: usize) -> (Replicas, Proc) {
        let dir = tempfile::tempdir().unwrap();
        let (server, url) = python_server(0, dir.path());
        let mut replicas = Self::start_with(n, &[("py.yaml", http_manifest("py", &url, ""))]);
        for gateway in &replicas.running {
            gateway.wait_state("py", "Connected", Duration::from_secs(30));
        }
        replicas.owned.push(dir);
        (replicas, server)
    }

    fn add(&mut self) -> u16 {
        let gateway = Gateway::start_with(
            self.manifests.path(),
            self.dir.path(),
            &["--config", self.config.to_str().unwrap()],
        );
        gateway.wait_state("sim-a", "Connected", Duration::from_secs(30));
        let port = gateway.port;
        self.running.push(gateway);
        self.write_peers();
        port
    }

    /// The peers file every replica reads: each running replica's URL.
    fn write_peers(&self) {
        let lines: String = self
            .running
            .iter()
            .map(|g| format!("http://127.0.0.1:{}\n", g.port))
            .collect();
        std::fs::write(self.dir.path().join("peers"), lines).unwrap();
    }

    fn ports(&self) -> Vec<u16> {
        self.running.iter().map(|g| g.port).collect()
    }

    /// Client requests the replicas passed to one another, in all.
    fn passed(&self) -> f64 {
        self.running
            .iter()
            .map(|g| metric(g, "flotilla_client_requests_passed_total"))
            .sum()
    }

    /// Kills replica `i` at once (SIGKILL: no drain).
    fn kill(&mut self, i: usize) {
        let mut gone = self.running.remove(i);
        gone.proc.kill();
        self.write_peers();
    }
}

/// `tests/peers/session_driver.py`: one Python SDK session in 2025 mode.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Driver {
    fn start(url: &str, extra: &[&str]) -> Driver {
        let p = peers();
        let mut child = Command::new(p.get("PY"))
            .arg(p.get("PEERS_DIR") + "/session_driver.py")
            .args(["--url", url])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start session_driver.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut driver = Driver {
            child,
            stdin,
            lines,
        };
        let ready = driver.next(Duration::from_secs(30));
        assert_eq!(ready["ready"], true, "{ready}");
        assert_eq!(ready["protocolVersion"], "2025-11-25", "{ready}");
        driver
    }

    fn send(&mut self, command: Value) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn next(&mut self, timeout: Duration) -> Value {
        let line = self
            .lines
            .recv_timeout(timeout)
            .expect("the session driver answers");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    fn ask(&mut self, command: Value) -> Value {
        self.send(command);
        self.next(Duration::from_secs(60))
    }

    /// Runs `count` calls of `tool` in the session; one answer per call.
    fn calls(&mut self, tool: &str, count: usize) -> Vec<Value> {
        self.send(json!({"op": "calls", "tool": tool, "count": count}));
        self.answers(Duration::from_secs(90))
    }

    /// The answers to a `calls` command, up to its end.
    fn answers(&mut self, each_within: Duration) -> Vec<Value> {
        let mut answers = Vec::new();
        loop {
            let line = self.next(each_within);
            if line.get("done").is_some() {
                return answers;
            }
            answers.push(line);
        }
    }

    /// Every session id the client sent, and how many times it initialized.
    fn stats(&mut self) -> (Vec<String>, u64) {
        let stats = self.ask(json!({"op": "stats"}));
        let sessions = stats["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        (sessions, stats["initializes"].as_u64().unwrap())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_session_is_served_by_every_replica_behind_round_robin() {
    let replicas = Replicas::start(3);
    let nginx = Nginx::start(replicas.dir.path(), &replicas.ports());
    let mut client = Driver::start(&nginx.url(), &[]);
    let failed: Vec<Value> = client
        .calls("x_sim-a_cluster_info", 150)
        .into_iter()
        .filter(|a| a["ok"] != true || !a["text"].as_str().unwrap_or("").contains("cluster-a"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    let listed = client.ask(json!({"op": "list"}));
    assert!(
        listed["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("x_sim-a_cluster_info")),
        "{listed}"
    );
    let (sessions, initializes) = client.stats();
    assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
    assert_eq!(initializes, 1);
    let served = nginx.posts_served_by();
    assert_eq!(
        served.len(),
        3,
        "every replica served the session: {served:?}"
    );
    // Each replica relayed calls of the one session, from its id alone.
    for gateway in &replicas.running {
        let text = reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", gateway.port))
            .and_then(|r| r.text())
            .expect("/metrics");
        let served: f64 = text
            .lines()
            .filter(|l| {
                l.starts_with("flotilla_tool_calls_total{")
                    && l.contains(r#"tool="x_sim-a_cluster_info""#)
                    && l.contains(r#"outcome="ok""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(served >= 1.0, "replica {}: {served}", gateway.port);
    }
}

#[test]
fn a_question_asked_mid_call_is_answered_wherever_the_answer_lands() {
    // The Python SDK server asks the client its name (form elicitation)
    // mid-call; the call is relayed on one replica, and the client's answer
    // is a new POST that nginx sends to any of the three.
    let (replicas, _server) = Replicas::start_with_python(3);
    let nginx = Nginx::start(replicas.dir.path(), &replicas.ports());
    let mut client = Driver::start(&nginx.url(), &["--elicit-answer", r#"{"name": "Ada"}"#]);
    let answers = client.calls("x_py_ask", 12);
    for answer in &answers {
        assert_eq!(answer["ok"], true, "{answers:?}");
        assert_eq!(answer["text"], "hello Ada", "{answers:?}");
    }
    let asked = client.ask(json!({"op": "stats"}));
    assert_eq!(asked["asked"].as_array().unwrap().len(), 12, "{asked}");
    // With three replicas in turn, some answers reached a replica that did
    // not ask: they were passed to the one that did.
    assert!(replicas.passed() >= 1.0);
}

#[test]
fn a_question_a_stdio_server_asks_mid_call_is_answered_wherever_the_answer_lands() {
    // server-everything over stdio asks for a name mid-call; the relay
    // puts it to the client under an id that names the replica.
    let replicas = Replicas::start_with_everything(3);
    let nginx = Nginx::start(replicas.dir.path(), &replicas.ports());
    let mut client = Driver::start(&nginx.url(), &["--elicit-answer", r#"{"name": "Ada"}"#]);
    let answers = client.calls("x_everything_trigger-elicitation-request", 9);
    for answer in &answers {
        assert_eq!(answer["ok"], true, "{answers:?}");
        assert_eq!(answer["isError"], false, "{answers:?}");
        assert!(
            answer["text"].as_str().unwrap().contains("Ada"),
            "{answers:?}"
        );
    }
    let asked = client.ask(json!({"op": "stats"}));
    assert_eq!(asked["asked"].as_array().unwrap().len(), 9, "{asked}");
    assert!(replicas.passed() >= 1.0);
}

#[test]
fn list_changed_reaches_the_clients_stream_on_whichever_replica_holds_it() {
    let replicas = Replicas::start(3);
    let nginx = Nginx::start(replicas.dir.path(), &replicas.ports());
    let mut client = Driver::start(&nginx.url(), &[]);
    // The client's GET stream is open on one of the replicas by now.
    std::thread::sleep(Duration::from_millis(500));
    write_manifest(
        replicas.manifests.path(),
        "sim-b.yaml",
        &sim_manifest("sim-b", "cluster-b", ""),
    );
    let changed = client.ask(json!({"op": "wait_list_changed", "timeout": 30}));
    assert!(changed["list_changed"].as_u64().unwrap() >= 1, "{changed}");
    // Every replica has the new server by now or soon; the client sees it wherever it asks.
    for gateway in &replicas.running {
        gateway.wait_state("sim-b", "Connected", Duration::from_secs(30));
    }
    for _ in 0..3 {
        let listed = client.ask(json!({"op": "list"}));
        assert!(
            listed["tools"]
                .as_array()
                .unwrap()
                .contains(&json!("x_sim-b_cluster_info")),
            "{listed}"
        );
    }
}

#[test]
fn replicas_dying_and_replaced_one_by_one_lose_no_call_and_need_no_new_session() {
    let mut replicas = Replicas::start(2);
    let nginx = Nginx::start(replicas.dir.path(), &replicas.ports());
    let mut client = Driver::start(&nginx.url(), &[]);
    client
        .send(json!({"op": "calls", "tool": "x_sim-a_cluster_info", "count": 240, "pause": 0.02}));
    let mut failed = Vec::new();
    let mut seen = 0;
    let mut replaced = 0;
    loop {
        let line = client.next(Duration::from_secs(60));
        if line.get("done").is_some() {
            break;
        }
        seen += 1;
        if line["ok"] != true {
            failed.push(line);
        }
        // A rolling update, twice: the oldest replica is killed outright
        // (no drain), a new one started, and nginx told about it.
        if seen % 80 == 0 && replaced < 2 {
            replicas.kill(0);
            replicas.add();
            nginx.configure(&replicas.ports());
            nginx.reload();
            replaced += 1;
        }
    }
    assert_eq!(replaced, 2);
    // At most the call in flight on a killed replica fails; every other one succeeds.
    assert!(failed.len() <= 2, "{failed:?}");
    let (sessions, initializes) = client.stats();
    assert_eq!(sessions.len(), 1, "one session throughout: {sessions:?}");
    assert_eq!(initializes, 1, "never initialized again");
    // The replicas started after the client initialized served it.
    let served = nginx.posts_served_by();
    for gateway in &replicas.running {
        let address = format!("127.0.0.1:{}", gateway.port);
        assert!(served.contains(&address), "{address} in {served:?}");
    }
}

#[test]
fn concurrent_first_requests_on_a_replica_wait_for_its_session_to_be_rebuilt() {
    // A GET stream and a POST of a session this replica never held, at once:
    // both are served (neither reaches the session before its rebuild).
    let replicas = Replicas::start(1);
    let url = replicas.running[0].url();
    let http = reqwest::blocking::Client::new();
    for round in 0..20 {
        let init = http
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "race", "version": "1"}}}),
            )
            .send()
            .unwrap();
        let session = init.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let (get, post) = std::thread::scope(|scope| {
            let get = scope.spawn(|| {
                http.get(&url)
                    .header("accept", "text/event-stream")
                    .header("mcp-session-id", &session)
                    .header("mcp-protocol-version", "2025-11-25")
                    .send()
                    .map(|r| r.status().as_u16())
            });
            let post = scope.spawn(|| {
                http.post(&url)
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-session-id", &session)
                    .header("mcp-protocol-version", "2025-11-25")
                    .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}))
                    .send()
                    .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
            });
            (get.join().unwrap(), post.join().unwrap())
        });
        assert_eq!(get.unwrap(), 200, "round {round}");
        let (status, body) = post.unwrap();
        assert_eq!(status, 200, "round {round}: {body}");
        assert!(body.contains("cluster-a"), "round {round}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_sso_two_users_keep_their_sessions_and_tokens_apart_across_replicas() {
    let world = World::start(sso_world::Options::default());
    let dir = world.logs.path().to_path_buf();
    let manifests = world.manifests.path().to_path_buf();
    let config = world.config.clone();
    let (nginx, _replicas) = tokio::task::spawn_blocking(move || {
        let nginx = Nginx::start(&dir, &[]);
        let replicas: Vec<Gateway> = (0..3)
            .map(|_| sso_world::start_gateway(&manifests, &dir, &config, Some(&nginx.base())))
            .collect();
        nginx.configure(&replicas.iter().map(|g| g.port).collect::<Vec<_>>());
        nginx.reload();
        (nginx, replicas)
    })
    .await
    .unwrap();
    // Logins through nginx: registration, authorize and token may each land on another replica.
    let base = nginx.base();
    let (alice, bob) = tokio::task::spawn_blocking(move || {
        (gateway_login(&base, "alice"), gateway_login(&base, "bob"))
    })
    .await
    .unwrap();
    let url = nginx.url();
    let tool = "x_cluster-a-echo_auth_header";
    let alice_client = connect_as(&url, &alice.access_token).await;
    let bob_client = connect_as(&url, &bob.access_token).await;
    eventually(
        Duration::from_secs(30),
        "the forwarding server is listed",
        || async {
            list_tools(&alice_client)
                .await
                .iter()
                .any(|t| t.name == tool)
                .then_some(())
        },
    )
    .await;
    let mut seen = std::collections::HashMap::<&str, std::collections::HashSet<String>>::new();
    for _ in 0..12 {
        for (who, client) in [("alice", &alice_client), ("bob", &bob_client)] {
            let token = token_seen_by(client, tool).await;
            seen.entry(who).or_default().insert(token);
        }
    }
    let subject = |token: &str| crate::common::idp::jwt_claims(token)["sub"].clone();
    for (who, tokens) in &seen {
        for token in tokens {
            assert_eq!(
                subject(token),
                json!(who),
                "{who} was sent another user's token"
            );
        }
    }
    assert!(seen["alice"].is_disjoint(&seen["bob"]));
    let served = nginx.posts_served_by();
    assert_eq!(served.len(), 3, "{served:?}");
    // Alice's session id, presented with Bob's token, is refused on every replica.
    let init = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&alice.access_token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "replay", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap();
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        let replayed = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&bob.access_token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(replayed.status(), 404);
        let own = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&alice.access_token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), 200);
    }
}

#[test]
fn a_stream_resumes_on_any_replica_while_its_own_lives_and_is_refused_cleanly_after() {
    let mut replicas = Replicas::start(2);
    let (a, b) = (replicas.running[0].url(), replicas.running[1].url());
    let http = reqwest::blocking::Client::new();
    let post = |url: &str, session: Option<&str>, body: Value| {
        let mut request = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.json(&body).send().unwrap()
    };
    let init = post(
        &a,
        None,
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "resume", "version": "1"}}}),
    );
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    // rmcp's answer on A is an SSE stream whose events carry A's mark.
    let listed = post(
        &a,
        Some(&session),
        json!({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}),
    )
    .text()
    .unwrap();
    let first_event = listed
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .expect("an event id")
        .to_string();
    assert!(first_event.contains('@'), "{listed}");
    let resume = |url: &str| {
        http.get(url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-11-25")
            .header("last-event-id", &first_event)
            .timeout(Duration::from_secs(20))
            .send()
            .unwrap()
    };
    // Resumed on B: passed to A, so the client gets what A itself gives
    // (rmcp ends a resumed stream whose answer was already sent).
    let at_a = resume(&a);
    let (a_status, a_type) = (at_a.status(), at_a.headers()["content-type"].clone());
    let a_body = at_a.text().unwrap();
    let resumed = resume(&b);
    assert_eq!(resumed.status(), a_status);
    assert_eq!(a_status, 200);
    assert_eq!(resumed.headers()["content-type"], a_type);
    assert_eq!(resumed.text().unwrap(), a_body);
    assert!(
        metric(
            &replicas.running[1],
            "flotilla_client_requests_passed_total"
        ) >= 1.0
    );
    // A gone: the request whose answer the stream carried (id 1) gets an
    // error saying why, on a stream that ends; not a 500, a hang, or a
    // status the SDKs' reconnection gives up on.
    replicas.kill(0);
    let refused = resume(&b);
    assert_eq!(refused.status(), 200);
    let text = refused.text().unwrap();
    let answer: Value = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| panic!("an answer in {text}"));
    assert_eq!(answer["id"], 1, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("cannot be resumed"), "{message}");
}

#[test]
fn the_typescript_sdk_keeps_one_session_across_the_replicas() {
    // The TypeScript SDK 1.x client, one session: calls that ask its user
    // (the Python SDK server's elicitation, relayed), round-robin over three.
    let (replicas, _server) = Replicas::start_with_python(3);
    let nginx = Nginx::start(replicas.dir.path(), &replicas.ports());
    let p = peers();
    let out = Command::new(p.get("NODE22"))
        .arg(p.get("TS_SESSION"))
        .args([nginx.url().as_str(), "x_py_ask", "30"])
        .output()
        .expect("run ts_session.mjs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("ts_session.mjs prints JSON");
    let texts = seen["texts"].as_array().unwrap();
    assert_eq!(texts.len(), 30);
    assert!(texts.iter().all(|t| t == "hello Ada"), "{texts:?}");
    assert_eq!(seen["asked"].as_array().unwrap().len(), 30, "{seen}");
    let ids = seen["sessionIds"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "one session throughout: {seen}");
    assert!(ids[0].as_str().unwrap_or("").starts_with("fla."), "{seen}");
    assert!(
        seen["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("x_py_ask")),
        "{seen}"
    );
    assert_eq!(nginx.posts_served_by().len(), 3);
    assert!(replicas.passed() >= 1.0);
}

/// A raw 2025-11-25 session for the tests that look at HTTP itself.
struct RawSession {
    http: reqwest::blocking::Client,
    id: String,
}

impl RawSession {
    fn start(url: &str) -> RawSession {
        let http = reqwest::blocking::Client::new();
        let init = http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"}}}),
            )
            .send()
            .unwrap();
        let id = init.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        RawSession { http, id }
    }

    fn post(&self, url: &str, body: Value) -> reqwest::blocking::Response {
        self.http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-11-25")
            .timeout(Duration::from_secs(60))
            .json(&body)
            .send()
            .unwrap()
    }

    fn call(&self, url: &str, id: u64, tool: &str, args: Value) -> String {
        self.post(
            url,
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                   "params": {"name": tool, "arguments": args}}),
        )
        .text()
        .unwrap()
    }
}

#[test]
fn a_session_ended_on_one_replica_is_ended_on_all() {
    let replicas = Replicas::start(3);
    let urls: Vec<String> = replicas.running.iter().map(Gateway::url).collect();
    let session = RawSession::start(&urls[0]);
    let listed = |url: &str| {
        session
            .post(
                url,
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            )
            .status()
    };
    for url in &urls {
        assert_eq!(listed(url), 200);
    }
    let ended = session
        .http
        .delete(&urls[1])
        .header("mcp-session-id", &session.id)
        .send()
        .unwrap();
    assert_eq!(ended.status(), 204);
    for url in &urls {
        assert_eq!(listed(url), 404, "{url}");
    }
}

#[test]
fn a_log_level_and_a_cancellation_reach_every_replica() {
    let (replicas, _server) = Replicas::start_with_python(2);
    let (a, b) = (replicas.running[0].url(), replicas.running[1].url());
    let session = RawSession::start(&a);
    // Every level until the client sets one.
    let before = session.call(&b, 1, "x_py_chatty", json!({}));
    assert!(before.contains("chatty info"), "{before}");
    let set = session.post(
        &a,
        json!({"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "warning"}}),
    );
    assert_eq!(set.status(), 200);
    let after = session.call(&b, 3, "x_py_chatty", json!({}));
    assert!(after.contains("chatty warning"), "{after}");
    assert!(!after.contains("chatty info"), "{after}");
    assert!(after.contains("logged"), "{after}");
    // A call running on A, cancelled by a notification that reaches B.
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| session.call(&a, 4, "x_py_slow", json!({"seconds": 30})));
        std::thread::sleep(Duration::from_secs(1));
        let cancelled = session.post(
            &b,
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                   "params": {"requestId": 4, "reason": "changed my mind"}}),
        );
        assert_eq!(cancelled.status(), 202);
        let answer = running.join().unwrap();
        assert!(!answer.contains("slept"), "{answer}");
    });
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_subscription_made_on_one_replica_brings_updates_to_a_stream_on_another() {
    // server-everything over stdio on each replica; the client subscribes
    // through A, its GET stream is on B, and B's server is told to send
    // updates: B knows of the subscription only because A passed it on.
    let replicas = Replicas::start_with_everything(2);
    let (a, b) = (replicas.running[0].url(), replicas.running[1].url());
    let session = RawSession::start(&a);
    let listed: Value = session
        .post(
            &a,
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}),
        )
        .text()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .find(|m: &Value| m.get("result").is_some())
        .expect("a resources/list answer");
    // One of server-everything's (the simulated cluster's take no subscriptions).
    let uri = listed["result"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["uri"].as_str())
        .find(|uri| uri.starts_with("demo://"))
        .expect("a server-everything resource")
        .to_string();
    // The GET stream, on B, read line by line.
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stream = session
        .http
        .get(&b)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session.id)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .unwrap();
    assert_eq!(stream.status(), 200);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let subscribed = session.post(
        &a,
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri}}),
    );
    assert_eq!(subscribed.status(), 200);
    let toggled = session.call(&b, 3, "x_everything_toggle-subscriber-updates", json!({}));
    assert!(toggled.contains("Started"), "{toggled}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let updated = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("notifications/resources/updated") => break line,
            Ok(_) => continue,
            Err(_) => panic!("no resource update reached the stream on B"),
        }
    };
    assert!(updated.contains(&uri), "{updated}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_behind_the_proxy_connects_to_every_replica_and_each_serves_its_server() {
    let credential = "edge-agent-credential-0042";
    let declared = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: agent-edge\nstringData:\n  token: {credential}\n---\napiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: edge\nspec:\n  type: agent\n  timeout: 10\n  agent:\n    name: edge\n    credentialFrom: {{secretName: agent-edge, key: token}}\n"
    );
    let replicas = Replicas::start_with(2, &[("edge.yaml", declared)]);
    let nginx = Nginx::start(replicas.dir.path(), &replicas.ports());
    // The agent's side: the simulated cluster, reached only through the proxy.
    let side = tempfile::tempdir().unwrap();
    let servers = side.path().join("servers");
    std::fs::create_dir(&servers).unwrap();
    write_manifest(
        &servers,
        "edge.yaml",
        &sim_manifest("edge", "edge-cluster", ""),
    );
    std::fs::write(side.path().join("token"), credential).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.args(["agent", "--name", "edge", "--gateway", &nginx.base()])
        .arg("--token-file")
        .arg(side.path().join("token"))
        .arg("--manifests")
        .arg(&servers);
    let _agent = Proc::spawn("agent-edge", cmd, side.path());
    // One connection to each replica: each holds its own session to the server.
    for gateway in &replicas.running {
        gateway.wait_state("edge", "Connected", Duration::from_secs(30));
        let agents = gateway.get_json("/status")["agents"].clone();
        assert_eq!(agents.as_array().map(Vec::len), Some(1), "{agents}");
    }
    let client = connect(&nginx.url()).await;
    for _ in 0..4 {
        let info = call(&client, "x_edge_cluster_info", json!({})).await;
        assert!(
            text_of(&info).contains("cluster: edge-cluster"),
            "{}",
            text_of(&info)
        );
    }
    assert_eq!(
        nginx.posts_served_by().len(),
        2,
        "both replicas served calls"
    );
}
