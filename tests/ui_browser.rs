//! The web UI end to end in headless Chromium, driven over the Chrome
//! DevTools Protocol (a websocket; `tungstenite`): load the page of a running
//! job, see checkpoints appear in the history table, open a vertex, click
//! Kill on a subtask, see the restart count go up, trigger a checkpoint from
//! the button. A screenshot is saved (into `$WEIR_UI_SCREENSHOT_DIR` when set,
//! else the test's temporary directory) and its path printed.
//!
//! Chromium is Debian's `chromium` package: `tests/run.sh` installs it when
//! missing (as root). Without it this test fails with the install command;
//! `tests/run.sh`, when it cannot install chromium, leaves the test out by
//! name (`--skip`), so cargo counts it as filtered out, never as passed.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{get_json, wait_for};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use weir::prelude::*;

fn find_chromium() -> Option<String> {
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p.display().to_string());
            }
        }
    }
    None
}

/// Kills the browser however the test ends.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools protocol session with one page.
struct Cdp {
    ws: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    next: u64,
}

impl Cdp {
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(tungstenite::Message::text(msg))
            .unwrap_or_else(|e| panic!("CDP send {method}: {e}"));
        loop {
            let m = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("CDP read for {method}: {e}"));
            let tungstenite::Message::Text(t) = m else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("CDP JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("CDP {method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; returns its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("JavaScript error in {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    fn wait_until(&mut self, what: &str, secs: u64, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr);
            if !v.is_null() && v != json!(false) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for {what} ({expr})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 byte {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|c| u32::from(val(*c))).collect();
        let n = v.iter().fold(0u32, |acc, x| acc << 6 | x) << (6 * (4 - v.len()));
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..v.len()]);
    }
    out
}

/// Starts headless Chromium on `url`; returns it and a session with its page.
fn launch(chromium: &str, profile: &std::path::Path, url: &str) -> (Browser, Cdp) {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            "--window-size=1400,1600",
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {chromium}: {e}"));
    let stderr = child.stderr.take().expect("stderr");
    let browser = Browser(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                let _ = tx.send(ws.trim().to_string());
            }
        }
    });
    let ws_url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("Chromium did not print its DevTools address within 60 s");
    let port = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .and_then(|hp| hp.rsplit(':').next())
        .expect("DevTools port")
        .to_string();
    let targets = wait_for("Chromium's page target", 30, || {
        let (s, body) = common::http("GET", &format!("http://127.0.0.1:{port}/json/list"), None);
        let v: Value = serde_json::from_str(&body).ok()?;
        (s == 200
            && v.as_array()
                .is_some_and(|a| a.iter().any(|t| t["type"] == "page")))
        .then_some(v)
    });
    let page = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .unwrap()["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let (ws, _) = tungstenite::connect(page.as_str()).expect("connect to the page");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    let mut cdp = Cdp { ws, next: 0 };
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1400, "height": 1600, "deviceScaleFactor": 1, "mobile": false}),
    );
    cdp.call("Page.enable", json!({}));
    cdp.call("Page.navigate", json!({ "url": url }));
    (browser, cdp)
}

#[test]
fn ui_shows_checkpoints_and_kill_restarts_a_subtask() {
    let Some(chromium) = find_chromium() else {
        panic!(
            "chromium is not installed: `apt-get install -y chromium` (tests/run.sh does it as root, \
             and leaves this test out by name when it cannot)"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let env = common::rest_env(
        &dir.path().join("ckpt"),
        &[
            ("execution.checkpointing.interval", "200ms"),
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "1000"),
            ("parallelism.default", "2"),
            (
                "execution.checkpointing.savepoint-dir",
                dir.path().join("savepoints").to_str().unwrap(),
            ),
        ],
    );
    common::numbers_count_job(&env, 3, 5000, 100_000.0);
    let job = env.execute_async("ui-browser").unwrap();
    let base = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();
    let (_browser, mut cdp) = launch(
        &chromium,
        &dir.path().join("profile"),
        &format!("{base}/#/jobs/{id}"),
    );

    // The page renders the job and checkpoints appear in the history table.
    cdp.wait_until(
        "the job's name",
        60,
        "document.querySelector('#job-name') && document.querySelector('#job-name').textContent === 'ui-browser'",
    );
    cdp.wait_until(
        "two checkpoints in the table",
        60,
        "document.querySelectorAll('#checkpoints tbody tr').length >= 2",
    );
    cdp.wait_until(
        "a completed checkpoint row",
        60,
        "[...document.querySelectorAll('#checkpoints tbody tr .st')].some(e => e.textContent === 'completed')",
    );
    assert_eq!(
        cdp.eval("document.querySelectorAll('#graph .vertex').length"),
        2
    );
    cdp.wait_until(
        "the timeline of a checkpoint",
        30,
        "document.querySelectorAll('#timeline rect.async').length >= 4",
    );
    let before: u64 = cdp
        .eval("document.querySelector('#restarts').textContent")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(before, 0);

    // Open the keyed vertex and kill its subtask 1 with the button.
    cdp.eval(
        "document.querySelector('#graph .vertex[data-vertex=\"1\"]').dispatchEvent(new MouseEvent('click', {bubbles: true})); true",
    );
    cdp.wait_until(
        "the subtasks of count -> sink",
        10,
        "document.querySelector('#subtasks-title').textContent.includes('count -> sink') && !!document.querySelector('button.kill[data-op=\"count\"][data-index=\"1\"]')",
    );
    cdp.eval(
        "document.querySelector('button.kill[data-op=\"count\"][data-index=\"1\"]').click(); true",
    );
    let after = cdp.wait_until(
        "the restart count to go up",
        60,
        &format!("(n => n > {before} ? n : null)(parseInt(document.querySelector('#restarts').textContent))"),
    );
    assert!(after.as_u64().unwrap() > before);
    assert!(job.num_restarts() > before, "the job really restarted");
    cdp.wait_until(
        "the failure in the restarts table",
        30,
        "[...document.querySelectorAll('#exceptions tbody td')].some(td => td.textContent.includes('count -> sink (1)'))",
    );

    // Trigger a checkpoint from the button: the toast names it, and it completes.
    cdp.eval("document.querySelector('#btn-checkpoint').click(); true");
    let toast = cdp.wait_until(
        "the trigger's toast",
        30,
        "(t => !t.hidden && t.textContent.includes('triggered') ? t.textContent : null)(document.querySelector('#toast'))",
    );
    let cid: u64 = toast
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no checkpoint id in {toast}"));
    wait_for("the triggered checkpoint", 60, || {
        let d = get_json(&format!("{base}/jobs/{id}/checkpoints/details/{cid}"));
        (d["status"] == "COMPLETED").then_some(())
    });
    // The savepoint button takes a savepoint into execution.checkpointing.savepoint-dir.
    cdp.eval("document.querySelector('#btn-savepoint').click(); true");
    cdp.wait_until(
        "the savepoint's answer",
        30,
        "document.querySelector('#toast').textContent.includes('Savepoint triggered')",
    );
    let location = wait_for("the savepoint", 60, || {
        let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
        c["latest"]["savepoint"]["external_path"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        Path::new(&location).join("_metadata").is_file(),
        "no _metadata in the savepoint {location}"
    );
    // Let the page show the newest state, then take the screenshot.
    std::thread::sleep(Duration::from_millis(1500));
    let shot = cdp.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": true}),
    );
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out_dir = std::env::var_os("WEIR_UI_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("weir-ui.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot of the web UI: {}", path.display());

    job.cancel();
    let _ = job.wait();
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}
