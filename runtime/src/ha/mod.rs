//! High availability without a coordination service: stable job ids,
//! automatic resume, and JobManager leadership fenced through the
//! checkpoint storage itself (`high-availability.type: storage`).
//!
//! Flink keeps the pointer to a job's latest checkpoint, and the leader's
//! identity, in ZooKeeper or Kubernetes ConfigMaps. weir keeps both in one
//! **leadership log** ([`log`]): a directory of write-once entries numbered
//! 1, 2, 3, ... in `high-availability.storageDir/<job id>/ha/` (by default
//! inside the job's checkpoint directory). Every entry is created with an
//! exclusive, atomic create ([`crate::checkpoint::store::Store::put_new`]: a
//! hard link on a local or shared filesystem, `If-None-Match: *` on S3), so
//! for each number exactly one writer wins. That is all the consensus the
//! protocol needs.
//!
//! # Identity and resume
//! With HA on, the job id is [`job_id`]`(cluster id, job name)`: a process
//! started again with the same command line (by systemd, Kubernetes, a
//! person) is the same job, with the same job directory. It resumes from
//! the log's [`log::resume_point`]: the latest complete checkpoint, or, when
//! the generation before it completed none, what that generation restored
//! from (the savepoint the job was first started from, say). An explicit
//! `execution.state-recovery.path` (`-s`) still wins.
//!
//! # The protocol
//! 1. **Taking leadership.** A JobManager (the single process, in local
//!    mode) reads the log and appends `Leader { generation: g }` at the next
//!    number, g one more than any generation in the log. If another writer
//!    got that number first, it reads again and retries. Its leader entry's
//!    number is the last entry it knows.
//! 2. **Completing a checkpoint.** `_metadata` is written (exclusively: a
//!    `_metadata` that exists is never replaced), then the leader appends
//!    `Checkpoint { generation, id }` at *its last number + 1*. Only that
//!    append makes the checkpoint complete: only then are subtasks told
//!    (two-phase-commit sinks commit), is retention applied and the log
//!    pruned. A `_metadata` without its entry is not a checkpoint: a new
//!    leader deletes such directories before it restores.
//! 3. **Fencing.** A leader whose append finds the number taken has been
//!    superseded: someone appended after its last entry, and only a newer
//!    leader does that. It stops at once (`fenced`, exit status
//!    [`EXIT_FENCED`]), committing nothing, deleting nothing, leaving the
//!    job directory's lock alone. A watcher also reads the log every
//!    `heartbeat.interval` and stops a superseded leader that has nothing
//!    to commit.
//!
//! # Invariants
//! - **One history.** Entry numbers are dense and each is written once, so
//!   all processes read the same sequence of leaders and checkpoints.
//! - **No commit after supersession.** Generation g appends only at the
//!   number after its own last entry; once g+1's leader entry exists at or
//!   before that number, every append of g fails. So no checkpoint of g
//!   becomes complete, and no sink of g commits a checkpoint the log does
//!   not have, after g+1 took over. A sink commit of g that happened before
//!   is of a checkpoint in the log, which g+1 restores and commits again
//!   (idempotently: the transactions are in the restored state).
//! - **Resume is the newest complete state.** g+1 restores from the last
//!   checkpoint entry before its leader entry (rule above); no entry of g
//!   can come after it.
//! - **Cluster mode.** The JobManager's deployment generations start at
//!   `g << 32` (see `crate::cluster`), so TaskManagers that re-register with
//!   a new JobManager take its deployments as newer than every old one.
//!
//! # Crash points tested (`tests/ha_resume.rs`)
//! `ha-after-leader-write` (leader entry written, nothing restored yet: the
//! next leader inherits its resume point), `ha-before-commit` (`_metadata`
//! written, no entry: the checkpoint is deleted at the next start and its
//! sink transactions are never committed), SIGKILL at seeded random
//! moments, and a stopped (SIGSTOP) leader woken after a new one took over.
//!
//! Not used as the correctness mechanism, and not built: a Kubernetes
//! Lease or etcd lease would only make a replacement start sooner.

pub mod log;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::checkpoint::CompletionLog;
use crate::config::{options, Conf};
use crate::{Error, Result};
use log::{Entry, Log, ResumePoint};

/// The exit status of a process that was fenced (a newer JobManager took
/// over its job). Supervisors should not restart on it (systemd:
/// `RestartPreventExitStatus=75`).
pub const EXIT_FENCED: i32 = 75;

/// `high-availability.*`, when HA is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    /// `high-availability.cluster-id`.
    pub cluster_id: String,
    /// `high-availability.storageDir` (default: the checkpoint directory).
    pub storage_dir: PathBuf,
}

impl HaSettings {
    /// The settings, `None` with `high-availability.type: none`. HA needs
    /// checkpointing on and a cluster id of letters, digits, `-`, `_`, `.`.
    pub fn from_conf(conf: &Conf) -> Result<Option<HaSettings>> {
        if !conf.get(&options::HA_TYPE).eq_ignore_ascii_case("storage") {
            return Ok(None);
        }
        let cluster_id = conf.get(&options::HA_CLUSTER_ID);
        if cluster_id.is_empty()
            || !cluster_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(Error::Ha(format!(
                "high-availability.cluster-id '{cluster_id}' must be non-empty letters, digits, '-', '_' or '.'"
            )));
        }
        if crate::checkpoint::CheckpointConfig::from_conf(conf)
            .interval
            .is_none()
        {
            return Err(Error::Ha(
                "high-availability.type: storage resumes from checkpoints: set execution.checkpointing.interval (e.g. 1s)".into(),
            ));
        }
        let dir = conf.get(&options::HA_STORAGE_DIR);
        let storage_dir = if dir.is_empty() {
            conf.get(&options::CHECKPOINTING_DIR)
        } else {
            PathBuf::from(dir)
        };
        Ok(Some(HaSettings {
            cluster_id,
            storage_dir,
        }))
    }

    /// The log directory of job `job_id`.
    pub fn log_dir(&self, job_id: &str) -> PathBuf {
        self.storage_dir.join(job_id).join("ha")
    }
}

/// The job id of job `name` in cluster `cluster_id`: 32 hex digits, the
/// same in every process and every run (two FNV-1a hashes; std's hasher is
/// randomly seeded).
pub fn job_id(cluster_id: &str, name: &str) -> String {
    let fnv = |seed: u64| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for b in cluster_id.bytes().chain([0u8]).chain(name.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    };
    format!("{:016x}{:016x}", fnv(0), fnv(0x9e37_79b9_7f4a_7c15))
}

/// The run id of the subtasks of JobManager generation `generation` (0:
/// no high availability): see `RuntimeContext::run_id`.
pub fn run_id(job_id: &str, generation: u64) -> String {
    let prefix: String = job_id.chars().take(8).collect();
    if generation == 0 {
        prefix
    } else {
        format!("{prefix}g{generation}")
    }
}

/// What a new leader knows about the log.
#[derive(Debug, Default)]
struct Known {
    /// The number of this leader's last entry.
    last_seq: u64,
    /// Complete checkpoints: id -> entry number.
    committed: std::collections::BTreeMap<u64, u64>,
}

/// This process's leadership of a job (see the module doc).
#[derive(Debug)]
pub struct Leadership {
    log: Log,
    generation: u64,
    job_dir: PathBuf,
    known: Mutex<Known>,
}

/// What taking leadership decided.
#[derive(Debug)]
pub struct Acquired {
    /// The leadership, to commit checkpoints with.
    pub leadership: Arc<Leadership>,
    /// What the job restores from (`None`: a fresh start).
    pub restore: Option<PathBuf>,
    /// The smallest id the job's new checkpoints may take: above every
    /// `chk-<n>` directory there was, complete or not.
    pub first_id: u64,
}

impl Leadership {
    /// Takes leadership of the job whose checkpoints live in `job_dir` (rule
    /// 1), deletes the job's `chk-<n>` directories the log does not have
    /// (rule 2), and says what to restore: `explicit` (`-s`) if given, else
    /// the log's resume point.
    pub fn acquire(log_dir: &Path, job_dir: &Path, explicit: Option<PathBuf>) -> Result<Acquired> {
        let log = Log::open(log_dir)?;
        let owner = crate::checkpoint::lock::LockOwner::this_process();
        for _ in 0..100 {
            let history = log.history()?;
            let generation = log::next_generation(&history);
            let restore = explicit
                .clone()
                .or_else(|| match log::resume_point(&history) {
                    ResumePoint::Fresh => None,
                    ResumePoint::Checkpoint(id) => Some(job_dir.join(format!("chk-{id}"))),
                    ResumePoint::Inherited(p) => Some(p),
                });
            let seq = history.last().map(|(s, _)| *s).unwrap_or(0) + 1;
            let entry = Entry::Leader {
                generation,
                pid: owner.pid,
                host: owner.host.clone(),
                started_ms: crate::checkpoint::now_ms(),
                restored_from: restore.clone(),
            };
            if !log.append(seq, &entry, &|| Ok(()))? {
                continue; // another writer took `seq`: read again
            }
            crate::failpoint::hit("ha-after-leader-write")?;
            let committed: std::collections::BTreeMap<u64, u64> =
                log::checkpoint_ids(&history).into_iter().collect();
            // Directories without a log entry: a crash or a superseded
            // leader between `_metadata` and its entry, or incomplete.
            let mut max_seen = committed.keys().next_back().copied().unwrap_or(0);
            if let Ok(dirs) = crate::checkpoint::storage::chk_dirs(job_dir) {
                for (id, dir) in dirs {
                    max_seen = max_seen.max(id);
                    if !committed.contains_key(&id) {
                        match crate::checkpoint::storage::remove(&dir) {
                            Ok(()) => {
                                tracing::info!(dir = %dir.display(), "removed a checkpoint the high-availability log does not have")
                            }
                            Err(e) => {
                                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an uncommitted checkpoint")
                            }
                        }
                    }
                }
            }
            tracing::info!(generation, seq, log = %log.dir().display(), restore = ?restore, "took leadership");
            return Ok(Acquired {
                leadership: Arc::new(Leadership {
                    log,
                    generation,
                    job_dir: job_dir.to_path_buf(),
                    known: Mutex::new(Known {
                        last_seq: seq,
                        committed,
                    }),
                }),
                restore,
                first_id: max_seen + 1,
            });
        }
        Err(Error::Ha(format!(
            "could not take leadership: the log at {} kept changing (100 attempts)",
            log.dir().display()
        )))
    }

    /// This leader's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why this leader is superseded: the entry after its last one.
    fn superseded_by(&self, seq: u64) -> Error {
        let what = match self.log.read(seq) {
            Ok(Entry::Leader {
                generation,
                pid,
                host,
                ..
            }) => format!("JobManager generation {generation} (pid {pid} on {host}) took over"),
            Ok(Entry::Checkpoint { generation, id }) => {
                format!("generation {generation} completed checkpoint {id}")
            }
            Err(e) => format!("entry {seq} was written by another process ({e})"),
        };
        Error::Fenced(format!(
            "{what} in {}; this JobManager (generation {}) commits nothing more and stops",
            self.log.dir().display(),
            self.generation
        ))
    }

    /// Completes checkpoint `id` (rule 2): `Err(Error::Fenced)` when a newer
    /// leader exists, and then the checkpoint is not complete.
    fn commit_checkpoint(&self, id: u64) -> Result<()> {
        let mut known = self.known();
        let seq = known.last_seq + 1;
        let entry = Entry::Checkpoint {
            generation: self.generation,
            id,
        };
        crate::failpoint::hit("ha-before-commit")?;
        if self.log.append(seq, &entry, &|| Ok(()))? {
            known.last_seq = seq;
            known.committed.insert(id, seq);
            Ok(())
        } else {
            drop(known);
            Err(self.superseded_by(seq))
        }
    }

    /// `Err(Error::Fenced)` when the log has an entry after this leader's last.
    fn check_log(&self) -> Result<()> {
        let last = self.known().last_seq;
        match self.log.seqs()?.into_iter().find(|s| *s > last) {
            Some(s) => Err(self.superseded_by(s)),
            None => Ok(()),
        }
    }

    /// Forgets the log entries before checkpoint `oldest_retained` (its
    /// older checkpoints are deleted): the log stays as short as retention.
    fn prune_log(&self, oldest_retained: u64) {
        let seq = {
            let mut known = self.known();
            let Some(&seq) = known.committed.get(&oldest_retained) else {
                return;
            };
            known.committed.retain(|id, _| *id >= oldest_retained);
            seq
        };
        if let Err(e) = self.log.prune_below(seq) {
            tracing::warn!(error = %e, "cannot prune the high-availability log");
        }
    }

    /// The job directory this leadership is of.
    pub fn job_dir(&self) -> &Path {
        &self.job_dir
    }

    /// Reads the log every `interval` on a thread of its own and stops the
    /// process ([`fenced_exit`]) once a newer leader exists. The thread
    /// ends when the leadership is dropped (the job ended).
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("weir-ha-watch".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(me) = weak.upgrade() else {
                    return;
                };
                match me.check_log() {
                    Ok(()) => {}
                    Err(Error::Fenced(m)) => fenced_exit(&m),
                    Err(e) => tracing::warn!(error = %e, "cannot read the high-availability log"),
                }
            });
    }
}

impl CompletionLog for Leadership {
    fn generation(&self) -> u64 {
        Leadership::generation(self)
    }
    fn commit(&self, id: u64) -> Result<()> {
        self.commit_checkpoint(id)
    }
    fn check(&self) -> Result<()> {
        self.check_log()
    }
    fn prune(&self, oldest_retained: u64) {
        self.prune_log(oldest_retained)
    }
    fn is_committed(&self, id: u64) -> bool {
        self.known().committed.contains_key(&id)
    }
}

/// Ends the process because it was fenced: says why on stderr and exits
/// with [`EXIT_FENCED`] at once, before anything else is committed or
/// cleaned up (the new leader owns the job directory now).
pub fn fenced_exit(message: &str) -> ! {
    tracing::error!("fenced: {message}");
    eprintln!("fenced: {message}");
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    std::process::exit(EXIT_FENCED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_stable_and_distinct() {
        let a = job_id("prod", "wordcount");
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, job_id("prod", "wordcount"));
        assert_ne!(a, job_id("prod2", "wordcount"));
        assert_ne!(a, job_id("prod", "wordcount2"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(job_id("ab", "c"), job_id("a", "bc"));
    }

    #[test]
    fn a_new_leader_fences_the_old_one_and_resumes_from_its_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        let log = job.join("ha");
        let a = Leadership::acquire(&log, &job, None).unwrap();
        assert_eq!(a.restore, None);
        assert_eq!(a.leadership.generation(), 1);
        a.leadership.commit(1).unwrap();
        a.leadership.commit(2).unwrap();
        a.leadership.check().unwrap();
        // chk-3 written by the old leader but never committed; chk-2 committed.
        std::fs::create_dir_all(job.join("chk-2")).unwrap();
        std::fs::create_dir_all(job.join("chk-3")).unwrap();
        std::fs::write(job.join("chk-3/_metadata"), b"x").unwrap();
        let b = Leadership::acquire(&log, &job, None).unwrap();
        assert_eq!(b.leadership.generation(), 2);
        assert_eq!(b.restore, Some(job.join("chk-2")));
        assert_eq!(b.first_id, 4, "above every directory seen");
        assert!(
            !job.join("chk-3").exists(),
            "uncommitted checkpoint removed"
        );
        assert!(job.join("chk-2").exists());
        // The old leader can commit nothing more, and knows why.
        let err = a.leadership.commit(3).unwrap_err();
        assert!(
            matches!(&err, Error::Fenced(m) if m.contains("generation 2") && m.contains("generation 1")),
            "{err}"
        );
        assert!(matches!(a.leadership.check(), Err(Error::Fenced(_))));
        b.leadership.commit(4).unwrap();
        b.leadership.check().unwrap();
        // What each leader counts as complete: the log's checkpoints it knows.
        assert!(b.leadership.is_committed(2) && b.leadership.is_committed(4));
        assert!(
            !b.leadership.is_committed(3),
            "the old leader's uncommitted one"
        );
        // An explicit restore path wins over the log.
        let c = Leadership::acquire(&log, &job, Some("/sp/savepoint-x".into())).unwrap();
        assert_eq!(c.restore, Some(PathBuf::from("/sp/savepoint-x")));
        // ... and is inherited by the next leader while nothing completes.
        let d = Leadership::acquire(&log, &job, None).unwrap();
        assert_eq!(d.restore, Some(PathBuf::from("/sp/savepoint-x")));
        assert_eq!(d.leadership.generation(), 4);
    }

    #[test]
    fn pruning_keeps_the_retained_checkpoints_entries() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job");
        let a = Leadership::acquire(&job.join("ha"), &job, None).unwrap();
        for id in 1..=5 {
            a.leadership.commit(id).unwrap();
        }
        a.leadership.prune(4);
        let h = Log::open(&job.join("ha")).unwrap().history().unwrap();
        let ids: Vec<u64> = log::checkpoint_ids(&h)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, vec![4, 5]);
        // A new leader still takes a newer generation and resumes from 5.
        std::fs::create_dir_all(job.join("chk-5")).unwrap();
        let b = Leadership::acquire(&job.join("ha"), &job, None).unwrap();
        assert_eq!(b.leadership.generation(), 2);
        assert_eq!(b.restore, Some(job.join("chk-5")));
    }
}
