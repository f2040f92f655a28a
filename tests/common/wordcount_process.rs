//! A wordcount example process to drive from a test: its stderr lines
//! arrive on a channel, its REST address is read from its `web UI:` line,
//! and it is killed when dropped. Shared by the tests that run wordcount
//! with a REST server (`#[path]`-included, like `otlp.rs`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A wordcount process whose stderr lines arrive on a channel.
pub struct Wordcount {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line seen so far.
    seen: Vec<String>,
}

/// How a wordcount process ended.
pub struct Ended {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Wordcount {
    /// Starts wordcount at parallelism 2 with a REST server on a free port,
    /// checkpointing into `ckpt`, from the repository root.
    pub fn start(ckpt: &Path, args: &[&str]) -> Wordcount {
        Wordcount::start_in(Path::new(env!("CARGO_MANIFEST_DIR")), ckpt, args)
    }

    /// [`Wordcount::start`] with `cwd` as the working directory (where
    /// relative paths sent over REST land).
    pub fn start_in(cwd: &Path, ckpt: &Path, args: &[&str]) -> Wordcount {
        let mut cmd = Command::new(super::common::example("wordcount"));
        cmd.args(["-p", "2", "-D", "rest.port=0"])
            .args([
                "-D",
                &format!("execution.checkpointing.dir={}", ckpt.display()),
            ])
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("WEIR_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("start wordcount");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Wordcount {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line `f` accepts.
    pub fn wait_line<T>(&mut self, what: &str, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if let Some(v) = f(&l) {
                        return v;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "wordcount exited before its {what}; stderr:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
        panic!(
            "no {what} from wordcount within 120 s; stderr:\n{}",
            self.seen.join("\n")
        );
    }

    /// The REST base URL and the job id, from the `web UI:` line.
    pub fn web_ui(&mut self) -> (String, String) {
        let page = self.wait_line("web UI line", |l| {
            l.strip_prefix("web UI: ").map(str::to_string)
        });
        let (base, id) = page.split_once("/#/jobs/").expect("web UI: URL#/jobs/ID");
        (base.to_string(), id.to_string())
    }

    /// Waits for a progress line with at least one word counted.
    pub fn counting(&mut self) {
        self.wait_line("progress line", |l| {
            let words: u64 = l
                .split_once(']')?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            (words > 0).then_some(())
        });
    }

    /// Waits (at most a minute) for the process to exit on its own.
    pub fn ended(mut self) -> Ended {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("wordcount did not exit within 60 s after its job ended");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        Ended {
            status,
            stdout,
            stderr: self.seen.join("\n"),
        }
    }
}

impl Drop for Wordcount {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
