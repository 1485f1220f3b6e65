//! Child processes of the benchmark and what /proc says about them.
//!
//! Every child is spawned from the main thread with `PR_SET_PDEATHSIG`
//! (SIGKILL), stays in the benchmark's process group (so a terminal Ctrl-C
//! reaches it too), and is stopped by pid — SIGTERM, then SIGKILL after a
//! grace period — when its [`Proc`] is dropped, including during a panic.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Environment variables that could route loopback traffic through a proxy.
const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: PathBuf,
    /// Extra pids to kill after the main one exits (nginx workers).
    pub companions: Vec<i32>,
}

impl Proc {
    /// Spawns `cmd`: stdin closed, stdout lines readable with
    /// [`Proc::wait_line`], stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc, String> {
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child
        // between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawning {name}: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
            log,
            companions: Vec::new(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => continue,
                Err(_) => {
                    let exited = self.child.try_wait().ok().flatten();
                    return Err(format!(
                        "{} did not print {needle:?} within {timeout:?} (exit status: {exited:?}); log {}:\n{}",
                        self.name,
                        self.log.display(),
                        self.log_tail(4000)
                    ));
                }
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_tail(&self, max: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL; companions are killed after.
    pub fn stop(&mut self) {
        let pid = self.pid();
        if self.is_running() {
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !self.is_running() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.is_running() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = self.child.wait();
        for &companion in &self.companions {
            // Only if it is still the process we started (same name, our child's child).
            if proc_comm(companion).as_deref() == Some(self.name_of_binary()) {
                unsafe { libc::kill(companion, libc::SIGKILL) };
            }
        }
        self.companions.clear();
    }

    fn name_of_binary(&self) -> &str {
        self.name.split('-').next().unwrap_or(&self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

pub fn wait_port(port: u16, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "nothing listened on 127.0.0.1:{port} within {timeout:?}"
    ))
}

fn clock_ticks_per_sec() -> u64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Fields of /proc/<pid>/stat after the `(comm)` field; index 0 is field 3 (state).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn proc_comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// utime + stime of one process, in microseconds.
pub fn cpu_us(pid: i32) -> u64 {
    let Some(fields) = stat_fields(pid) else {
        return 0;
    };
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    ticks * 1_000_000 / clock_ticks_per_sec()
}

/// utime + stime of several processes, in microseconds.
pub fn cpu_us_all(pids: &[i32]) -> u64 {
    pids.iter().map(|&p| cpu_us(p)).sum()
}

/// Busy CPU time of the whole machine (all cores) from /proc/stat, in µs.
pub fn machine_busy_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy * 1_000_000 / clock_ticks_per_sec()
}

/// Direct children of `parent` (by scanning /proc).
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat_fields(pid).and_then(|f| f.get(1).and_then(|p| p.parse::<i32>().ok()))
                == Some(parent)
        })
        .collect()
}

/// Voluntary + involuntary context switches of all live threads of a process.
pub fn ctx_switches(pid: i32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Context switches of several processes.
pub fn ctx_switches_all(pids: &[i32]) -> u64 {
    pids.iter().map(|&p| ctx_switches(p)).sum()
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time of this process plus its children that were already waited for
/// (utime + stime + cutime + cstime), in microseconds.
pub fn self_total_cpu_us() -> u64 {
    let Some(fields) = stat_fields(std::process::id() as i32) else {
        return 0;
    };
    let ticks: u64 = fields[11..15]
        .iter()
        .map(|v| v.parse::<u64>().unwrap_or(0))
        .sum();
    ticks * 1_000_000 / clock_ticks_per_sec()
}

/// Measures the CPU other processes use while a section runs: start it
/// before the section spawns anything, finish it after every child it
/// spawned was stopped (and so waited for).
pub struct Interference {
    busy: u64,
    ours: u64,
    wall: Instant,
}

impl Interference {
    pub fn start() -> Self {
        Self {
            busy: machine_busy_us(),
            ours: self_total_cpu_us(),
            wall: Instant::now(),
        }
    }

    /// Other processes' CPU use, in cores (0.25 = a quarter of one core).
    pub fn finish(&self) -> f64 {
        let busy = machine_busy_us().saturating_sub(self.busy);
        let ours = self_total_cpu_us().saturating_sub(self.ours);
        busy.saturating_sub(ours) as f64 / 1e6 / self.wall.elapsed().as_secs_f64()
    }
}

/// The benchmark's own CPU time (client side), in microseconds.
pub fn self_cpu_us() -> u64 {
    cpu_us(std::process::id() as i32)
}

// ---------------------------------------------------------------- nginx

/// Finds nginx; installs it with apt-get when missing and running as root.
/// Returns the binary or why the nginx target is skipped.
pub fn find_or_install_nginx() -> Result<PathBuf, String> {
    let find = || {
        [
            "/usr/sbin/nginx",
            "/usr/bin/nginx",
            "/usr/local/sbin/nginx",
            "/usr/local/bin/nginx",
        ]
        .iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("nginx"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find(|p| p.is_file())
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    if std::env::var_os("FLOTILLA_BENCH_NO_INSTALL").is_some() {
        return Err("nginx is not installed (FLOTILLA_BENCH_NO_INSTALL set)".into());
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err("nginx is not installed and the benchmark is not root".into());
    }
    eprintln!("bench: nginx not found; installing it with apt-get (root)");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !apt(&["install", "-y", "-q", "nginx-light"]) && !apt(&["install", "-y", "-q", "nginx"]) {
        apt(&["update", "-q"]);
        apt(&["install", "-y", "-q", "nginx"]);
    }
    find().ok_or_else(|| "nginx is not installed and apt-get could not install it".into())
}

pub fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: ", "")
        })
        .unwrap_or_default()
}

/// Starts nginx as a plain keep-alive reverse proxy in front of
/// `127.0.0.1:upstream_port`; returns it and its port.
pub fn start_nginx(bin: &Path, dir: &Path, upstream_port: u16) -> Result<(Proc, u16), String> {
    let upstream = format!(
        "upstream echo_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"
    );
    // Also a trace sink: the traced gateway's OTLP exports are answered
    // 200 and dropped.
    let location = r#"location = /v1/traces {
            return 200;
        }
        location / {
            proxy_pass http://echo_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
        }"#;
    start_nginx_conf(bin, dir, "nginx", &upstream, location)
}

/// Starts nginx serving the files under `root` (a transfer-cost floor).
pub fn start_nginx_static(bin: &Path, dir: &Path, root: &Path) -> Result<(Proc, u16), String> {
    let location = format!(
        "location / {{
            root {};
            default_type application/json;
        }}",
        root.display()
    );
    start_nginx_conf(bin, dir, "nginx-static", "", &location)
}

fn start_nginx_conf(
    bin: &Path,
    dir: &Path,
    name: &str,
    upstream: &str,
    location: &str,
) -> Result<(Proc, u16), String> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("tmp")).map_err(|e| e.to_string())?;
    let port = free_port();
    let conf = nginx_conf(&prefix, port, "warn", upstream, location);
    let proc = spawn_nginx(bin, dir, name, &prefix, &conf, port)?;
    Ok((proc, port))
}

/// nginx's configuration: one server on `127.0.0.1:port` with `location`,
/// `upstream` beside it, every path under `prefix`.
fn nginx_conf(prefix: &Path, port: u16, log_level: &str, upstream: &str, location: &str) -> String {
    let p = prefix.display();
    // As root, workers would run as `nobody` and could not read the
    // private temp dir; nothing here needs the privilege drop.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    format!(
        r#"daemon off;
{user}
master_process on;
worker_processes auto;
pid {p}/nginx.pid;
error_log {p}/error.log {log_level};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    {upstream}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        {location}
    }}
}}
"#
    )
}

/// Writes `conf` under `prefix` and starts nginx on it; returns once it
/// listens on `port` and its workers are known.
fn spawn_nginx(
    bin: &Path,
    dir: &Path,
    name: &str,
    prefix: &Path,
    conf: &str,
    port: u16,
) -> Result<Proc, String> {
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(prefix.join("error.log"));
    let mut proc = Proc::spawn(name, cmd, dir)?;
    if let Err(e) = wait_port(port, Duration::from_secs(10)) {
        let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
        proc.stop();
        return Err(format!("{e}; nginx error log:\n{log}"));
    }
    // Workers are forked right after the master binds.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        proc.companions = children_of(proc.pid());
        if !proc.companions.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(proc)
}

/// The proxy location of [`NginxPool`]: keep-alive, nothing buffered.
const PROXY_LOCATION: &str = r#"location / {
            proxy_pass http://pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
        }"#;

/// nginx in front of several servers in round-robin, with no affinity
/// (nginx's default balancing; its default `proxy_next_upstream error
/// timeout` passes on a request a server refused before reading it), that
/// can be repointed while it runs, as a Service's endpoints change: the
/// configuration is rewritten and the master re-reads it on SIGHUP.
#[allow(dead_code)] // each bench binary compiles this module; only `replicas` uses it
pub struct NginxPool {
    pub proc: Proc,
    pub port: u16,
    prefix: PathBuf,
}

#[allow(dead_code)] // only `replicas` uses it
impl NginxPool {
    /// Starts nginx (`name`, files under `dir/name`) over `servers` (ports on 127.0.0.1).
    pub fn start(bin: &Path, dir: &Path, name: &str, servers: &[u16]) -> Result<Self, String> {
        let prefix = dir.join(name);
        std::fs::create_dir_all(prefix.join("tmp")).map_err(|e| e.to_string())?;
        let port = free_port();
        let conf = Self::conf(&prefix, port, servers);
        let proc = spawn_nginx(bin, dir, name, &prefix, &conf, port)?;
        Ok(Self { proc, port, prefix })
    }

    fn conf(prefix: &Path, port: u16, servers: &[u16]) -> String {
        let servers: String = servers
            .iter()
            .map(|p| format!("server 127.0.0.1:{p};\n        "))
            .collect();
        let upstream = format!(
            "upstream pool {{
        {servers}keepalive 64;
        keepalive_requests 1000000;
    }}"
        );
        // `notice`: a reload logs "reconfiguring", which `repoint` waits for.
        nginx_conf(prefix, port, "notice", &upstream, PROXY_LOCATION)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// All of nginx's processes: the master and its workers.
    pub fn pids(&self) -> Vec<i32> {
        let mut pids = vec![self.proc.pid()];
        pids.extend(children_of(self.proc.pid()));
        pids
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.prefix.join("error.log"))
            .map(|log| log.matches("reconfiguring").count())
            .unwrap_or(0)
    }

    /// Points nginx at `servers` instead: rewrites its configuration and
    /// sends the master SIGHUP (as `nginx -s reload`); returns once the
    /// new workers are up (they take new connections; old ones finish the
    /// requests they have).
    pub fn repoint(&mut self, servers: &[u16]) -> Result<(), String> {
        let conf = Self::conf(&self.prefix, self.port, servers);
        std::fs::write(self.prefix.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
        let before = self.reloads();
        let old_workers = children_of(self.proc.pid());
        if unsafe { libc::kill(self.proc.pid(), libc::SIGHUP) } != 0 {
            return Err(format!(
                "SIGHUP to nginx: {}",
                std::io::Error::last_os_error()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.reloads() <= before {
            if Instant::now() >= deadline {
                let log =
                    std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default();
                return Err(format!(
                    "nginx did not reload within 10 s; error log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // The new configuration serves once its workers are forked.
        while !children_of(self.proc.pid())
            .iter()
            .any(|pid| !old_workers.contains(pid))
        {
            if Instant::now() >= deadline {
                return Err("nginx started no new workers within 10 s of SIGHUP".into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Old workers that linger are stopped with the master; keep the
        // new ones as companions in case the master is gone first.
        self.proc.companions = children_of(self.proc.pid());
        Ok(())
    }
}
