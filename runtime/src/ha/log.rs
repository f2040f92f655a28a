//! The leadership log: a directory of write-once entries, the only state of
//! high availability (see [`super`] for the protocol).
//!
//! Entries are files `<seq>` (20 digits, so names sort by number) holding
//! one JSON [`Entry`]. Every entry is created with [`Store::put_new`]:
//! exclusive and atomic (a hard link locally, a conditional PUT on S3), so
//! for each sequence number at most one writer ever succeeds. The log is
//! therefore one history that every process reads the same way.
//!
//! The decisions taken from the log are the plain functions at the bottom
//! ([`next_generation`], [`resume_point`], [`newer_than`]), tested without
//! any storage.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::checkpoint::store::{self, Store};
use crate::{Error, Result};

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A JobManager took leadership: generation `generation`, over every
    /// older one.
    Leader {
        /// One more than every generation before it in the log.
        generation: u64,
        /// Who: process id, host name.
        pid: u32,
        /// The host name of the process.
        host: String,
        /// When (ms since the epoch).
        started_ms: u64,
        /// What this generation restored from: a checkpoint of the job (its
        /// `chk-<n>` directory), a savepoint, or nothing (a fresh start).
        restored_from: Option<PathBuf>,
    },
    /// Generation `generation` completed checkpoint `id`: its `_metadata`
    /// was written before this entry; the checkpoint counts as complete
    /// from this entry on (not from its `_metadata`).
    Checkpoint {
        /// The generation that took it.
        generation: u64,
        /// The checkpoint id (`chk-<id>` in the job directory).
        id: u64,
    },
}

impl Entry {
    /// The generation that wrote the entry.
    pub fn generation(&self) -> u64 {
        match self {
            Entry::Leader { generation, .. } | Entry::Checkpoint { generation, .. } => *generation,
        }
    }
}

/// The log's entries, by sequence number (ascending).
pub type History = Vec<(u64, Entry)>;

/// The log directory of a job, in its store.
#[derive(Debug, Clone)]
pub struct Log {
    dir: PathBuf,
    store: Arc<dyn Store>,
    key: String,
}

fn name_of(seq: u64) -> String {
    format!("{seq:020}")
}

impl Log {
    /// The log at `dir` (a path, `file://` or `s3://` URI).
    pub fn open(dir: &Path) -> Result<Log> {
        let dir = store::normalize(dir)?;
        let (store, key) = store::resolve(&dir)?;
        if store.is_local() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io("cannot create the high-availability log", &dir, e))?;
        }
        Ok(Log { dir, store, key })
    }

    /// Where it is, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn key_of(&self, seq: u64) -> String {
        format!("{}/{}", self.key.trim_end_matches('/'), name_of(seq))
    }

    /// The sequence numbers present, ascending (temporary files of a
    /// local writer and foreign names are left out).
    pub fn seqs(&self) -> Result<Vec<u64>> {
        let mut seqs: Vec<u64> = self
            .store
            .list_dir(&self.key)?
            .into_iter()
            .filter(|e| !e.is_dir && e.name.len() == 20)
            .filter_map(|e| e.name.parse().ok())
            .collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Reads entry `seq`.
    pub fn read(&self, seq: u64) -> Result<Entry> {
        let bytes = self.store.get(&self.key_of(seq))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::CorruptCheckpoint {
            path: self.dir.join(name_of(seq)),
            reason: format!("not a high-availability log entry: {e}"),
        })
    }

    /// Every entry, ascending.
    pub fn history(&self) -> Result<History> {
        self.seqs()?
            .into_iter()
            .map(|s| self.read(s).map(|e| (s, e)))
            .collect()
    }

    /// Creates entry `seq` if no entry `seq` exists: `Ok(false)` when
    /// another writer has it (it is left as it is). `before_publish` runs
    /// after the bytes are written, before they are visible (failure points).
    pub fn append(
        &self,
        seq: u64,
        entry: &Entry,
        before_publish: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let bytes = serde_json::to_vec_pretty(entry).map_err(|e| Error::Serde(e.to_string()))?;
        self.store.put_new(&self.key_of(seq), bytes, before_publish)
    }

    /// Deletes the entries below `seq` (never `seq` itself or later ones).
    pub fn prune_below(&self, seq: u64) -> Result<usize> {
        let mut n = 0;
        for s in self.seqs()?.into_iter().take_while(|s| *s < seq) {
            self.store.delete(&self.key_of(s))?;
            n += 1;
        }
        Ok(n)
    }
}

/// The generation a new leader takes: one more than any in the log.
pub fn next_generation(history: &[(u64, Entry)]) -> u64 {
    history
        .iter()
        .map(|(_, e)| e.generation())
        .max()
        .unwrap_or(0)
        + 1
}

/// Where a new leader resumes from, given the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumePoint {
    /// Nothing: the job starts fresh (or from an explicit `-s`).
    Fresh,
    /// The latest complete checkpoint, `chk-<id>` of the job directory.
    Checkpoint(u64),
    /// What the previous generation restored from (a savepoint, or a
    /// checkpoint outside the job directory), when it completed no
    /// checkpoint of its own.
    Inherited(PathBuf),
}

/// The resume point: the latest checkpoint entry when no leader entry
/// follows it; else what the latest leader restored from (a leader that
/// completed nothing hands on its own start).
pub fn resume_point(history: &[(u64, Entry)]) -> ResumePoint {
    match history.last().map(|(_, e)| e) {
        None => ResumePoint::Fresh,
        Some(Entry::Checkpoint { id, .. }) => ResumePoint::Checkpoint(*id),
        Some(Entry::Leader {
            restored_from: Some(p),
            ..
        }) => ResumePoint::Inherited(p.clone()),
        Some(Entry::Leader {
            restored_from: None,
            ..
        }) => ResumePoint::Fresh,
    }
}

/// The first entry after `seq` (written by someone else when `seq` is this
/// leader's last entry): the proof that this leader is superseded.
pub fn newer_than(history: &[(u64, Entry)], seq: u64) -> Option<&(u64, Entry)> {
    history.iter().find(|(s, _)| *s > seq)
}

/// The ids of the checkpoints the log says are complete.
pub fn checkpoint_ids(history: &[(u64, Entry)]) -> Vec<(u64, u64)> {
    history
        .iter()
        .filter_map(|(s, e)| match e {
            Entry::Checkpoint { id, .. } => Some((*id, *s)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(g: u64, from: Option<&str>) -> Entry {
        Entry::Leader {
            generation: g,
            pid: 1,
            host: "h".into(),
            started_ms: 0,
            restored_from: from.map(PathBuf::from),
        }
    }
    fn chk(g: u64, id: u64) -> Entry {
        Entry::Checkpoint { generation: g, id }
    }

    #[test]
    fn generations_increase_over_pruned_logs() {
        assert_eq!(next_generation(&[]), 1);
        let h = vec![(1, leader(1, None)), (2, chk(1, 1)), (3, leader(2, None))];
        assert_eq!(next_generation(&h), 3);
        // The leader entries pruned away: checkpoint entries carry it on.
        let pruned = vec![(7, chk(4, 9)), (8, chk(4, 10))];
        assert_eq!(next_generation(&pruned), 5);
    }

    #[test]
    fn resume_from_the_latest_checkpoint_or_what_the_last_leader_started_from() {
        assert_eq!(resume_point(&[]), ResumePoint::Fresh);
        let h = vec![(1, leader(1, None)), (2, chk(1, 1)), (3, chk(1, 2))];
        assert_eq!(resume_point(&h), ResumePoint::Checkpoint(2));
        // A leader that restored chk-2 and died before checkpointing: its
        // start (chk-2 of the job directory) is where the next resumes.
        let mut h2 = h.clone();
        h2.push((4, leader(2, Some("/c/job/chk-2"))));
        assert_eq!(
            resume_point(&h2),
            ResumePoint::Inherited(PathBuf::from("/c/job/chk-2"))
        );
        // Started from a savepoint, nothing completed since: the savepoint.
        let h3 = vec![
            (1, leader(1, Some("/sp/savepoint-1"))),
            (2, leader(2, Some("/sp/savepoint-1"))),
        ];
        assert_eq!(
            resume_point(&h3),
            ResumePoint::Inherited(PathBuf::from("/sp/savepoint-1"))
        );
        // A fresh first generation that never checkpointed: fresh again.
        assert_eq!(resume_point(&[(1, leader(1, None))]), ResumePoint::Fresh);
    }

    #[test]
    fn a_newer_entry_is_the_proof_of_supersession() {
        let h = vec![(5, chk(2, 7)), (6, leader(3, None))];
        assert_eq!(newer_than(&h, 5).map(|(s, _)| *s), Some(6));
        assert!(newer_than(&h, 6).is_none());
        assert_eq!(checkpoint_ids(&h), vec![(7, 5)]);
    }

    #[test]
    fn appends_are_exclusive_and_the_history_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("ha")).unwrap();
        assert!(log.append(1, &leader(1, None), &|| Ok(())).unwrap());
        // The same sequence number again: refused, the first stays.
        assert!(!log.append(1, &leader(9, None), &|| Ok(())).unwrap());
        assert!(log.append(2, &chk(1, 1), &|| Ok(())).unwrap());
        let h = log.history().unwrap();
        assert_eq!(h, vec![(1, leader(1, None)), (2, chk(1, 1))]);
        // No temporary file is left beside the entries.
        let names: Vec<String> = std::fs::read_dir(log.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(log.prune_below(2).unwrap(), 1);
        assert_eq!(log.seqs().unwrap(), vec![2]);
    }

    #[test]
    fn racing_writers_one_wins_each_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("ha")).unwrap();
        let wins: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u64)
                .map(|w| {
                    let log = log.clone();
                    s.spawn(move || {
                        (1..=50u64)
                            .filter(|&seq| log.append(seq, &chk(w, seq), &|| Ok(())).unwrap())
                            .count() as u64
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(wins.iter().sum::<u64>(), 50);
        assert_eq!(log.seqs().unwrap(), (1..=50).collect::<Vec<_>>());
    }
}
