//! The cluster scripts of `bin/` for real, as the README's "Cluster mode"
//! walkthrough runs them: `start-cluster.sh -n 2 -s 1` starts a JobManager
//! and two TaskManagers of an unbounded, paced wordcount (parallelism 2,
//! checkpoints every 200 ms), `stop-taskmanager.sh --kill` crashes the last
//! TaskManager, `start-taskmanager.sh` starts a replacement, the job restarts
//! from its latest checkpoint and checkpoints again, `stop-cluster.sh` stops
//! everything. Then: no process is left, the logs are in the log directory,
//! the pid files are gone, and the committed output has every word's counts
//! 1..N in order (exactly once across the crash).
//!
//! Needs the examples built (`cargo build --release --all-features
//! --examples`) and bash.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Kills (SIGKILL) every process the scripts started when dropped, also on
/// panic: the pids the scripts printed and those of the pid files left.
struct Processes {
    log_dir: PathBuf,
    pids: Vec<u32>,
}

impl Processes {
    fn all(&self) -> Vec<u32> {
        let mut pids = self.pids.clone();
        if let Ok(dir) = std::fs::read_dir(&self.log_dir) {
            for e in dir.flatten() {
                if e.path().extension().is_some_and(|x| x == "pid") {
                    if let Ok(p) = std::fs::read_to_string(e.path()) {
                        pids.extend(p.trim().parse::<u32>());
                    }
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for pid in self.all() {
            // Only a wordcount of ours (a pid can be reused).
            if is_cluster_process(pid) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// True while `pid` runs (not a zombie) as a `--jobmanager` or
/// `--taskmanager` process.
fn is_cluster_process(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, s)| s.chars().next());
    if stat.is_empty() || state == Some(Some('Z')) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("--jobmanager") || cmdline.contains("--taskmanager")
}

/// The process ids a script printed (`... pid N, log ...`, `(pid N)`).
fn printed_pids(stdout: &str) -> Vec<u32> {
    stdout
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0].trim_start_matches('(') == "pid")
        .filter_map(|w| w[1].trim_end_matches([',', ')']).parse().ok())
        .collect()
}

/// Runs `bin/<script>` with bash from `cwd`, with `log_dir` as WEIR_LOG_DIR
/// and no other WEIR_* variable of the test's environment.
fn script(cwd: &Path, log_dir: &Path, name: &str, args: &[&str]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bin").join(name);
    let mut cmd = Command::new("bash");
    cmd.arg(&path).args(args).current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("WEIR_LOG_DIR", log_dir)
        .env("WEIR_START_TIMEOUT", "120")
        .env("WEIR_STOP_TIMEOUT", "30");
    cmd.output()
        .unwrap_or_else(|e| panic!("run bash {}: {e}", path.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a script that must succeed; its stdout.
fn script_ok(cwd: &Path, log_dir: &Path, name: &str, args: &[&str]) -> String {
    let out = script(cwd, log_dir, name, args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\n{}",
        out.status,
        logs(log_dir)
    );
    stdout
}

/// Every log of the log directory, for failure messages.
fn logs(log_dir: &Path) -> String {
    let mut s = String::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(log_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|x| x == "log"))
    {
        let body = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = body.lines().collect();
        let tail = &lines[lines.len().saturating_sub(30)..];
        s += &format!("--- {} (last lines):\n{}\n", f.display(), tail.join("\n"));
    }
    s
}

/// A free TCP port of the loopback interface (free when this returns).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The JobManager log's lines.
fn jm_lines(log_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(log_dir.join("weir-jobmanager.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Completed-checkpoint lines of the JobManager log after line `from`.
fn checkpoints_after(log_dir: &Path, from: usize) -> usize {
    jm_lines(log_dir)
        .iter()
        .skip(from)
        .filter(|l| l.starts_with("checkpoint ") && l.contains(" completed"))
        .count()
}

/// Committed output lines in all.
fn committed_lines(out: &BTreeMap<String, Vec<u64>>) -> usize {
    out.values().map(Vec::len).sum()
}

#[test]
fn scripts_start_fail_over_and_stop_a_cluster_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let log_dir = cwd.join("log");
    let out_dir = cwd.join("out");
    let ckpt_dir = cwd.join("checkpoints");
    let wordcount = common::example("wordcount");
    let rpc_port = free_port().to_string();
    let mut procs = Processes {
        log_dir: log_dir.clone(),
        pids: Vec::new(),
    };

    // Each script explains itself.
    for s in [
        "start-cluster.sh",
        "stop-cluster.sh",
        "start-taskmanager.sh",
        "stop-taskmanager.sh",
    ] {
        let help = script_ok(cwd, &log_dir, s, &["--help"]);
        assert!(help.starts_with("Usage: "), "{s} --help:\n{help}");
    }
    // No cluster yet: clear errors.
    let none = script(cwd, &log_dir, "start-taskmanager.sh", &[]);
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("no cluster recorded"),
        "{}",
        text(&none.stderr)
    );

    let job = [
        wordcount.to_str().unwrap(),
        "--words",
        "0",
        "--rate",
        "20000",
        "--output",
        out_dir.to_str().unwrap(),
        "-p",
        "2",
        "-D",
        "execution.checkpointing.interval=200ms",
        "-D",
        &format!("execution.checkpointing.dir={}", ckpt_dir.display()),
        "-D",
        &format!("jobmanager.rpc.port={rpc_port}"),
        "-D",
        "rest.port=0",
    ];
    let mut args = vec!["-n", "2", "-s", "1", "--"];
    args.extend(job);
    let started = script_ok(cwd, &log_dir, "start-cluster.sh", &args);
    procs.pids.extend(printed_pids(&started));
    assert_eq!(
        procs.pids.len(),
        3,
        "JobManager and 2 TaskManagers:\n{started}"
    );
    let ui = started
        .lines()
        .find_map(|l| l.strip_prefix("web UI: "))
        .unwrap_or_else(|| panic!("no web UI line:\n{started}"));
    let (base, job_id) = ui.split_once("/#/jobs/").expect("URL/#/jobs/ID");
    assert!(log_dir.join("cluster.cmd").is_file());

    // A few checkpoints, then some committed output.
    common::wait_for("3 completed checkpoints", 120, || {
        (checkpoints_after(&log_dir, 0) >= 3).then_some(())
    });
    let before_kill = common::wait_for("committed output", 60, || {
        let n = committed_lines(&common::read_output(&out_dir));
        (n > 0).then_some(n)
    });

    // Crash the most recently started TaskManager (index 1).
    let killed = script_ok(cwd, &log_dir, "stop-taskmanager.sh", &["--kill"]);
    assert!(
        killed.contains("TaskManager 1 (pid") && killed.contains("SIGKILL"),
        "{killed}"
    );
    let killed_pid = printed_pids(&killed)[0];
    assert!(
        !is_cluster_process(killed_pid),
        "pid {killed_pid} still runs"
    );
    assert!(!log_dir.join("weir-taskmanager-1.pid").exists());

    // The JobManager restarts the job once a replacement offers its slot.
    let restart_line = common::wait_for("the JobManager's restart line", 60, || {
        jm_lines(&log_dir)
            .iter()
            .position(|l| l.contains("restarting") && l.contains("restart=1"))
    });
    let replacement = script_ok(cwd, &log_dir, "start-taskmanager.sh", &[]);
    procs.pids.extend(printed_pids(&replacement));
    assert!(
        replacement.starts_with("TaskManager 2 pid "),
        "{replacement}"
    );
    common::wait_for("3 checkpoints completed after the restart", 120, || {
        (checkpoints_after(&log_dir, restart_line) >= 3).then_some(())
    });
    let job_info = common::get_json(&format!("{base}/jobs/{job_id}"));
    assert_eq!(job_info["state"], "RUNNING", "{job_info}");
    assert!(
        job_info["numRestarts"].as_u64() >= Some(1),
        "numRestarts: {job_info}"
    );
    // Output committed after the restart too.
    common::wait_for("output committed after the restart", 60, || {
        (committed_lines(&common::read_output(&out_dir)) > before_kill).then_some(())
    });

    let stopped = script_ok(cwd, &log_dir, "stop-cluster.sh", &[]);
    assert!(stopped.contains("stopping JobManager"), "{stopped}");

    // No process left, pid files gone, logs kept.
    for pid in procs.all() {
        assert!(
            !is_cluster_process(pid),
            "pid {pid} still runs after stop-cluster.sh:\n{stopped}"
        );
    }
    for f in [
        "weir-jobmanager.pid",
        "weir-taskmanager-0.pid",
        "weir-taskmanager-2.pid",
    ] {
        assert!(!log_dir.join(f).exists(), "{f} left behind");
    }
    for f in [
        "weir-jobmanager.log",
        "weir-taskmanager-0.log",
        "weir-taskmanager-1.log",
        "weir-taskmanager-2.log",
    ] {
        assert!(log_dir.join(f).is_file(), "no {f}");
    }
    let jm_log = jm_lines(&log_dir).join("\n");
    assert!(jm_log.contains("lost"), "no lost TaskManager in:\n{jm_log}");
    // Log files, not terminals: no color escapes.
    assert!(
        !jm_log.contains('\u{1b}'),
        "ANSI escapes in the JobManager log"
    );
    let tm0 = std::fs::read_to_string(log_dir.join("weir-taskmanager-0.log")).unwrap();
    assert!(tm0.contains("registered with the JobManager"), "{tm0}");

    // The cluster is gone: a TaskManager cannot join it.
    let late = script(cwd, &log_dir, "start-taskmanager.sh", &[]);
    assert!(!late.status.success());
    assert!(
        text(&late.stderr).contains("is not running"),
        "{}",
        text(&late.stderr)
    );

    // Exactly once: every word's committed counts are 1..N in order.
    let out = common::read_output(&out_dir);
    assert!(
        committed_lines(&out) > before_kill,
        "no output after the restart"
    );
    for (word, counts) in &out {
        if let Some(i) = (0..counts.len()).find(|&i| counts[i] != i as u64 + 1) {
            let lo = i.saturating_sub(3);
            panic!(
                "word {word:?}: counts not 1..N in order, first wrong at line {} (near {:?})",
                i + 1,
                &counts[lo..(i + 4).min(counts.len())]
            );
        }
    }
    drop(procs);
}

/// The scripts parse (`bash -n`) and, where shellcheck is installed, are
/// shellcheck-clean (Debian: `apt-get install shellcheck`).
#[test]
fn scripts_parse_and_pass_shellcheck() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("bin");
    let scripts: Vec<PathBuf> = [
        "weir-cluster-common.sh",
        "start-cluster.sh",
        "stop-cluster.sh",
        "start-taskmanager.sh",
        "stop-taskmanager.sh",
    ]
    .iter()
    .map(|s| bin.join(s))
    .collect();
    for s in &scripts {
        let out = Command::new("bash").arg("-n").arg(s).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            s.display(),
            text(&out.stderr)
        );
    }
    match Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(&bin)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        ),
        Err(e) => eprintln!("shellcheck not run ({e}): apt-get install shellcheck"),
    }
}
