//! Cluster mode under failures: a JobManager and TaskManager processes of
//! the wordcount example over a real corpus (the repository's license
//! texts, repeated), keyed shuffle across processes, TaskManager processes
//! killed with SIGKILL at seeded random moments and replaced; a
//! TaskManager stopped with SIGSTOP (heartbeat timeout, fenced when it
//! wakes); bad cluster configuration. Every check is on what a user sees:
//! the committed output (exactly 1..N per word, N its occurrences in the
//! input), the processes' exit statuses and their error messages.

#[path = "common/mod.rs"]
mod common;

#[path = "common/cluster.rs"]
mod cluster;

use std::path::Path;
use std::time::{Duration, Instant};

use cluster::{check_exactly_once, corpus, free_port, Cluster, Rng};

/// The arguments every process of a wordcount cluster gets.
fn job_args(input: &Path, out: &Path, ckpt: &Path, port: u16, rate: u64, p: usize) -> Vec<String> {
    [
        "--input".to_string(),
        input.display().to_string(),
        "--output".into(),
        out.display().to_string(),
        "--rate".into(),
        rate.to_string(),
        "-p".into(),
        p.to_string(),
        "-q".into(),
        "-D".into(),
        format!("execution.checkpointing.dir={}", ckpt.display()),
        "-D".into(),
        "execution.checkpointing.interval=200ms".into(),
        "-D".into(),
        format!("jobmanager.rpc.port={port}"),
        "-D".into(),
        "rest.port=0".into(),
        "-D".into(),
        "restart-strategy.type=fixed-delay".into(),
        "-D".into(),
        "restart-strategy.fixed-delay.attempts=1000".into(),
        "-D".into(),
        "restart-strategy.fixed-delay.delay=50ms".into(),
    ]
    .into()
}

fn d(kv: &str) -> [String; 2] {
    ["-D".to_string(), kv.to_string()]
}

/// Runs wordcount at parallelism 4 on two TaskManagers of two slots and a
/// spare, kills a random TaskManager that runs subtasks `kills` times at seeded random moments
/// (starting a replacement each time), and checks the committed output.
fn sigkill_taskmanagers(seed: u64, kills: usize, extra: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let expected = corpus(&tmp.path().join("in"), 8, 160);
    let total: u64 = expected.values().sum();
    let out = tmp.path().join("out");
    let port = free_port();
    let mut args = job_args(
        &tmp.path().join("in"),
        &out,
        &tmp.path().join("chk"),
        port,
        700_000,
        4,
    );
    for kv in extra {
        args.extend(d(kv));
    }
    let unaligned = extra.iter().any(|e| e.contains("unaligned.enabled=true"));
    if unaligned {
        // Checkpoint lines say how much in-flight data each one captured.
        args.retain(|a| a != "-q");
    }
    let mut c = Cluster::start(
        common::example("wordcount"),
        args,
        &[],
        3,
        d("taskmanager.numberOfTaskSlots=2").to_vec(),
    );
    c.wait_jm("web UI:", 1, Duration::from_secs(60));
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut killed = Vec::new();
    for k in 0..kills {
        // Each kill after the job ran (and checkpointed) a random while.
        let wait = Duration::from_millis(400 + rng.below(1200));
        std::thread::sleep(wait);
        if c.jm.try_wait().is_some() {
            break;
        }
        let live: Vec<usize> = (0..c.tms.len())
            .filter(|&i| c.tms[i].try_wait().is_none())
            .collect();
        // A TaskManager that runs subtasks (it printed its first record);
        // killing only the idle spare would test nothing.
        let running: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| c.tms[i].log_text().contains("first record processed"))
            .collect();
        let pool = if running.is_empty() { &live } else { &running };
        let victim = pool[rng.below(pool.len() as u64) as usize];
        c.tms[victim].signal("KILL");
        killed.push((k, victim, started.elapsed()));
        c.start_tm();
    }
    let status = c.wait_jm_exit(Duration::from_secs(180));
    assert!(status.success(), "the job failed ({status}):\n{}", c.logs());
    c.wait_tms_exit(Duration::from_secs(30));
    let lines = check_exactly_once(&out, &expected)
        .unwrap_or_else(|e| panic!("seed {seed}, kills {killed:?}:\n{e}\n{}", c.logs()));
    assert_eq!(lines, total);
    assert!(
        killed.len() == kills,
        "the job ended after {} of {kills} kills (seed {seed}): make it longer",
        killed.len()
    );
    assert_eq!(
        c.jm_count_all(&["cluster::jobmanager", ") lost:"]),
        kills,
        "each killed TaskManager is seen lost once:\n{}",
        c.logs()
    );
    assert!(
        c.jm_count("restarting") >= 1,
        "no restart after {kills} kills:\n{}",
        c.logs()
    );
    if unaligned {
        assert!(
            c.jm_count("bytes in flight)") > 0,
            "no unaligned checkpoint captured in-flight data from the channels:\n{}",
            c.logs()
        );
    }
    eprintln!(
        "seed {seed}: {total} words exactly once through kills at {:?}",
        killed.iter().map(|k| k.2).collect::<Vec<_>>()
    );
}

#[test]
fn taskmanager_sigkills_keep_wordcount_exactly_once_aligned() {
    for seed in [1, 2] {
        sigkill_taskmanagers(seed, 3, &[]);
    }
}

#[test]
fn taskmanager_sigkills_keep_wordcount_exactly_once_unaligned() {
    for seed in [3, 4] {
        sigkill_taskmanagers(
            seed,
            3,
            &[
                "execution.checkpointing.unaligned.enabled=true",
                // Small channels: in-flight data is captured often.
                "taskmanager.network.memory.buffers-per-channel=2",
            ],
        );
    }
}

#[test]
fn taskmanager_sigkills_keep_wordcount_exactly_once_rocksdb_incremental() {
    sigkill_taskmanagers(
        5,
        3,
        &[
            "state.backend.type=rocksdb",
            "execution.checkpointing.incremental=true",
        ],
    );
}

/// A TaskManager that stops answering (SIGSTOP) is lost after
/// heartbeat.timeout and its subtasks run elsewhere; woken (SIGCONT), it
/// finds its session gone and changes nothing: the output stays exactly once.
#[test]
fn a_stopped_taskmanager_is_timed_out_and_fenced_when_it_wakes() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = corpus(&tmp.path().join("in"), 4, 120);
    let out = tmp.path().join("out");
    let port = free_port();
    let mut args = job_args(
        &tmp.path().join("in"),
        &out,
        &tmp.path().join("chk"),
        port,
        300_000,
        2,
    );
    args.extend(d("heartbeat.interval=100ms"));
    args.extend(d("heartbeat.timeout=1500ms"));
    let mut c = Cluster::start(
        common::example("wordcount"),
        args,
        &[],
        2,
        d("taskmanager.numberOfTaskSlots=1").to_vec(),
    );
    // Both TaskManagers hold a slice once the job runs; then a spare.
    c.wait_jm("web UI:", 1, Duration::from_secs(60));
    c.start_tm();
    std::thread::sleep(Duration::from_millis(1200));
    let victim = 0;
    let stopped_at = Instant::now();
    c.tms[victim].signal("STOP");
    c.wait_jm("no heartbeat for", 1, Duration::from_secs(10));
    let detected = stopped_at.elapsed();
    assert!(
        detected < Duration::from_millis(1500 + 1500),
        "detected after {detected:?}, heartbeat.timeout is 1.5 s"
    );
    // The job goes on elsewhere for a while, then the stopped one wakes.
    std::thread::sleep(Duration::from_millis(1500));
    c.tms[victim].signal("CONT");
    let status = c.wait_jm_exit(Duration::from_secs(120));
    assert!(status.success(), "the job failed ({status}):\n{}", c.logs());
    check_exactly_once(&out, &expected).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let woken = c.tms[victim].log_text();
    assert!(
        woken.contains("JobManager session lost"),
        "the woken TaskManager noticed nothing:\n{}",
        c.logs()
    );
    c.wait_tms_exit(Duration::from_secs(30));
}

fn run_alone(args: &[String], timeout: Duration) -> (std::process::ExitStatus, String, Duration) {
    let started = Instant::now();
    let mut child = common::example_command("wordcount")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (s, err, started.elapsed());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} still runs after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn small_job(port: u16, tmp: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--words".into(),
        "100000".into(),
        "-p".into(),
        "2".into(),
        "-q".into(),
        "--no-ui".into(),
        "--output".into(),
        tmp.join("out").display().to_string(),
    ];
    a.extend(d(&format!("jobmanager.rpc.port={port}")));
    a.extend(d(&format!(
        "execution.checkpointing.dir={}",
        tmp.join("chk").display()
    )));
    a
}

#[test]
fn a_taskmanager_without_jobmanager_exits_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a = small_job(free_port(), tmp.path());
    a.push("--taskmanager".into());
    a.extend(d("heartbeat.timeout=1s"));
    let (s, err, took) = run_alone(&a, Duration::from_secs(30));
    assert!(!s.success());
    assert!(
        err.contains("found no JobManager at http://127.0.0.1:")
            && err.contains("jobmanager.rpc.address"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_taken_rpc_port_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut a = small_job(port, tmp.path());
    a.push("--jobmanager".into());
    let (s, err, _) = run_alone(&a, Duration::from_secs(30));
    assert!(!s.success());
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("jobmanager.rpc.port"),
        "{err}"
    );
    // The same for a TaskManager's data port.
    let mut a = small_job(free_port(), tmp.path());
    a.push("--taskmanager".into());
    a.extend(d(&format!("taskmanager.data.port={port}")));
    let (s, err, _) = run_alone(&a, Duration::from_secs(30));
    assert!(!s.success());
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}"))
            && err.contains("taskmanager.data.port"),
        "{err}"
    );
}

#[test]
fn too_few_slots_fail_the_job_after_slot_request_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut args = small_job(port, tmp.path());
    args.extend(d("slot.request.timeout=2s"));
    args.extend(d("heartbeat.timeout=2s"));
    let started = Instant::now();
    let mut c = Cluster::start(
        common::example("wordcount"),
        args,
        &[],
        1,
        d("taskmanager.numberOfTaskSlots=1").to_vec(),
    );
    let status = c.wait_jm_exit(Duration::from_secs(30));
    let took = started.elapsed();
    assert!(!status.success());
    let log = c.jm.log_text();
    assert!(
        log.contains("not enough task slots: the job needs 2")
            && log.contains("offer 1")
            && log.contains("slot.request.timeout"),
        "{}",
        c.logs()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // Its TaskManager gives up once the JobManager is gone.
    c.wait_tms_exit(Duration::from_secs(20));
    assert!(!c.tms[0].try_wait().unwrap().success());
}

#[test]
fn a_taskmanager_of_another_plan_is_refused_and_a_role_is_required() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut args = small_job(port, tmp.path());
    args.extend(d("slot.request.timeout=3s"));
    let mut c = Cluster::start(common::example("wordcount"), args, &[], 0, Vec::new());
    // A TaskManager started with another parallelism.
    let mut other = small_job(port, tmp.path());
    other[3] = "3".into();
    other.push("--taskmanager".into());
    let (s, err, _) = run_alone(&other, Duration::from_secs(30));
    assert!(!s.success());
    assert!(
        err.contains("refused") && err.contains("another job plan"),
        "{err}"
    );
    let status = c.wait_jm_exit(Duration::from_secs(30));
    assert!(!status.success());
    // execution.target: cluster without a role.
    let mut a = small_job(port, tmp.path());
    a.extend(d("execution.target=cluster"));
    let (s, err, _) = run_alone(&a, Duration::from_secs(30));
    assert!(!s.success());
    assert!(err.contains("cluster.role"), "{err}");
}
