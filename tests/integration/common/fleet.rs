//! The fleet fixture: a gateway over a manifest directory, built in one
//! expression so a test reads as the fleet it needs and the behaviour it
//! checks, not as temp dirs and YAML.
//!
//! ```ignore
//! let fleet = Fleet::new();
//! let (_py, py_url) = python_server(0, fleet.logs());
//! let gateway = fleet
//!     .http("py", &py_url).prefix("python")
//!     .sim("sim-a", "cluster-a").flag("--test-tools").connected()
//!     .config("pingIntervalSeconds: 1\n")
//!     .start();
//! ```
//!
//! [`Fleet::new`] makes the manifest and log directories (the log directory
//! is where peers started before the gateway write their logs). Each server
//! method (`http`, `sse`, `sim`, `stdio`, `manifest`) adds one manifest file,
//! `<name>.yaml` unless [`Fleet::file`] names it (files are written in order,
//! so a later one of the same name replaces an earlier); the modifiers after it
//! (`prefix`, `timeout`, `family`, `labels`, `flag`, `env`, `spec`,
//! `connected`) shape that server. [`Fleet::start`] writes the files, starts
//! `flotilla serve` on port 0 (see [`Gateway`]) and waits for every server
//! marked `connected` to be Connected. The returned [`Gateway`] owns the two
//! directories (removed after the gateway stops) and edits its manifests with
//! [`Gateway::write_manifest`] and [`Gateway::remove_manifest`].

use std::path::Path;
use std::time::Duration;

use super::{Gateway, Proc, python_server};

/// How long [`Fleet::start`] waits for a server marked [`Fleet::connected`].
pub const CONNECTED_WITHIN: Duration = Duration::from_secs(20);

/// A fleet of MCP servers to put behind a gateway; see the module docs.
pub struct Fleet {
    manifests: tempfile::TempDir,
    logs: tempfile::TempDir,
    servers: Vec<Server>,
    config: Option<String>,
    /// Extra `flotilla serve` flags.
    serve_flags: Vec<String>,
}

/// One manifest file of the fleet.
struct Server {
    file: String,
    name: String,
    kind: Kind,
    labels: Vec<(String, String)>,
    env: Vec<(String, String)>,
    /// Extra `spec:` lines, each indented two spaces and ending in `\n`.
    spec: String,
    /// How long [`Fleet::start`] waits for it to be Connected, if at all.
    connected: Option<Duration>,
}

enum Kind {
    Http(String),
    Sse(String),
    Sim {
        cluster: String,
        flags: Vec<String>,
    },
    Stdio {
        command: String,
        args: Vec<String>,
    },
    /// Written exactly as given.
    Raw(String),
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new()
    }
}

impl Fleet {
    /// An empty fleet with fresh manifest and log directories.
    pub fn new() -> Fleet {
        Fleet {
            manifests: tempfile::tempdir().expect("manifest dir"),
            logs: tempfile::tempdir().expect("log dir"),
            servers: Vec::new(),
            config: None,
            serve_flags: Vec::new(),
        }
    }

    /// Where the gateway and the peers a test starts write their logs.
    pub fn logs(&self) -> &Path {
        self.logs.path()
    }

    /// The manifest directory the gateway will watch.
    pub fn manifests(&self) -> &Path {
        self.manifests.path()
    }

    /// A Streamable HTTP server `name` at `url` (timeout 10 s unless set).
    pub fn http(self, name: &str, url: &str) -> Fleet {
        self.server(name, Kind::Http(url.to_string()))
    }

    /// A legacy HTTP+SSE server `name` at `url` (timeout 10 s unless set).
    pub fn sse(self, name: &str, url: &str) -> Fleet {
        self.server(name, Kind::Sse(url.to_string()))
    }

    /// A simulated cluster (`flotilla sim-cluster --cluster <cluster>`) over
    /// stdio, timeout 10 s.
    pub fn sim(self, name: &str, cluster: &str) -> Fleet {
        let kind = Kind::Sim {
            cluster: cluster.to_string(),
            flags: Vec::new(),
        };
        self.server(name, kind)
    }

    /// Any stdio server, timeout 10 s.
    pub fn stdio(self, name: &str, command: &str, args: &[&str]) -> Fleet {
        let kind = Kind::Stdio {
            command: command.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        self.server(name, kind)
    }

    /// A manifest file written exactly as given (several documents, odd or
    /// broken ones); the modifiers do not apply to it.
    pub fn manifest(mut self, file: &str, yaml: &str) -> Fleet {
        self.servers.push(Server {
            file: file.to_string(),
            name: String::new(),
            kind: Kind::Raw(yaml.to_string()),
            labels: Vec::new(),
            env: Vec::new(),
            spec: String::new(),
            connected: None,
        });
        self
    }

    fn server(mut self, name: &str, kind: Kind) -> Fleet {
        self.servers.push(Server {
            file: format!("{name}.yaml"),
            name: name.to_string(),
            kind,
            labels: Vec::new(),
            env: Vec::new(),
            spec: String::new(),
            connected: None,
        });
        self
    }

    /// The last server added, for a modifier.
    fn last(&mut self, modifier: &str) -> &mut Server {
        let server = self
            .servers
            .last_mut()
            .unwrap_or_else(|| panic!("Fleet::{modifier} before any server"));
        assert!(
            !matches!(server.kind, Kind::Raw(_)),
            "Fleet::{modifier} on a manifest written as given ({})",
            server.file
        );
        server
    }

    /// Names the last server's manifest file (a test that edits it later).
    pub fn file(mut self, file: &str) -> Fleet {
        self.last("file").file = file.to_string();
        self
    }

    /// Extra lines under the last server's `spec:` (indented two spaces).
    pub fn spec(mut self, lines: &str) -> Fleet {
        let server = self.last("spec");
        server.spec.push_str(lines);
        if !lines.ends_with('\n') {
            server.spec.push('\n');
        }
        self
    }

    /// `spec.toolPrefix` of the last server.
    pub fn prefix(self, prefix: &str) -> Fleet {
        self.spec(&format!("  toolPrefix: \"{prefix}\"\n"))
    }

    /// `spec.timeout` (seconds) of the last server, instead of 10.
    pub fn timeout(self, seconds: u64) -> Fleet {
        self.spec(&format!("  timeout: {seconds}\n"))
    }

    /// The last server joins family `name` (default instance argument).
    pub fn family(self, name: &str) -> Fleet {
        self.spec(&format!("  family: {{name: {name}}}\n"))
    }

    /// The last server joins family `name` with instance argument `arg`.
    pub fn family_with_arg(self, name: &str, arg: &str) -> Fleet {
        self.spec(&format!("  family: {{name: {name}, instanceArg: {arg}}}\n"))
    }

    /// `metadata.labels` of the last server.
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Fleet {
        let server = self.last("labels");
        server
            .labels
            .extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// An extra `sim-cluster` flag (e.g. `--test-tools`) of the last server.
    pub fn flag(mut self, flag: &str) -> Fleet {
        match &mut self.last("flag").kind {
            Kind::Sim { flags, .. } => flags.push(flag.to_string()),
            _ => panic!("Fleet::flag is for simulated clusters"),
        }
        self
    }

    /// An environment variable of the last (stdio) server.
    pub fn env(mut self, key: &str, value: &str) -> Fleet {
        self.last("env")
            .env
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Two Python SDK servers (tests/peers/py_server.py), `a-mcp-py` and
    /// `b-mcp-py`, in family `py` (instances `a` and `b`); the servers are
    /// returned with the fleet and stop when dropped.
    pub fn python_family_of_two(self) -> (Fleet, [Proc; 2]) {
        let (a, url_a) = python_server(0, self.logs());
        let (b, url_b) = python_server(0, self.logs());
        let fleet = self
            .http("a-mcp-py", &url_a)
            .family("py")
            .http("b-mcp-py", &url_b)
            .family("py");
        (fleet, [a, b])
    }

    /// [`Fleet::start`] waits (up to [`CONNECTED_WITHIN`]) until the last
    /// server is Connected.
    pub fn connected(self) -> Fleet {
        self.connected_within(CONNECTED_WITHIN)
    }

    /// [`Fleet::start`] waits up to `timeout` until the last server is Connected.
    pub fn connected_within(mut self, timeout: Duration) -> Fleet {
        self.last("connected").connected = Some(timeout);
        self
    }

    /// The gateway's config file (`--config`), as YAML.
    pub fn config(mut self, yaml: &str) -> Fleet {
        self.config = Some(yaml.to_string());
        self
    }

    /// An extra `flotilla serve` flag (e.g. `--insecure-demo-identity`).
    pub fn serve_flag(mut self, flag: &str) -> Fleet {
        self.serve_flags.push(flag.to_string());
        self
    }

    /// Writes the manifests, starts the gateway and waits for the servers
    /// marked [`Fleet::connected`].
    pub fn start(self) -> Gateway {
        for server in &self.servers {
            super::write_manifest(self.manifests.path(), &server.file, &server.render());
        }
        let mut args = Vec::new();
        if let Some(config) = &self.config {
            let path = self.logs.path().join("gateway.yaml");
            std::fs::write(&path, config).expect("write the gateway config");
            args.push("--config".to_string());
            args.push(path.display().to_string());
        }
        args.extend(self.serve_flags.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut gateway = Gateway::start_with(self.manifests.path(), self.logs.path(), &args);
        gateway.owned = vec![self.manifests, self.logs];
        for server in &self.servers {
            if let Some(timeout) = server.connected {
                gateway.wait_state(&server.name, "Connected", timeout);
            }
        }
        gateway
    }
}

impl Server {
    fn render(&self) -> String {
        let (spec, default_timeout) = match &self.kind {
            Kind::Raw(yaml) => return yaml.clone(),
            Kind::Http(url) => (
                format!("  type: streamable-http\n  url: {}\n", quoted(url)),
                true,
            ),
            Kind::Sse(url) => (format!("  type: sse\n  url: {}\n", quoted(url)), true),
            Kind::Sim { cluster, flags } => {
                let mut args = vec!["sim-cluster".to_string()];
                args.extend(flags.iter().cloned());
                args.extend(["--cluster".to_string(), cluster.clone()]);
                (stdio_spec(env!("CARGO_BIN_EXE_flotilla"), &args), true)
            }
            Kind::Stdio { command, args } => (stdio_spec(command, args), true),
        };
        let mut yaml = format!(
            "apiVersion: flotilla.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {}\n",
            self.name
        );
        if !self.labels.is_empty() {
            yaml.push_str("  labels:\n");
            for (key, value) in &self.labels {
                yaml.push_str(&format!("    {key}: {}\n", quoted(value)));
            }
        }
        yaml.push_str("spec:\n");
        yaml.push_str(&spec);
        if default_timeout && !self.spec.contains("  timeout:") {
            yaml.push_str("  timeout: 10\n");
        }
        if !self.env.is_empty() {
            yaml.push_str("  env:\n");
            for (key, value) in &self.env {
                yaml.push_str(&format!("    {key}: {}\n", quoted(value)));
            }
        }
        yaml.push_str(&self.spec);
        yaml
    }
}

fn stdio_spec(command: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| quoted(a)).collect();
    format!(
        "  type: stdio\n  command: {}\n  args: [{}]\n",
        quoted(command),
        args.join(", ")
    )
}

/// A YAML double-quoted scalar (JSON's string syntax is valid YAML).
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

impl Gateway {
    /// The manifest directory this gateway watches.
    pub fn manifests(&self) -> &Path {
        &self.dir
    }

    /// The directory of the gateway's log (and of the fleet's peers').
    pub fn logs(&self) -> &Path {
        self.proc.log.parent().expect("log dir")
    }

    /// Writes (or replaces) one manifest file in the watched directory.
    pub fn write_manifest(&self, file: &str, yaml: &str) {
        super::write_manifest(&self.dir, file, yaml);
    }

    /// Removes one manifest file from the watched directory.
    pub fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.dir.join(file))
            .unwrap_or_else(|e| panic!("removing manifest {file}: {e}"));
    }
}
