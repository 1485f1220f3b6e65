//! The audit log: one JSON line per tool call, written off the call's path
//! to stdout (default) or to a file (`audit.file`, appended, mode 0600,
//! rotated past `audit.maxFileMib` with `audit.maxFiles` kept).
//!
//! A line (fields absent when unknown; see the README's "Audit log"):
//!
//! ```json
//! {"time":"2026-11-26T07:30:00.123Z","kind":"tool_call",
//!  "caller":{"issuer":"https://dex.example","subject":"CgR1c2Vy","name":"ana","client":"claude"},
//!  "tool":"x_kubernetes_pods_list","outcome":"ok","durationMs":12.5,
//!  (and "fanOut":true when a family tool ran on several instances)
//!  "targets":[{"server":"kubernetes-a","family":"kubernetes","instance":"a",
//!              "upstreamTool":"pods_list","outcome":"ok","durationMs":12.1}],
//!  "argumentsSha256":"9f86d0…","traceId":"4bf92f3577b34da6a3ce929d0e0e4736"}
//! ```
//!
//! `caller` is null when the gateway runs without `auth`. `argumentsSha256`
//! is the SHA-256 of the arguments as compact JSON with keys sorted, so equal
//! arguments hash equally whatever order a client sent them in; the
//! arguments themselves appear (`arguments`) only with
//! `audit.includeArguments: true`. No line carries a token or a Secret value.
//!
//! Lines queue in a bounded channel (65,536) drained by one writer thread
//! in batches gathered over 10 ms (one write per batch); a
//! line that finds the queue full is dropped, counted in
//! `flotilla_audit_lines_dropped_total` and warned about, rather than slowing
//! calls down behind a stalled disk.

use std::io::Write as _;
use std::path::PathBuf;

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

/// Lines waiting to be written, at most.
const QUEUE: usize = 65_536;
/// How long the writer gathers lines before it writes them.
const GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// Where audit lines go, from the config file's `audit` section.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    pub enabled: bool,
    /// Append to this file; `None` writes to stdout.
    pub file: Option<PathBuf>,
    /// Put the call's arguments in the line, not only their hash.
    pub include_arguments: bool,
    /// The file is rotated when it passes this size.
    pub max_file_bytes: u64,
    /// Rotated files kept (`audit.log.1` the newest); older ones are removed.
    pub max_files: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
            include_arguments: false,
            max_file_bytes: 100 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// Who made a call, as the audit line names them.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditCaller {
    pub issuer: String,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The OAuth client the caller's token was issued to, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// One upstream a call reached.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditTarget {
    pub server: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub family: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    pub upstream_tool: String,
    pub outcome: &'static str,
    pub duration_ms: f64,
}

/// One audit line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditLine<'a> {
    pub time: String,
    pub kind: &'static str,
    pub caller: Option<&'a AuditCaller>,
    pub tool: &'a str,
    /// A family tool called on several instances at once.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fan_out: bool,
    pub outcome: &'static str,
    pub duration_ms: f64,
    pub targets: &'a [AuditTarget],
    pub arguments_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// The policy rule that denied the call or asked for confirmation
    /// (`<policy>/<rule>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_rule: Option<&'a str>,
}

/// The SHA-256 (hex) of `arguments` as compact JSON with sorted keys
/// (serde_json's maps are ordered by key in this build).
pub fn arguments_hash(arguments: Option<&serde_json::Map<String, serde_json::Value>>) -> String {
    let empty = serde_json::Map::new();
    let text = serde_json::to_vec(arguments.unwrap_or(&empty)).unwrap_or_default();
    hex(&Sha256::digest(&text))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The audit log's writing end. Cheap to share; the writer task ends when
/// the last handle is gone, after writing what is queued.
#[derive(Clone)]
pub struct AuditLog {
    queue: Option<mpsc::Sender<String>>,
    include_arguments: bool,
    dropped: Counter,
}

impl AuditLog {
    /// No audit log (tests, or `audit.enabled: false`).
    pub fn off() -> Self {
        Self {
            queue: None,
            include_arguments: false,
            dropped: Counter::default(),
        }
    }

    /// Opens the destination and starts the writer. `dropped` counts lines
    /// lost to a full queue.
    pub fn start(settings: &AuditSettings, dropped: Counter) -> anyhow::Result<Self> {
        if !settings.enabled {
            return Ok(Self::off());
        }
        let sink = match &settings.file {
            Some(path) => Sink::File(RotatingFile::open(
                path.clone(),
                settings.max_file_bytes.max(1),
                settings.max_files,
            )?),
            None => Sink::Stdout(std::io::stdout()),
        };
        let (queue, lines) = mpsc::channel(QUEUE);
        // Owned by the queue: it ends when every sender is dropped.
        std::thread::Builder::new()
            .name("flotilla-audit".into())
            .spawn(move || write_lines(lines, sink))?;
        Ok(Self {
            queue: Some(queue),
            include_arguments: settings.include_arguments,
            dropped,
        })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Lines queued and not yet handed to the writer.
    pub fn queued(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |queue| queue.max_capacity() - queue.capacity())
    }

    pub fn include_arguments(&self) -> bool {
        self.include_arguments
    }

    /// Queues one line.
    pub fn write(&self, line: &AuditLine<'_>) {
        let Some(queue) = &self.queue else {
            return;
        };
        let Ok(mut text) = serde_json::to_string(line) else {
            return;
        };
        text.push('\n');
        if queue.try_send(text).is_err() {
            self.dropped.inc();
            tracing::warn!(
                tool = line.tool,
                "audit queue full; an audit line was dropped"
            );
        }
    }
}

fn open_append(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path).with_context(|| {
        format!(
            "cannot open the audit file {} for appending",
            path.display()
        )
    })
}

/// Where the writer puts lines.
enum Sink {
    Stdout(std::io::Stdout),
    File(RotatingFile),
}

/// The audit file, rotated by size: past `max_bytes` it becomes
/// `<file>.1` (`.1` becomes `.2`, and so on up to `keep`) and a new file
/// is started, so the log never takes more than about `(keep + 1) *
/// max_bytes` of disk.
struct RotatingFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    fn open(path: PathBuf, max_bytes: u64, keep: u32) -> anyhow::Result<Self> {
        let file = open_append(&path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path,
            file,
            written,
            max_bytes,
            keep,
        })
    }

    fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
        if self.written > 0 && self.written + batch.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(batch)?;
        self.written += batch.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = open_append(&self.path).map_err(std::io::Error::other)?;
        self.written = 0;
        Ok(())
    }
}

/// The writer: a blocking thread, so a slow disk never holds a runtime
/// worker. After the first line of a batch it waits [`GATHER`] for more, so
/// under load it wakes (and writes) about a hundred times a second instead
/// of once per call; a line reaches the file at most that much later.
fn write_lines(mut lines: mpsc::Receiver<String>, mut sink: Sink) {
    let mut batch = Vec::with_capacity(256 * 1024);
    while let Some(line) = lines.blocking_recv() {
        std::thread::sleep(GATHER);
        batch.clear();
        batch.extend_from_slice(line.as_bytes());
        while let Ok(line) = lines.try_recv() {
            batch.extend_from_slice(line.as_bytes());
        }
        let written = match &mut sink {
            Sink::Stdout(out) => {
                let mut out = out.lock();
                out.write_all(&batch).and_then(|()| out.flush())
            }
            Sink::File(file) => file.write_batch(&batch),
        };
        if let Err(error) = written {
            eprintln!("flotilla: writing the audit log failed: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_arguments_hash_equally_whatever_their_order() {
        type Map = serde_json::Map<String, serde_json::Value>;
        let a: Map = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":[1,2]}}"#).unwrap();
        let b: Map = serde_json::from_str(r#"{ "a": {"x":[1,2],"y":2}, "b": 1 }"#).unwrap();
        let c: Map = serde_json::from_str(r#"{"b":2}"#).unwrap();
        assert_eq!(arguments_hash(Some(&a)), arguments_hash(Some(&b)));
        assert_ne!(arguments_hash(Some(&a)), arguments_hash(Some(&c)));
        // No arguments hash as an empty object does.
        assert_eq!(arguments_hash(None), arguments_hash(Some(&Map::new())));
        assert_eq!(arguments_hash(None).len(), 64);
    }

    #[test]
    fn lines_reach_the_file_one_json_object_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::start(
            &AuditSettings {
                file: Some(path.clone()),
                ..AuditSettings::default()
            },
            Counter::default(),
        )
        .unwrap();
        let caller = AuditCaller {
            issuer: "https://idp".into(),
            subject: "u1".into(),
            name: None,
            client: None,
            groups: vec![],
        };
        for tool in ["a", "b"] {
            log.write(&AuditLine {
                time: "t".into(),
                kind: "tool_call",
                caller: Some(&caller),
                tool,
                fan_out: false,
                outcome: "ok",
                duration_ms: 1.0,
                targets: &[],
                arguments_sha256: "h",
                arguments: None,
                trace_id: None,
                policy_rule: None,
            });
        }
        drop(log);
        let text = (0..200)
            .find_map(|_| {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.lines().count() == 2 {
                    return Some(text);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            })
            .expect("two lines written");
        let tools: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tool"].to_string())
            .collect();
        assert_eq!(tools, [r#""a""#, r#""b""#]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn the_file_is_rotated_by_size_and_old_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut file = RotatingFile::open(path.clone(), 100, 2).unwrap();
        for n in 0..7 {
            file.write_batch(format!("{n:>59}\n").as_bytes()).unwrap();
        }
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        // 60 bytes a batch, 100 at most a file: one batch per file.
        assert_eq!(read("audit.log").trim(), "6");
        assert_eq!(read("audit.log.1").trim(), "5");
        assert_eq!(read("audit.log.2").trim(), "4");
        assert!(!dir.path().join("audit.log.3").exists());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 3);
    }
}
