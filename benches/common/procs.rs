//! Processes for the benchmarks that run the wordcount example: the
//! example built once, processes whose stderr lines are collected, and the
//! `generation G: first record processed ... at T ms` lines they print.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Builds the wordcount example (release, all features, the bench's target
/// directory) and returns its path.
pub fn example() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--all-features",
            "--example",
            "wordcount",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build");
    assert!(status.success(), "cannot build the wordcount example");
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("examples/wordcount");
    assert!(p.exists(), "{} missing", p.display());
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A process whose stderr lines are collected.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub stdout: Option<std::process::ChildStdout>,
}

pub fn spawn(bin: &Path, args: &[String]) -> Proc {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wordcount");
    let err = child.stderr.take().unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    let stdout = child.stdout.take();
    Proc { child, log, stdout }
}

impl Proc {
    pub fn wait_stdout(mut self) -> (bool, String) {
        let mut out = String::new();
        if let Some(mut s) = self.stdout.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut out);
        }
        let ok = self.child.wait().map(|s| s.success()).unwrap_or(false);
        (ok, out)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `generation G: first record processed ... at T ms` lines of `log` for
/// generation `g`: the earliest T.
pub fn first_record(logs: &[Arc<Mutex<Vec<String>>>], g: u64) -> Option<u64> {
    let prefix = format!("generation {g}: first record processed");
    logs.iter()
        .flat_map(|l| l.lock().unwrap().clone())
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            l.rsplit_once("(at ")
                .and_then(|(_, r)| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .min()
}
