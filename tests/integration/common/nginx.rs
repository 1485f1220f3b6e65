//! nginx in front of gateways, as a platform would put it: a reverse proxy
//! (round-robin, no affinity, WebSocket upgrades passed), optionally
//! terminating TLS. Debian `nginx-light` (installed by
//! `tests/peers/install.sh`) gets its listening socket from the test, bound
//! to port 0 and handed over as an inherited socket (nginx's `NGINX`
//! variable), so no port is guessed.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::Proc;

/// nginx in front of some gateways.
pub struct Nginx {
    proc: Proc,
    pub port: u16,
    dir: PathBuf,
    /// Certificate and key files: nginx terminates TLS with them.
    tls: Option<(PathBuf, PathBuf)>,
}

fn nginx_binary() -> &'static str {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("nginx is installed (tests/peers/install.sh installs nginx-light)")
}

impl Nginx {
    pub fn start(dir: &Path, upstreams: &[u16]) -> Nginx {
        Self::start_with(dir, upstreams, None)
    }

    /// Like [`Nginx::start`], terminating TLS with `tls` (certificate, key).
    pub fn start_with(dir: &Path, upstreams: &[u16], tls: Option<(PathBuf, PathBuf)>) -> Nginx {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a port for nginx");
        let port = listener.local_addr().unwrap().port();
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let nginx = Nginx {
            proc: Self::spawn(&dir, &listener),
            port,
            dir,
            tls,
        };
        nginx.configure(upstreams);
        nginx.reload();
        nginx
    }

    fn spawn(dir: &Path, listener: &TcpListener) -> Proc {
        let conf = dir.join("nginx.conf");
        // A first configuration with no upstream yet; `start` writes the real one.
        std::fs::write(
            &conf,
            Self::render(dir, listener.local_addr().unwrap().port(), &[], None),
        )
        .unwrap();
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new(nginx_binary());
        cmd.arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .env("NGINX", "3;");
        // The listening socket becomes the child's fd 3, open across exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let proc = Proc::spawn("nginx", cmd, dir);
        wait_until(Duration::from_secs(10), "nginx starts", || {
            std::fs::read_to_string(dir.join("error.log"))
                .is_ok_and(|log| log.contains("inherited sockets"))
                && dir.join("nginx.pid").exists()
        });
        proc
    }

    fn render(
        dir: &Path,
        port: u16,
        upstreams: &[u16],
        tls: Option<&(PathBuf, PathBuf)>,
    ) -> String {
        let d = dir.display();
        let (ssl, certificates) = match tls {
            Some((cert, key)) => (
                " ssl",
                format!(
                    "ssl_certificate {};\n        ssl_certificate_key {};",
                    cert.display(),
                    key.display()
                ),
            ),
            None => ("", String::new()),
        };
        let servers: String = if upstreams.is_empty() {
            "server 127.0.0.1:9 down;".into()
        } else {
            upstreams
                .iter()
                .map(|p| format!("server 127.0.0.1:{p} max_fails=0;\n"))
                .collect()
        };
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        format!(
            r#"daemon off;
{user}
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 512; }}
http {{
    log_format upstream '$request_method $upstream_addr $status';
    access_log {d}/access.log upstream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    # WebSocket upgrades (agents) pass; other requests keep their keep-alive upstream connection.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}
    upstream replicas {{
        {servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
        {certificates}
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 120s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"#
        )
    }

    pub fn configure(&self, upstreams: &[u16]) {
        std::fs::write(
            self.dir.join("nginx.conf"),
            Self::render(&self.dir, self.port, upstreams, self.tls.as_ref()),
        )
        .unwrap();
    }

    /// Re-reads the configuration (a SIGHUP to the master, as `nginx -s reload`).
    pub fn reload(&self) {
        let before = self.reloads();
        let status = Command::new("kill")
            .args(["-HUP", &self.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_until(Duration::from_secs(10), "nginx reloads", || {
            self.reloads() > before
        });
        // The old worker finishes its requests; new ones go to the new worker.
        std::thread::sleep(Duration::from_millis(200));
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.dir.join("error.log"))
            .map(|log| log.matches("reconfiguring").count())
            .unwrap_or(0)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("{}/mcp", self.base())
    }

    /// The replicas (`127.0.0.1:port`) that answered POSTs with 200 or 202.
    pub fn posts_served_by(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
        let mut served: Vec<String> = log
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let (method, upstream, status) = (fields.next()?, fields.next()?, fields.next()?);
                (method == "POST" && (status == "200" || status == "202"))
                    .then(|| upstream.to_string())
            })
            .collect();
        served.sort();
        served.dedup();
        served
    }
}

/// Polls `check` every 50 ms until it holds; panics after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
