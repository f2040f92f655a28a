//! High availability (`high-availability.type: storage`, see `weir::runtime::ha`):
//! a process killed at any moment and started again with the same command
//! line (no `-s`) resumes its job from the latest complete checkpoint, and
//! the committed output stays exactly once; crash points inside the
//! leadership protocol lose nothing; a stopped leader woken after a new one
//! took over commits nothing and exits with the fenced status; a cluster's
//! JobManager killed and started again is re-joined by its TaskManagers.
//!
//! Every process is the wordcount example over a real corpus, paced
//! (`--rate`) so a run lasts long enough to be killed mid-way.

#[path = "common/mod.rs"]
mod common;

#[path = "common/cluster.rs"]
mod cluster;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster::{check_exactly_once, corpus, free_port, spawn, Cluster, Proc, Rng};

/// The fenced exit status (`weir::runtime::ha::EXIT_FENCED`).
const EXIT_FENCED: i32 = weir::runtime::ha::EXIT_FENCED;

/// A job's inputs and directories.
struct Job {
    _tmp: tempfile::TempDir,
    input: PathBuf,
    out: PathBuf,
    ckpt: PathBuf,
    expected: HashMap<String, u64>,
}

impl Job {
    fn new(copies: usize) -> Job {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in");
        let expected = corpus(&input, 4, copies);
        Job {
            out: tmp.path().join("out"),
            ckpt: tmp.path().join("chk"),
            input,
            expected,
            _tmp: tmp,
        }
    }

    /// The command line every run of the job gets (the same each time).
    fn args(&self, rate: u64, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--input",
            self.input.to_str().unwrap(),
            "--output",
            self.out.to_str().unwrap(),
            "--rate",
            &rate.to_string(),
            "-p",
            "2",
            "-D",
            &format!("execution.checkpointing.dir={}", self.ckpt.display()),
            "-D",
            "execution.checkpointing.interval=150ms",
            "-D",
            "high-availability.type=storage",
            "-D",
            "high-availability.cluster-id=ha-test",
            "-D",
            "rest.port=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for e in extra {
            a.extend(["-D".to_string(), e.to_string()]);
        }
        a
    }

    fn start(&self, args: &[String], envs: &[(String, String)]) -> Proc {
        spawn(
            &[],
            &common::example("wordcount"),
            args,
            "single",
            &[],
            envs,
        )
    }

    fn job_dir(&self) -> PathBuf {
        self.ckpt
            .join(weir::runtime::ha::job_id("ha-test", "wordcount"))
    }

    /// The output is exactly once; the checkpoint directory holds one job
    /// directory, and in it only what its retained checkpoints reference.
    fn check_end_state(&self) {
        let total: u64 = self.expected.values().sum();
        assert_eq!(check_exactly_once(&self.out, &self.expected), Ok(total));
        let jobs: Vec<String> = std::fs::read_dir(&self.ckpt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let job_dir = self.job_dir();
        assert_eq!(
            jobs,
            vec![job_dir.file_name().unwrap().to_string_lossy().into_owned()],
            "one job directory, the HA job id"
        );
        let leftovers = weir::runtime::checkpoint::storage::orphans(&job_dir).unwrap();
        assert!(leftovers.is_empty(), "orphans left: {leftovers:?}");
        let checkpoints = weir::runtime::checkpoint::storage::list_checkpoints(&job_dir).unwrap();
        assert!(!checkpoints.is_empty());
        for c in &checkpoints {
            assert_eq!(c.status, "complete", "{c:?}");
        }
        assert!(
            checkpoints.len() <= 2,
            "retention (num-retained 1 + the one being replaced) holds: {checkpoints:?}"
        );
        let mut names: Vec<String> = std::fs::read_dir(&job_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("chk-"))
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec!["ha", "shared", "taskowned"],
            "nothing else in the job directory (no lock: the job ended)"
        );
        // The log is as short as retention: its entries reference only
        // retained checkpoints (and the leaders after them).
        let log = weir::runtime::ha::log::Log::open(&job_dir.join("ha")).unwrap();
        let history = log.history().unwrap();
        let ids: Vec<u64> = weir::runtime::ha::log::checkpoint_ids(&history)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let retained: Vec<u64> = checkpoints.iter().map(|c| c.id).collect();
        assert!(
            ids.iter().all(|id| retained.contains(id)),
            "log {ids:?} vs retained {retained:?}"
        );
        assert_eq!(
            ids.last(),
            retained.last(),
            "the latest checkpoint is logged"
        );
    }
}

/// Waits up to `timeout` for a line with `what` on `p`'s stderr.
fn wait_for(p: &mut Proc, what: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if p.log.lock().unwrap().iter().any(|l| l.contains(what)) {
            return true;
        }
        if p.try_wait().is_some() {
            return p.log.lock().unwrap().iter().any(|l| l.contains(what));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn wait_exit(p: &mut Proc, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = p.try_wait() {
            // Let the stderr reader take the last lines.
            std::thread::sleep(Duration::from_millis(50));
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {timeout:?}:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The generation a run announced ("JobManager generation N of job").
fn generation_of(p: &Proc) -> Option<u64> {
    let text = p.log_text();
    let rest = text.split("JobManager generation ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

fn kill9(p: &mut Proc) {
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// SIGKILL at seeded random moments, 20 times, each time the same command
/// line again; then the last run finishes. Exactly-once output, one job
/// directory, nothing unreferenced left.
fn twenty_kills(seed: u64, extra: &[&str]) {
    let job = Job::new(48);
    let args = job.args(60_000, extra);
    let mut rng = Rng(seed);
    let mut generations = Vec::new();
    let mut resumed = 0;
    for k in 0..20 {
        let mut p = job.start(&args, &[]);
        // Alive a random while: sometimes before its first checkpoint,
        // mostly after a few.
        let alive = Duration::from_millis(50 + rng.below(900));
        std::thread::sleep(alive);
        if let Some(s) = p.try_wait() {
            panic!(
                "run {k} ended by itself ({s}) before its kill:\n{}",
                p.log_text()
            );
        }
        kill9(&mut p);
        std::thread::sleep(Duration::from_millis(20));
        if let Some(g) = generation_of(&p) {
            generations.push(g);
        }
        if p.log_text().contains("resuming from") {
            resumed += 1;
        }
    }
    let mut last = job.start(&args, &[]);
    let status = wait_exit(&mut last, Duration::from_secs(240));
    assert!(
        status.success(),
        "the last run failed:\n{}",
        last.log_text()
    );
    let g = generation_of(&last).expect("the last run announced its generation");
    generations.push(g);
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "generations increase run by run: {generations:?}"
    );
    assert!(
        resumed >= 10,
        "most runs resumed from a checkpoint ({resumed} of 20)"
    );
    assert!(
        last.log_text().contains("resuming from"),
        "{}",
        last.log_text()
    );
    job.check_end_state();
}

#[test]
fn ha_single_process_survives_twenty_sigkills_without_s() {
    twenty_kills(0x5eed_0001, &[]);
}

#[cfg(feature = "rocksdb")]
#[test]
fn ha_single_process_survives_twenty_sigkills_rocksdb_incremental() {
    twenty_kills(
        0x5eed_0002,
        &[
            "state.backend.type=rocksdb",
            "execution.checkpointing.incremental=true",
        ],
    );
}

/// Crash right after the leader entry is written (nothing restored yet),
/// and between a checkpoint's `_metadata` and its log entry: the next run
/// resumes from what was complete, the uncommitted checkpoint is gone, and
/// the output is exactly once.
#[test]
fn ha_crash_points_inside_the_leadership_protocol_lose_nothing() {
    let job = Job::new(16);
    let args = job.args(80_000, &[]);
    let fp = |spec: &str| vec![("WEIR_FAILPOINTS".to_string(), spec.to_string())];
    // 1. A first run that checkpoints a while, killed.
    let mut p = job.start(&args, &[]);
    assert!(
        wait_for(&mut p, "generation 1", Duration::from_secs(30)),
        "{}",
        p.log_text()
    );
    std::thread::sleep(Duration::from_millis(700));
    kill9(&mut p);
    // 2. Crash right after the leader entry of generation 2.
    let mut p = job.start(&args, &fp("ha-after-leader-write=exit"));
    let s = wait_exit(&mut p, Duration::from_secs(30));
    assert_eq!(s.code(), Some(86), "{}", p.log_text());
    let log = weir::runtime::ha::log::Log::open(&job.job_dir().join("ha")).unwrap();
    let h = log.history().unwrap();
    let (_, last) = h.last().unwrap();
    let resumed_from = match last {
        weir::runtime::ha::log::Entry::Leader {
            generation,
            restored_from,
            ..
        } => {
            assert_eq!(*generation, 2);
            restored_from
                .clone()
                .expect("generation 1 completed checkpoints")
        }
        other => panic!("the last entry is generation 2's leader entry, not {other:?}"),
    };
    // 3. Generation 3 inherits that resume point, and crashes between the
    // _metadata of its first checkpoint and that checkpoint's log entry.
    let mut p = job.start(&args, &fp("ha-before-commit=exit@1"));
    let s = wait_exit(&mut p, Duration::from_secs(60));
    assert_eq!(s.code(), Some(86), "{}", p.log_text());
    assert!(
        p.log_text()
            .contains(&format!("resuming from {}", resumed_from.display())),
        "generation 3 resumed where generation 2 would have:\n{}",
        p.log_text()
    );
    let h = log.history().unwrap();
    let logged: Vec<u64> = weir::runtime::ha::log::checkpoint_ids(&h)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let latest_logged = *logged.last().unwrap();
    let dirs = weir::runtime::checkpoint::storage::chk_dirs(&job.job_dir()).unwrap();
    let uncommitted: Vec<u64> = dirs
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| *id > latest_logged)
        .collect();
    assert!(
        uncommitted.iter().any(|id| job
            .job_dir()
            .join(format!("chk-{id}/_metadata"))
            .exists()),
        "the crash left a checkpoint with _metadata but no log entry: dirs {dirs:?}, logged {logged:?}"
    );
    // 4. The next run removes it, resumes from the latest logged one and
    // finishes.
    let mut p = job.start(&args, &[]);
    let s = wait_exit(&mut p, Duration::from_secs(240));
    assert!(s.success(), "{}", p.log_text());
    assert!(
        p.log_text().contains(&format!(
            "resuming from {}",
            job.job_dir().join(format!("chk-{latest_logged}")).display()
        )),
        "{}",
        p.log_text()
    );
    job.check_end_state();
}

/// A leader stopped (SIGSTOP) while a second one takes over, then woken
/// (SIGCONT): it commits nothing and exits with the fenced status and a
/// clear message; the second finishes; the output is exactly once.
#[test]
fn ha_stopped_leader_woken_after_a_takeover_is_fenced() {
    let job = Job::new(24);
    let args = job.args(60_000, &[]);
    let mut first = job.start(&args, &[]);
    assert!(
        wait_for(&mut first, "generation 1", Duration::from_secs(30)),
        "{}",
        first.log_text()
    );
    std::thread::sleep(Duration::from_millis(800));
    first.signal("STOP");
    let mut second = job.start(&args, &[]);
    assert!(
        wait_for(
            &mut second,
            "JobManager generation 2",
            Duration::from_secs(30)
        ),
        "{}",
        second.log_text()
    );
    // The new leader checkpoints a while, then the old one wakes up.
    std::thread::sleep(Duration::from_millis(800));
    first.signal("CONT");
    let s = wait_exit(&mut first, Duration::from_secs(30));
    assert_eq!(s.code(), Some(EXIT_FENCED), "{}", first.log_text());
    let text = first.log_text();
    assert!(
        text.contains("fenced:")
            && text.contains("generation 2")
            && text.contains("commits nothing more"),
        "{text}"
    );
    let s = wait_exit(&mut second, Duration::from_secs(240));
    assert!(s.success(), "{}", second.log_text());
    job.check_end_state();
}

/// Cluster mode: the JobManager SIGKILLed and started again with the same
/// command line; the TaskManagers register with it, the job resumes from the
/// latest checkpoint, the output is exactly once.
#[test]
fn ha_cluster_jobmanager_killed_and_restarted_resumes() {
    let job = Job::new(40);
    let port = free_port();
    let mut args = job.args(60_000, &[]);
    args.extend([
        "-D".to_string(),
        format!("jobmanager.rpc.port={port}"),
        "-D".to_string(),
        "heartbeat.timeout=20s".to_string(),
    ]);
    let mut c = Cluster::start(
        common::example("wordcount"),
        args,
        &[],
        2,
        vec!["-D".into(), "taskmanager.numberOfTaskSlots=1".into()],
    );
    c.wait_jm("JobManager generation 1", 1, Duration::from_secs(60));
    c.wait_jm("web UI:", 1, Duration::from_secs(60));
    let job_dir = job.job_dir();
    let deadline = Instant::now() + Duration::from_secs(60);
    while weir::runtime::checkpoint::storage::chk_dirs(&job_dir)
        .map(|d| d.is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no checkpoint:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = c.jm.child.kill();
    let _ = c.jm.child.wait();
    c.replace_jm(&[]);
    c.wait_jm("JobManager generation 2", 1, Duration::from_secs(60));
    assert!(c.jm_count("resuming from") >= 1, "{}", c.logs());
    let s = c.wait_jm_exit(Duration::from_secs(240));
    assert!(s.success(), "{}", c.logs());
    c.wait_tms_exit(Duration::from_secs(30));
    for t in &mut c.tms {
        assert!(t.try_wait().unwrap().success(), "{}", t.log_text());
    }
    job.check_end_state();
}
