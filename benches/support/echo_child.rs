//! The echo upstream of the SSO and agents benchmarks: the benchmark binary
//! itself, run again with `--upstream` (two echo servers, one tool each;
//! `support/upstream.rs`), in a process of its own so its CPU is not the
//! gateway's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::Proc;

/// Serves as the echo upstream when this binary was started with
/// `--upstream`; true when it did (and the caller should return).
pub fn serve_if_asked() -> bool {
    let asked = std::env::args().any(|a| a == "--upstream");
    if asked {
        crate::upstream::run(2, 1, 1, false);
    }
    asked
}

/// Starts this binary as the echo upstream (its log in `logs`); returns it
/// and the port it serves on.
pub fn start(logs: &Path) -> Result<(Proc, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--upstream");
    let upstream = Proc::spawn("upstream", cmd, logs);
    let port = upstream
        .wait_line("READY", Duration::from_secs(30))
        .trim_start_matches("READY ")
        .trim()
        .to_string();
    Ok((upstream, port))
}
