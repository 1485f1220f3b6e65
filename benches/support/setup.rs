//! What every benchmark needs before it measures: the gateway binary
//! (`target/release/flotilla`, rebuilt when stale), where results go, and a
//! line about the machine for the report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::procs;

pub fn log(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        None => repo_root().join("target"),
    }
}

fn newest_mtime(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| newest_mtime(&e.ok()?.path()))
            .max()
    } else {
        meta.modified().ok()
    }
}

/// The gateway's source state: git commit, plus whether src/ has
/// uncommitted changes.
fn source_state() -> String {
    let root = repo_root();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&[
                "status",
                "--porcelain",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ])
            .is_some_and(|s| !s.is_empty());
            format!(
                "commit {head}{}",
                if dirty {
                    " + uncommitted changes in src/"
                } else {
                    ""
                }
            )
        }
        None => "unknown source state".into(),
    }
}

/// `target/release/flotilla`, rebuilt with `cargo build --release --bin
/// flotilla` when missing or older than src/, Cargo.toml or Cargo.lock.
/// `FLOTILLA_BIN` overrides; `FLOTILLA_BENCH_NO_BUILD=1` never builds.
/// Returns the binary and where it comes from, for the report.
pub fn locate_gateway() -> Result<(PathBuf, String), String> {
    if let Some(bin) = std::env::var_os("FLOTILLA_BIN") {
        return Ok((PathBuf::from(bin), "FLOTILLA_BIN".into()));
    }
    let root = repo_root();
    let bin = target_dir().join("release").join("flotilla");
    let sources = ["src", "Cargo.toml", "Cargo.lock"]
        .iter()
        .filter_map(|p| newest_mtime(&root.join(p)))
        .max();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let fresh = matches!((built, sources), (Some(b), Some(s)) if b >= s);
    if fresh {
        return Ok((bin, format!("built from {}", source_state())));
    }
    let stale = || format!("OLDER than the current src/ ({})", source_state());
    if std::env::var_os("FLOTILLA_BENCH_NO_BUILD").is_some() {
        return if built.is_some() {
            log(format!(
                "{} is older than src/ (FLOTILLA_BENCH_NO_BUILD set; using it anyway)",
                bin.display()
            ));
            Ok((bin, stale()))
        } else {
            Err(format!(
                "{} is missing; run `cargo build --release`",
                bin.display()
            ))
        };
    }
    log(format!(
        "{} is {}; running `cargo build --release --bin flotilla`",
        bin.display(),
        if built.is_some() {
            "older than src/"
        } else {
            "missing"
        }
    ));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "flotilla"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if status.success() && bin.is_file() {
        return Ok((bin, format!("built from {}", source_state())));
    }
    if built.is_some() {
        // src/ is being edited and does not build right now: measure the
        // last good build rather than nothing, and say so.
        log(format!(
            "cargo build --release --bin flotilla failed ({status}); using the older {}",
            bin.display()
        ));
        Ok((bin, stale()))
    } else {
        Err(format!(
            "cargo build --release --bin flotilla failed ({status})"
        ))
    }
}

pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_string(), |s| s.trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB RAM, Linux {}, {rustc}",
        kernel.trim()
    )
}

/// Waits (up to `limit`) until the machine's other processes used less than
/// 10% of a core for 5 seconds in a row, so the figures are not disturbed.
pub fn wait_idle(limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut quiet = 0;
    while quiet < 5 {
        let busy0 = procs::machine_busy_us();
        let ours0 = procs::self_cpu_us();
        std::thread::sleep(Duration::from_secs(1));
        let busy = procs::machine_busy_us().saturating_sub(busy0);
        let foreign = busy.saturating_sub(procs::self_cpu_us() - ours0);
        if foreign < 100_000 {
            quiet += 1;
            continue;
        }
        quiet = 0;
        if Instant::now() >= deadline {
            log(format!(
                "machine still busy ({:.0}% of a core) after {limit:?}; running anyway",
                foreign as f64 / 10_000.0
            ));
            return;
        }
        log(format!(
            "waiting for an idle machine ({:.0}% of a core busy)",
            foreign as f64 / 10_000.0
        ));
    }
}

/// One benchmark run's surroundings: the gateway binary, a work directory
/// (kept with `FLOTILLA_BENCH_KEEP` or when the run fails), a runtime and
/// an HTTP client; waits for an idle machine first when
/// `FLOTILLA_BENCH_WAIT_IDLE` (seconds) is set.
pub struct Run {
    pub bin: PathBuf,
    pub provenance: String,
    pub work: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub http: reqwest::Client,
    keep: bool,
    started: Instant,
}

impl Run {
    /// `prefix` names the work directory (`/tmp/<prefix>...`).
    pub fn start(prefix: &str) -> Result<Run, String> {
        let (bin, provenance) = locate_gateway()?;
        let work = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| e.to_string())?;
        let keep = std::env::var_os("FLOTILLA_BENCH_KEEP").is_some();
        log(format!(
            "gateway {}; work dir {}",
            bin.display(),
            work.path().display()
        ));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let http = rt.block_on(async { crate::client::http_client() });
        if let Some(secs) = std::env::var("FLOTILLA_BENCH_WAIT_IDLE")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            wait_idle(Duration::from_secs(secs));
        }
        Ok(Run {
            bin,
            provenance,
            work,
            rt,
            http,
            keep,
            started: Instant::now(),
        })
    }

    /// Keeps the work directory when asked or when `report` failed; prints
    /// the report and writes it to `target/<file>`.
    pub fn finish(self, report: Result<String, String>, file: &str) -> Result<(), String> {
        if self.keep || report.is_err() {
            let path = self.work.keep();
            log(format!("logs kept in {}", path.display()));
        }
        let md = report?;
        println!("\n{md}");
        let out = target_dir().join(file);
        std::fs::write(&out, &md).map_err(|e| format!("writing {}: {e}", out.display()))?;
        log(format!(
            "done in {:.0} s; report written to {}",
            self.started.elapsed().as_secs_f64(),
            out.display()
        ));
        Ok(())
    }
}
