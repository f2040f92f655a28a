//! The leftovers of jobs that crashed are swept when another job starts
//! under the same checkpoint base directory (issue 14, item 10): each run
//! gets a fresh job id, so the sweep of a job's own directory alone never
//! finds anything. Only a directory whose lock names a process of this
//! machine's namespace that is gone is swept; a running job, a job locked
//! from another machine or container, and a job that ended (no lock) are
//! left alone. Complete checkpoints are never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir::prelude::*;
use weir::runtime::checkpoint::lock::{LockOwner, LOCK_FILE};
use weir::runtime::checkpoint::storage::{list_checkpoints, load_checkpoint};

/// Runs a small checkpointed job under `base` to its end; its directory.
fn finished_job(base: &Path) -> PathBuf {
    let mut conf = Conf::defaults();
    conf.set("execution.checkpointing.dir", base.display())
        .unwrap();
    conf.set("execution.checkpointing.interval", "10ms")
        .unwrap();
    let env = Env::from_conf(conf).unwrap();
    env.add_source(GeneratorSource::new(1, Some(20_000), |i, _| i % 100).with_rate(200_000.0))
        .key_by(|x: &u64| *x)
        .count()
        .add_sink(DiscardSink);
    let result = env.execute("sweep-me").unwrap();
    base.join(result.job_id)
}

/// What a crash mid-checkpoint leaves: an incomplete checkpoint and a
/// shared file no checkpoint references.
fn leave_orphans(job: &Path) -> [PathBuf; 2] {
    let chk = job.join("chk-999");
    std::fs::create_dir_all(&chk).unwrap();
    std::fs::write(chk.join("0-0.state"), b"half written").unwrap();
    std::fs::create_dir_all(job.join("shared")).unwrap();
    let shared = job.join("shared/unreferenced.sst");
    std::fs::write(&shared, b"uploaded, never referenced").unwrap();
    [chk, shared]
}

fn complete(job: &Path) -> Vec<u64> {
    list_checkpoints(job)
        .unwrap()
        .into_iter()
        .filter(|c| c.status == "complete")
        .map(|c| c.id)
        .collect()
}

#[test]
fn a_starting_job_sweeps_the_leftovers_of_jobs_that_crashed_here() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let [dead, running, elsewhere, ended] = [(); 4].map(|_| finished_job(base));
    let me = LockOwner::this_process();
    // Crashed here: its process is gone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let gone = LockOwner {
        pid: child.id(),
        ..me.clone()
    };
    std::fs::write(dead.join(LOCK_FILE), gone.encode()).unwrap();
    // Running here: this test process plays it.
    std::fs::write(running.join(LOCK_FILE), me.encode()).unwrap();
    // Locked from another container (another pid namespace).
    let other = LockOwner {
        pid: child.id(),
        pid_ns: "pid:[1]".into(),
        ..me.clone()
    };
    std::fs::write(elsewhere.join(LOCK_FILE), other.encode()).unwrap();
    let orphans: Vec<[PathBuf; 2]> = [&dead, &running, &elsewhere, &ended]
        .iter()
        .map(|j| leave_orphans(j))
        .collect();
    let before: Vec<Vec<u64>> = [&dead, &running, &elsewhere, &ended]
        .iter()
        .map(|j| complete(j))
        .collect();
    assert!(before.iter().all(|c| !c.is_empty()), "{before:?}");

    // Another job starts under the same base directory (and sweeps in the
    // background while it runs).
    finished_job(base);
    let t = Instant::now();
    while orphans[0].iter().any(|p| p.exists()) || dead.join(LOCK_FILE).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the crashed job's leftovers stay: {:?}",
            orphans[0]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its complete checkpoints stay, and load.
    assert_eq!(complete(&dead), before[0]);
    for id in &before[0] {
        load_checkpoint(&dead.join(format!("chk-{id}"))).unwrap();
    }
    // The others are left alone, locks included.
    for (i, job) in [&running, &elsewhere, &ended].iter().enumerate() {
        for p in &orphans[i + 1] {
            assert!(p.exists(), "{} was swept", p.display());
        }
        assert_eq!(complete(job), before[i + 1]);
    }
    assert_eq!(
        LockOwner::parse(&std::fs::read_to_string(running.join(LOCK_FILE)).unwrap()),
        Some(me)
    );
    assert!(elsewhere.join(LOCK_FILE).exists());
    assert!(!ended.join(LOCK_FILE).exists());
}
