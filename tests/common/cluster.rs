//! A cluster of wordcount processes for tests: one JobManager and any number
//! of TaskManagers, all the same example binary with the same arguments
//! plus their role flag; every process's stderr is collected, and every
//! process is killed when the cluster is dropped (also on a failed assert).
//! `#[path]`-included by the cluster tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One process of the cluster.
pub struct Proc {
    pub child: Child,
    pub role: &'static str,
    /// Its stderr so far (a reader thread appends).
    pub log: Arc<Mutex<Vec<String>>>,
    pub status: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
}

/// A JobManager and its TaskManagers.
pub struct Cluster {
    pub bin: PathBuf,
    /// The job's arguments (without role flags).
    pub args: Vec<String>,
    pub jm: Proc,
    pub tms: Vec<Proc>,
    /// Extra `-D` options of every TaskManager started later.
    pub tm_args: Vec<String>,
    /// Environment of every process.
    pub envs: Vec<(String, String)>,
    /// A prefix command (e.g. `ip netns exec NS`) per TaskManager index; none: run directly.
    pub tm_prefix: Option<Box<dyn Fn(usize) -> Vec<String>>>,
    /// JobManagers replaced by [`Cluster::replace_jm`] (killed on drop too).
    pub old_jms: Vec<Proc>,
}

/// A free TCP port on 127.0.0.1 (free when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `bin` with `args`, then `--<role>` (none for role `single`: a
/// process that runs the whole job), then `extra`; its stderr collected.
pub fn spawn(
    prefix: &[String],
    bin: &Path,
    args: &[String],
    role: &'static str,
    extra: &[String],
    envs: &[(String, String)],
) -> Proc {
    let mut cmd = if prefix.is_empty() {
        Command::new(bin)
    } else {
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg(bin);
        c
    };
    cmd.args(args);
    if role != "single" {
        cmd.arg(format!("--{role}"));
    }
    cmd.args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start a cluster process");
    let stderr = child.stderr.take().unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    Proc {
        child,
        role,
        log,
        status: None,
    }
}

impl Cluster {
    /// Starts the JobManager (`jm_args` are its extra options) and `n`
    /// TaskManagers with `tm_args`.
    pub fn start(
        bin: PathBuf,
        args: Vec<String>,
        jm_args: &[String],
        n: usize,
        tm_args: Vec<String>,
    ) -> Cluster {
        Cluster::start_with(bin, args, jm_args, n, tm_args, Vec::new(), None, &[])
    }

    #[allow(clippy::too_many_arguments)]
    pub fn start_with(
        bin: PathBuf,
        args: Vec<String>,
        jm_args: &[String],
        n: usize,
        tm_args: Vec<String>,
        envs: Vec<(String, String)>,
        tm_prefix: Option<Box<dyn Fn(usize) -> Vec<String>>>,
        jm_prefix: &[String],
    ) -> Cluster {
        let jm = spawn(jm_prefix, &bin, &args, "jobmanager", jm_args, &envs);
        let mut c = Cluster {
            bin,
            args,
            jm,
            tms: Vec::new(),
            tm_args,
            envs,
            tm_prefix,
            old_jms: Vec::new(),
        };
        for _ in 0..n {
            c.start_tm();
        }
        c
    }

    /// Starts a new JobManager with the same arguments (plus `jm_args`)
    /// in place of the current one, which is kept in `old_jms`.
    pub fn replace_jm(&mut self, jm_args: &[String]) {
        let new = spawn(
            &[],
            &self.bin,
            &self.args,
            "jobmanager",
            jm_args,
            &self.envs,
        );
        let old = std::mem::replace(&mut self.jm, new);
        self.old_jms.push(old);
    }

    /// Starts one more TaskManager; its index.
    pub fn start_tm(&mut self) -> usize {
        let i = self.tms.len();
        let prefix = self.tm_prefix.as_ref().map(|f| f(i)).unwrap_or_default();
        let p = spawn(
            &prefix,
            &self.bin,
            &self.args,
            "taskmanager",
            &self.tm_args,
            &self.envs,
        );
        self.tms.push(p);
        i
    }

    /// Waits until the JobManager's stderr has a line containing `what`
    /// (at least `count` of them); panics with the logs after `timeout`.
    pub fn wait_jm(&mut self, what: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self
                .jm
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(what))
                .count();
            if n >= count {
                return;
            }
            if let Some(s) = self.jm.try_wait() {
                panic!(
                    "the JobManager exited ({s}) before '{what}' x{count}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no '{what}' x{count} from the JobManager within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines of the JobManager's stderr containing `what`.
    pub fn jm_count(&self, what: &str) -> usize {
        self.jm
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    /// Lines of the JobManager's stderr containing all of `what`.
    pub fn jm_count_all(&self, what: &[&str]) -> usize {
        self.jm
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| what.iter().all(|w| l.contains(w)))
            .count()
    }

    /// Waits for the JobManager to exit; its status.
    pub fn wait_jm_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.jm.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the JobManager did not exit within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for every TaskManager still running to exit; panics after `timeout`.
    pub fn wait_tms_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.tms.iter_mut().all(|t| t.try_wait().is_some()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "TaskManagers still running {timeout:?} after the job ended:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every process's stderr (the last 40 lines each).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.jm).chain(self.tms.iter()) {
            let log = p.log.lock().unwrap();
            let from = log.len().saturating_sub(40);
            out.push_str(&format!(
                "--- {} pid {} ---\n{}\n",
                p.role,
                p.pid(),
                log[from..].join("\n")
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in std::iter::once(&mut self.jm)
            .chain(self.tms.iter_mut())
            .chain(self.old_jms.iter_mut())
        {
            // A stopped process must be continued to die of SIGKILL cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &p.pid().to_string()])
                .status();
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// The words of `text` as wordcount counts them: maximal runs of
/// alphanumeric characters, lowercased.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Checks wordcount's committed output in `dir` against the expected
/// number of occurrences of each word: every word's lines, read in commit
/// order (part files by subtask, then part number), are `word<TAB>1` ..
/// `word<TAB>n`, nothing missing, nothing repeated. The error describes the
/// first problems found.
pub fn check_exactly_once(
    dir: &Path,
    expected: &std::collections::HashMap<String, u64>,
) -> Result<u64, String> {
    let mut parts: Vec<((u64, u64), PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // part-<job>-<subtask>-<n>
        let f: Vec<&str> = name.rsplitn(3, '-').collect();
        let (n, s) = (f[0].parse::<u64>(), f[1].parse::<u64>());
        match (n, s) {
            (Ok(n), Ok(s)) => parts.push(((s, n), p)),
            _ => return Err(format!("unexpected file {name} in the output")),
        }
    }
    parts.sort();
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    let mut total = 0;
    for (_, p) in &parts {
        for line in std::fs::read_to_string(p).unwrap().lines() {
            total += 1;
            let Some((w, c)) = line.split_once('\t') else {
                problems.push(format!("bad line {line:?}"));
                continue;
            };
            let n = seen.entry(w.to_string()).or_default();
            *n += 1;
            if c.parse::<u64>().ok() != Some(*n) && problems.len() < 10 {
                problems.push(format!(
                    "{w}: count {c} where {n} was due (in {})",
                    p.display()
                ));
            }
        }
    }
    for (w, want) in expected {
        let got = seen.get(w).copied().unwrap_or(0);
        if got != *want && problems.len() < 20 {
            problems.push(format!("{w}: {got} lines, {want} occurrences in the input"));
        }
    }
    for w in seen.keys() {
        if !expected.contains_key(w) && problems.len() < 20 {
            problems.push(format!("{w}: not in the input"));
        }
    }
    if problems.is_empty() {
        Ok(total)
    } else {
        Err(problems.join("\n"))
    }
}

/// `copies` copies of the corpus spread over `files` files in `dir`; the
/// expected count of every word.
pub fn corpus(dir: &Path, files: usize, copies: usize) -> std::collections::HashMap<String, u64> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let text: String = names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::create_dir_all(dir).unwrap();
    let mut expected: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let one: std::collections::HashMap<String, u64> =
        words(&text)
            .into_iter()
            .fold(std::collections::HashMap::new(), |mut m, w| {
                *m.entry(w).or_default() += 1;
                m
            });
    for f in 0..files {
        let n = copies / files + usize::from(f < copies % files);
        std::fs::write(dir.join(format!("part-{f:02}.txt")), text.repeat(n)).unwrap();
        for (w, c) in &one {
            *expected.entry(w.clone()).or_default() += c * n as u64;
        }
    }
    expected
}

/// A small deterministic random number generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
