//! Checkpoint storage on the filesystem, in Flink's layout:
//!
//! ```text
//! <execution.checkpointing.dir>/<job-id>/
//!     chk-<n>/_metadata                 the checkpoint: which files hold which subtask's state
//!     chk-<n>/<chain>-<subtask>.state   one file per subtask (operator, keyed and channel state)
//!     shared/                           files referenced by several checkpoints (incremental state)
//!     taskowned/                        files owned by tasks, not by a checkpoint
//! ```
//!
//! # Files
//! Every file weir writes here is framed: the magic `WEIR`, a kind byte, a
//! format version (u16), the payload length (u64), the payload's CRC-32, then
//! the payload (postcard). [`read_framed`] checks all of it, so a truncated or
//! bit-flipped file is reported, never loaded.
//!
//! # Atomicity
//! State files are written and fsynced by the subtasks before they
//! acknowledge. `_metadata` is written last by the coordinator, only when
//! every subtask has acknowledged: to `_metadata.inprogress`, fsynced, then
//! renamed, and the directory fsynced. A checkpoint directory without a valid
//! `_metadata` is incomplete and is never restored.
//!
//! # Deletion
//! A subsumed checkpoint is deleted `_metadata` first: from that moment it is
//! no longer a restore candidate, so a crash half-way through deleting leaves
//! an incomplete directory, never a checkpoint that points to missing files.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{CheckpointMetadata, SubtaskState};
use crate::{Error, Result};

/// Format version of the framed files written by this build.
pub const FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"WEIR";
const HEADER: usize = 4 + 1 + 2 + 8 + 4;

/// What a framed file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FileKind {
    /// `_metadata`.
    Metadata = b'M',
    /// A subtask's state.
    State = b'S',
}

/// Encodes `value` as a framed file's bytes.
pub fn frame<T: Serialize>(kind: FileKind, value: &T) -> Result<Vec<u8>> {
    let payload = postcard::to_allocvec(value)?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decodes a framed file's bytes, checking magic, kind, version, length and checksum.
pub fn unframe<T: DeserializeOwned>(kind: FileKind, bytes: &[u8], path: &Path) -> Result<T> {
    let corrupt = |why: String| Error::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: why,
    };
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(corrupt("not a weir checkpoint file (bad header)".into()));
    }
    if bytes[4] != kind as u8 {
        return Err(corrupt(format!("expected a {kind:?} file")));
    }
    let version = u16::from_le_bytes([bytes[5], bytes[6]]);
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let len = u64::from_le_bytes(bytes[7..15].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(bytes[15..19].try_into().unwrap_or_default());
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(corrupt(format!(
            "truncated: {} of {len} payload bytes",
            payload.len()
        )));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    postcard::from_bytes(payload).map_err(|e| corrupt(format!("undecodable payload: {e}")))
}

/// Reads and checks a framed file.
pub fn read_framed<T: DeserializeOwned>(kind: FileKind, path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| Error::io("cannot read checkpoint file", path, e))?;
    unframe(kind, &bytes, path)
}

/// Writes bytes to `path` and fsyncs them.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        File::create(path).map_err(|e| Error::io("cannot create checkpoint file", path, e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io("cannot write checkpoint file", path, e))?;
    f.sync_all()
        .map_err(|e| Error::io("cannot sync checkpoint file", path, e))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The directories of one job's checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointStorage {
    job_dir: PathBuf,
}

impl CheckpointStorage {
    /// Storage under `base/<job_id>/`, creating `shared/` and `taskowned/`.
    pub fn create(base: &Path, job_id: &str) -> Result<Self> {
        let job_dir = base.join(job_id);
        for d in [job_dir.join("shared"), job_dir.join("taskowned")] {
            fs::create_dir_all(&d)
                .map_err(|e| Error::io("cannot create checkpoint directory", &d, e))?;
        }
        // Marks the directory as in use, for `weir checkpoints gc`.
        let lock = job_dir.join(LOCK_FILE);
        fs::write(&lock, std::process::id().to_string())
            .map_err(|e| Error::io("cannot write checkpoint directory", &lock, e))?;
        Ok(CheckpointStorage { job_dir })
    }

    /// The job has ended: its directory is no longer in use.
    pub fn release(&self) {
        let _ = fs::remove_file(self.job_dir.join(LOCK_FILE));
    }

    /// `<dir>/<job-id>`.
    pub fn job_dir(&self) -> &Path {
        &self.job_dir
    }

    /// `<dir>/<job-id>/chk-<n>`.
    pub fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.job_dir.join(format!("chk-{id}"))
    }

    /// Writes one subtask's state for checkpoint `id`; returns (relative file name, size).
    pub fn write_state(
        &self,
        id: u64,
        chain: usize,
        subtask: usize,
        state: &SubtaskState,
    ) -> Result<(String, u64)> {
        let dir = self.checkpoint_dir(id);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create checkpoint directory", &dir, e))?;
        let name = format!("{chain}-{subtask}.state");
        let bytes = frame(FileKind::State, state)?;
        write_synced(&dir.join(&name), &bytes)?;
        Ok((name, bytes.len() as u64))
    }

    /// Writes `_metadata` atomically: temp file, fsync, rename, fsync of the directory.
    pub fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<PathBuf> {
        let dir = self.checkpoint_dir(meta.checkpoint_id);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create checkpoint directory", &dir, e))?;
        let tmp = dir.join("_metadata.inprogress");
        write_synced(&tmp, &frame(FileKind::Metadata, meta)?)?;
        crate::failpoint::hit("after-metadata-write")?;
        let path = dir.join("_metadata");
        fs::rename(&tmp, &path)
            .map_err(|e| Error::io("cannot publish checkpoint metadata", &path, e))?;
        sync_dir(&dir);
        Ok(dir)
    }

    /// Deletes checkpoint `id`: `_metadata` first, then the rest.
    pub fn discard(&self, id: u64) {
        let dir = self.checkpoint_dir(id);
        let _ = fs::remove_file(dir.join("_metadata"));
        sync_dir(&dir);
        if let Err(e) = fs::remove_dir_all(&dir) {
            // A late upload may still be writing into an aborted checkpoint; its
            // acknowledgement or decline deletes the directory again.
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), error = %e, "checkpoint directory not deleted yet");
            }
        }
    }

    /// Deletes the whole job directory.
    pub fn discard_all(&self) {
        if let Err(e) = fs::remove_dir_all(&self.job_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.job_dir.display(), error = %e, "cannot delete checkpoints");
            }
        }
    }
}

/// A complete checkpoint read back for a restore.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
    /// Every subtask's state, in metadata order.
    pub states: Vec<SubtaskState>,
}

/// Loads and verifies the checkpoint in `dir` (a `chk-<n>` directory).
pub fn load_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let meta_path = dir.join("_metadata");
    if !meta_path.exists() {
        return Err(Error::CorruptCheckpoint {
            path: dir.to_path_buf(),
            reason: "no _metadata: the checkpoint is incomplete".into(),
        });
    }
    let metadata: CheckpointMetadata = read_framed(FileKind::Metadata, &meta_path)?;
    let mut states = Vec::with_capacity(metadata.subtasks.len());
    for h in &metadata.subtasks {
        let path = dir.join(&h.file);
        let st: SubtaskState = read_framed(FileKind::State, &path)?;
        states.push(st);
    }
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        metadata,
        states,
    })
}

/// The checkpoint to restore from `path`: a `chk-<n>` directory (it must be
/// valid), or a job directory (its newest valid checkpoint; invalid newer
/// ones are reported and skipped).
pub fn resolve_restore(path: &Path) -> Result<LoadedCheckpoint> {
    let is_chk = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("chk-"))
        || path.join("_metadata").exists();
    if is_chk {
        return load_checkpoint(path);
    }
    let entries =
        fs::read_dir(path).map_err(|e| Error::io("cannot read checkpoint directory", path, e))?;
    let mut ids: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("chk-")
                .and_then(|n| n.parse().ok())
                .map(|id| (id, e.path()))
        })
        .collect();
    ids.sort_by_key(|x| std::cmp::Reverse(x.0));
    for (_, dir) in &ids {
        match load_checkpoint(dir) {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(error = %e, "skipping checkpoint");
                eprintln!("warning: skipping {}: {e}", dir.display());
            }
        }
    }
    Err(Error::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: format!(
            "no complete checkpoint found ({} incomplete or corrupt)",
            ids.len()
        ),
    })
}

/// What `weir checkpoints` knows about one `chk-<n>` directory.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckpointInfo {
    /// The checkpoint id.
    pub id: u64,
    /// The directory.
    pub dir: PathBuf,
    /// `complete`, `incomplete` (no `_metadata`) or `corrupt`.
    pub status: &'static str,
    /// Why it is corrupt.
    pub problem: Option<String>,
    /// Total bytes of its files.
    pub size: u64,
    /// Completion time (ms since the epoch), when complete.
    pub completed_timestamp: Option<u64>,
    /// Whether it is a savepoint.
    pub is_savepoint: bool,
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The job directories under `dir`: `dir` itself if it holds `chk-*`
/// directories, else its subdirectories that do.
pub fn job_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let is_job = |d: &Path| {
        fs::read_dir(d)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("chk-") || e.file_name() == "shared"
                })
            })
            .unwrap_or(false)
    };
    if is_job(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let rd =
        fs::read_dir(dir).map_err(|e| Error::io("cannot read checkpoint directory", dir, e))?;
    let mut jobs: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && is_job(p))
        .collect();
    jobs.sort();
    Ok(jobs)
}

/// Every `chk-<n>` directory of a job directory, oldest first, checked.
pub fn list_checkpoints(job_dir: &Path) -> Result<Vec<CheckpointInfo>> {
    let rd = fs::read_dir(job_dir)
        .map_err(|e| Error::io("cannot read checkpoint directory", job_dir, e))?;
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("chk-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let dir = e.path();
        let size = dir_size(&dir);
        let info = match load_checkpoint(&dir) {
            Ok(c) => CheckpointInfo {
                id,
                dir,
                status: "complete",
                problem: None,
                size,
                completed_timestamp: Some(c.metadata.completed_timestamp),
                is_savepoint: c.metadata.is_savepoint,
            },
            Err(err) => CheckpointInfo {
                status: if dir.join("_metadata").exists() {
                    "corrupt"
                } else {
                    "incomplete"
                },
                problem: Some(err.to_string()),
                id,
                dir,
                size,
                completed_timestamp: None,
                is_savepoint: false,
            },
        };
        out.push(info);
    }
    out.sort_by_key(|i| i.id);
    Ok(out)
}

/// The lock file a running job keeps in its directory (its process id).
pub const LOCK_FILE: &str = ".running";

/// Whether the job owning `job_dir` is running (its lock names a live process).
pub fn job_is_running(job_dir: &Path) -> bool {
    fs::read_to_string(job_dir.join(LOCK_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// Files and directories of `job_dir` that no complete checkpoint references:
/// incomplete `chk-<n>` directories (a crash mid-checkpoint), temporary
/// `_metadata.inprogress` files, and files inside complete checkpoints that
/// their `_metadata` does not list. Referenced files are never included.
/// Corrupt checkpoints are reported by `verify`, not collected.
pub fn orphans(job_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for info in list_checkpoints(job_dir)? {
        match info.status {
            "incomplete" => out.push(info.dir),
            "complete" => {
                let c = load_checkpoint(&info.dir)?;
                let referenced: Vec<&str> = c
                    .metadata
                    .subtasks
                    .iter()
                    .map(|h| h.file.as_str())
                    .collect();
                for e in fs::read_dir(&info.dir)
                    .map_err(|e| Error::io("cannot read checkpoint directory", &info.dir, e))?
                    .flatten()
                {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name != "_metadata" && !referenced.contains(&name.as_str()) {
                        out.push(e.path());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}
