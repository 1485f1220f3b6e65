//! The fleet page (`/ui`) as a person sees it: the gateway runs the
//! quickstart fleet (`examples/quickstart`, three simulated clusters in one
//! family), a client makes a few tool calls, and Debian's Chromium, headless,
//! loads the page: its screenshot must be a real picture of the page (a PNG
//! of the window's size with far more image data than a blank window), and
//! its DOM must list the three clusters as Connected with the calls made
//! per tool. The page's security headers are checked on the raw response.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{Gateway, Proc, call, connect, peers, repo, text_of, wait_tool};

const CLUSTERS: [&str; 3] = ["cluster-a", "cluster-b", "cluster-c"];
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

/// Runs headless Chromium with `args` on `url` (a fresh profile each time);
/// returns what it printed. A browser that crashed (killed by a signal: once,
/// on its very first run on a machine, it segfaulted here) is run again, once.
fn chromium(name: &str, args: &[String], url: &str, dir: &Path) -> String {
    match chromium_once(name, args, url, dir) {
        Ok(out) => out,
        Err(crash) => {
            eprintln!("{crash}; running it again");
            chromium_once(&format!("{name}-again"), args, url, dir)
                .unwrap_or_else(|e| panic!("{e}"))
        }
    }
}

/// One Chromium run (profile `dir/<name>-profile`); killed with its whole
/// process group if it has not finished within a minute (and when dropped).
/// `Err` when it was killed by a signal.
fn chromium_once(name: &str, args: &[String], url: &str, dir: &Path) -> Result<String, String> {
    use std::os::unix::process::ExitStatusExt;
    let profile = dir.join(format!("{name}-profile"));
    std::fs::create_dir_all(&profile).unwrap();
    let mut cmd = Command::new(peers().get("CHROMIUM"));
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .env("HOME", &profile);
    let mut proc = Proc::spawn(name, cmd, dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = String::new();
    loop {
        if let Some(line) = proc.next_line(Duration::from_millis(100)) {
            out.push_str(&line);
            out.push('\n');
            continue;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            // What it printed just before it exited.
            while let Some(line) = proc.next_line(Duration::from_millis(200)) {
                out.push_str(&line);
                out.push('\n');
            }
            if status.signal().is_some() {
                return Err(format!("{name}: {status}; log:\n{}", proc.log_text()));
            }
            assert!(
                status.success(),
                "{name}: {status}; log:\n{}",
                proc.log_text()
            );
            return Ok(out);
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not finish within a minute; log:\n{}",
            proc.log_text()
        );
    }
}

/// A PNG's width, height and the bytes of its image data (IDAT chunks).
fn png_facts(png: &[u8]) -> (u32, u32, usize) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG ({} bytes)",
        png.len()
    );
    let (mut width, mut height, mut idat) = (0, 0, 0);
    let mut at = 8;
    while at + 8 <= png.len() {
        let length = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = at + 8;
        assert!(data + length + 4 <= png.len(), "truncated PNG chunk");
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(png[data..data + 4].try_into().unwrap());
                height = u32::from_be_bytes(png[data + 4..data + 8].try_into().unwrap());
            }
            b"IDAT" => idat += length,
            b"IEND" => return (width, height, idat),
            _ => {}
        }
        at = data + length + 4;
    }
    panic!("PNG without IEND");
}

/// The text of each cell of the row whose opening tag holds `marker`.
fn row_cells(html: &str, marker: &str) -> Vec<String> {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("no row {marker} in:\n{html}"));
    let row = &html[start..];
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    row.split("<td")
        .skip(1)
        .map(|cell| {
            let mut text = String::new();
            let mut in_tag = true; // the rest of the <td ...> tag
            for c in cell.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.trim().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn headless_chromium_shows_the_quickstart_fleet_and_its_calls() {
    let logs = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(&repo().join("examples/quickstart"), logs.path());
    for cluster in CLUSTERS {
        gateway.wait_state(
            &format!("{cluster}-mcp-kubernetes"),
            "Connected",
            Duration::from_secs(30),
        );
    }
    let client = connect(&gateway.url()).await;
    wait_tool(&client, "x_kubernetes_cluster_info").await;
    for _ in 0..3 {
        let one = call(
            &client,
            "x_kubernetes_cluster_info",
            json!({"management_cluster": "cluster-a"}),
        )
        .await;
        assert_ne!(one.is_error, Some(true), "{}", text_of(&one));
    }
    // A fan-out: one upstream call per cluster.
    let all = call(
        &client,
        "x_kubernetes_cluster_info",
        json!({"management_cluster": "*"}),
    )
    .await;
    assert!(text_of(&all).contains("3 succeeded"), "{}", text_of(&all));
    let missing = call(
        &client,
        "x_kubernetes_get_pod_logs",
        json!({"management_cluster": "prod-us", "namespace": "default", "pod": "no-such-pod"}),
    )
    .await;
    assert_eq!(missing.is_error, Some(true), "{}", text_of(&missing));
    client.cancel().await.ok();

    let url = format!("http://127.0.0.1:{}/ui", gateway.port);
    // The raw response: HTML with headers that keep it inert and uncached.
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let csp = header("content-security-policy");
    assert!(
        csp.starts_with("default-src 'none'; style-src 'unsafe-inline'"),
        "{csp}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-frame-options"), "DENY");
    let served = response.text().await.unwrap();
    assert!(!served.contains("<script"), "{served}");

    let dir = logs.path();
    // The screenshot: a PNG of the window, with the page drawn in it.
    let shot = dir.join("fleet.png");
    chromium(
        "chromium-screenshot",
        &[
            format!("--screenshot={}", shot.display()),
            format!("--window-size={WIDTH},{HEIGHT}"),
        ],
        &url,
        dir,
    );
    let png = std::fs::read(&shot).expect("chromium wrote no screenshot");
    let (width, height, idat) = png_facts(&png);
    assert_eq!((width, height), (WIDTH, HEIGHT), "screenshot size");
    // A window of one colour compresses to a few KiB (5 KiB of image data
    // for this size, measured; deflate's best is about 1:1000 and 1280x900 RGB
    // is 3.5 MB); this page's text, tables and badges took 130 KiB.
    assert!(
        idat > 50 * 1024,
        "the screenshot looks blank: {idat} bytes of image data"
    );
    if let Ok(keep) = std::env::var("FLOTILLA_UI_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }

    // The DOM as Chromium parsed it: the three clusters, Connected, and the calls.
    let dom = chromium("chromium-dom", &["--dump-dom".to_string()], &url, dir);
    assert!(dom.contains("<h3>kubernetes <small>"), "{dom}");
    assert!(dom.contains("3 of 3 servers connected"), "{dom}");
    for (cluster, alias) in CLUSTERS.iter().zip(["prod-eu", "prod-us", "staging-eu"]) {
        let cells = row_cells(&dom, &format!("data-server=\"{cluster}-mcp-kubernetes\""));
        // Instance, server, state, tools, protocol, aliases, labels, last error.
        assert_eq!(cells.len(), 8, "{cells:?}");
        assert_eq!(cells[0], *cluster, "{cells:?}");
        assert!(
            cells[1].starts_with(&format!("{cluster}-mcp-kubernetes")),
            "{cells:?}"
        );
        assert!(cells[2].contains("Connected"), "{cells:?}");
        assert_eq!(cells[3], "4", "the sim's four tools: {cells:?}");
        assert!(!cells[4].is_empty() && cells[4] != "-", "{cells:?}");
        assert_eq!(cells[5], alias, "{cells:?}");
        assert!(cells[6].contains("env="), "{cells:?}");
        assert_eq!(cells[7], "", "no error: {cells:?}");
    }
    // Tool, served by, then the last five minutes (calls/min, calls, errors,
    // error rate, mean) and since start (calls, errors, error rate, mean, p50, p95).
    let info = row_cells(&dom, "data-tool=\"x_kubernetes_cluster_info\"");
    assert_eq!(info[0], "x_kubernetes_cluster_info", "{info:?}");
    assert_eq!(info[1], "family kubernetes", "{info:?}");
    assert_eq!(
        &info[3..6],
        ["6", "0", "0%"],
        "3 + a fan-out to 3: {info:?}"
    );
    assert_eq!(&info[7..10], ["6", "0", "0%"], "{info:?}");
    let logs_row = row_cells(&dom, "data-tool=\"x_kubernetes_get_pod_logs\"");
    assert_eq!(&logs_row[3..6], ["1", "1", "100.0%"], "{logs_row:?}");
    assert_eq!(&logs_row[7..10], ["1", "1", "100.0%"], "{logs_row:?}");
    let pods = row_cells(&dom, "data-tool=\"x_kubernetes_list_pods\"");
    assert_eq!(&pods[3..5], ["0", "0"], "never called: {pods:?}");
    assert!(dom.contains("id=\"problems\""), "{dom}");
}
