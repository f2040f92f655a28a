//! Checkpoint storage on the filesystem, in Flink's layout:
//!
//! ```text
//! <execution.checkpointing.dir>/<job-id>/
//!     chk-<n>/_metadata                 the checkpoint: which files hold which subtask's state
//!     chk-<n>/<chain>-<subtask>.state   one file per subtask (operator, keyed and channel state)
//!     chk-<n>/<instance>-<file>         RocksDB files of a full (non-incremental) checkpoint
//!     shared/<instance>-<sst>           RocksDB SST files of incremental checkpoints,
//!                                       referenced by every checkpoint that needs them
//!     taskowned/                        files owned by tasks, not by a checkpoint
//! ```
//!
//! # Savepoints
//! A savepoint goes to `<target>/savepoint-<first 6 of the job id>-<12 random
//! hex>/` (Flink's name; the target is the one given with the request, else
//! `execution.checkpointing.savepoint-dir`): `_metadata` and one state file
//! per subtask, nothing else. Keyed state is in the canonical form (postcard
//! entries per key group, whatever the backend), so no RocksDB file and no
//! `shared/` reference is in it, and every reference in `_metadata` is a file
//! name relative to the directory: a savepoint can be moved or copied and
//! still restores, at any parallelism, on either backend. The coordinator
//! registers the directory for the savepoint's id ([`CheckpointStorage::begin_savepoint`])
//! so the subtasks' [`CheckpointStorage::write_state`] and `_metadata` go
//! there; nothing in weir deletes a completed savepoint (not retention, not
//! `weir checkpoints gc`, not a cancel); an aborted one is deleted.
//!
//! # Files
//! Every file weir writes here is framed: the magic `WEIR`, a kind byte, a
//! format version (u16), the payload length (u64), the payload's CRC-32, then
//! the payload (postcard). [`read_framed`] checks all of it, so a truncated or
//! bit-flipped file is reported, never loaded. RocksDB's own files are copied
//! as they are; the framed state file that references one records its size
//! and CRC-32 ([`super::StateFile`]): [`load_checkpoint`] checks that every
//! referenced file exists with its size, [`verify_checkpoint`] (and every
//! restore, while it copies) checks the CRC-32.
//!
//! # Atomicity
//! State files and RocksDB files are written and fsynced by the subtasks
//! before they acknowledge (a shared file is written to a temporary name and
//! renamed, so a shared name never holds a partial file). `_metadata` is
//! written last by the coordinator, only when every subtask has acknowledged:
//! to `_metadata.inprogress`, fsynced, then renamed, and the directory
//! fsynced. A checkpoint directory without a valid `_metadata` is incomplete
//! and is never restored. `_metadata` lists, per subtask, every file outside
//! the state file that the subtask's state references (`StateHandle::files`).
//!
//! # Reference counting of shared files
//! A shared file's name is fixed by the RocksDB instance and the SST file
//! number, and SST files never change, so uploading one twice writes the same
//! bytes under the same name. The coordinator counts, per shared file, the
//! retained checkpoints whose `_metadata` lists it; a file is deleted only
//! when that count drops to zero (DESIGN.md invariant 6). A subtask reuses a
//! shared file only if the latest checkpoint it knows to be complete
//! referenced it and the file is still live in its database; SST files live
//! for one interval of time, so such a file is also referenced by the
//! coordinator's latest completed checkpoint, which is always retained: no
//! checkpoint in flight can reference a file whose count dropped to zero.
//!
//! # Deletion, crash-safe
//! A subsumed checkpoint is deleted in this order: (1) its `_metadata` (and
//! the directory is fsynced): from that moment it is no longer a restore
//! candidate and references nothing; (2) the rest of its directory (its state
//! files and full-checkpoint RocksDB files); (3) the shared files whose
//! reference count dropped to zero. A crash at any point in between leaves
//! only files that no complete checkpoint references: an incomplete
//! directory, or unreferenced shared files. The orphan sweep ([`orphans`],
//! run when a job starts on its own directory and by `weir checkpoints gc`)
//! removes exactly those, and never a file a complete checkpoint references.
//! Shared files uploaded for a checkpoint that was then aborted are deleted
//! by the coordinator once a later checkpoint completes without them (or by
//! the sweep after a crash).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{CheckpointMetadata, SubtaskState};
use crate::{Error, Result};

/// Format version of the framed files written by this build (2: RocksDB
/// handles in state files, referenced files listed in `_metadata`).
pub const FORMAT_VERSION: u16 = 2;
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

/// The directories of one job's checkpoints (and of the savepoints it is taking).
#[derive(Debug, Clone)]
pub struct CheckpointStorage {
    job_dir: PathBuf,
    /// Savepoints in flight: checkpoint id -> its `savepoint-...` directory
    /// (shared by every clone: the coordinator registers, subtasks write).
    savepoints: Arc<Mutex<BTreeMap<u64, PathBuf>>>,
}

impl CheckpointStorage {
    /// Storage under `base/<job_id>/`, creating `shared/` and `taskowned/`.
    pub fn create(base: &Path, job_id: &str) -> Result<Self> {
        let job_dir = base.join(job_id);
        for d in [job_dir.join("shared"), job_dir.join("taskowned")] {
            fs::create_dir_all(&d)
                .map_err(|e| Error::io("cannot create checkpoint directory", &d, e))?;
        }
        // Start-up sweep of this job's own directory (never another job's):
        // leftovers of a crash of an earlier run with this id.
        match sweep(&job_dir) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(dir = %job_dir.display(), n = removed.len(), "removed orphaned checkpoint files")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(dir = %job_dir.display(), error = %e, "orphan sweep failed"),
        }
        // Marks the directory as in use, for `weir checkpoints gc`.
        let lock = job_dir.join(LOCK_FILE);
        fs::write(&lock, std::process::id().to_string())
            .map_err(|e| Error::io("cannot write checkpoint directory", &lock, e))?;
        Ok(CheckpointStorage {
            job_dir,
            savepoints: Arc::default(),
        })
    }

    fn savepoint_dirs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, PathBuf>> {
        self.savepoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the directory of savepoint `id` under `base`, named as Flink
    /// names it (`savepoint-<first 6 of the job id>-<12 random hex>`), and
    /// routes the files of checkpoint `id` there instead of `chk-<id>`.
    pub fn begin_savepoint(&self, id: u64, base: &Path, job_id: &str) -> Result<PathBuf> {
        let prefix: String = job_id.chars().take(6).collect();
        let dir = base.join(format!("savepoint-{prefix}-{}", random_hex12()));
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create savepoint directory", &dir, e))?;
        self.savepoint_dirs().insert(id, dir.clone());
        Ok(dir)
    }

    /// Whether checkpoint `id` is a savepoint (registered by [`Self::begin_savepoint`]).
    pub fn is_savepoint(&self, id: u64) -> bool {
        self.savepoint_dirs().contains_key(&id)
    }

    /// Savepoint `id` is complete: it is no longer this job's to write or delete.
    pub fn end_savepoint(&self, id: u64) {
        self.savepoint_dirs().remove(&id);
    }

    /// Where the files of checkpoint `id` go: its savepoint directory, or `chk-<id>`.
    pub fn target_dir(&self, id: u64) -> PathBuf {
        match self.savepoint_dirs().get(&id) {
            Some(d) => d.clone(),
            None => self.checkpoint_dir(id),
        }
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
        let dir = self.target_dir(id);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create checkpoint directory", &dir, e))?;
        let name = format!("{chain}-{subtask}.state");
        let bytes = frame(FileKind::State, state)?;
        write_synced(&dir.join(&name), &bytes)?;
        Ok((name, bytes.len() as u64))
    }

    /// Writes `_metadata` atomically: temp file, fsync, rename, fsync of the directory.
    pub fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<PathBuf> {
        let dir = self.target_dir(meta.checkpoint_id);
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

    /// Copies `src` to `rel` (relative to the job directory) through a
    /// temporary name, fsynced, computing its CRC-32; returns (size, CRC-32).
    /// With `skip_existing`, an existing file is not written again (shared
    /// files: same name, same bytes) and its CRC-32 is computed from `src`.
    pub fn copy_in(&self, src: &Path, rel: &str, skip_existing: bool) -> Result<(u64, u32)> {
        let dest = self.job_dir.join(rel);
        if skip_existing && dest.exists() {
            return file_crc(src);
        }
        let parent = dest.parent().unwrap_or(&self.job_dir).to_path_buf();
        fs::create_dir_all(&parent)
            .map_err(|e| Error::io("cannot create checkpoint directory", &parent, e))?;
        let tmp = parent.join(format!(
            ".{}.inprogress",
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let (size, crc) = copy_crc(src, &tmp)?;
        fs::rename(&tmp, &dest)
            .map_err(|e| Error::io("cannot publish checkpoint file", &dest, e))?;
        Ok((size, crc))
    }

    /// Deletes shared files (relative to the job directory) that no retained
    /// checkpoint references any more.
    pub fn delete_unreferenced(&self, files: &[String]) {
        for f in files {
            if crate::failpoint::hit("delete-shared-file").is_err() {
                return;
            }
            let p = self.job_dir.join(f);
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = %p.display(), error = %e, "cannot delete shared checkpoint file");
                }
            }
        }
    }

    /// Deletes checkpoint `id`: `_metadata` first, then the rest (see the
    /// module doc). For a savepoint in flight (aborted), its directory.
    pub fn discard(&self, id: u64) {
        let dir = self.target_dir(id);
        let _ = fs::remove_file(dir.join("_metadata"));
        sync_dir(&dir);
        if crate::failpoint::hit("discard-after-metadata").is_err() {
            return;
        }
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

/// 12 random lowercase hex digits (savepoint directory names).
fn random_hex12() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Deletes a checkpoint of another job's directory that this job restored
/// in `CLAIM` mode and that a checkpoint of its own has now subsumed:
/// `_metadata` first (it stops being a restore candidate), then its
/// directory, then the shared files it referenced that no other complete
/// checkpoint of that job directory references. Savepoints are never deleted.
pub fn discard_claimed(dir: &Path) {
    if !dir.exists() {
        return; // deleted by an earlier attempt of the job
    }
    let meta = match read_metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "claimed checkpoint not deleted: unreadable");
            return;
        }
    };
    if meta.is_savepoint {
        return;
    }
    let job_dir = dir.parent().unwrap_or(dir).to_path_buf();
    let mine: Vec<String> = meta
        .subtasks
        .iter()
        .flat_map(|h| h.files.iter())
        .filter(|f| f.starts_with("shared/"))
        .cloned()
        .collect();
    let _ = fs::remove_file(dir.join("_metadata"));
    sync_dir(dir);
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot delete claimed checkpoint");
        }
    }
    let mut still: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for info in list_checkpoints(&job_dir).unwrap_or_default() {
        match read_metadata(&info.dir) {
            Ok(m) => still.extend(m.subtasks.iter().flat_map(|h| h.files.iter()).cloned()),
            // Unknown references: keep every shared file.
            Err(_) if info.status != "incomplete" => return,
            Err(_) => {}
        }
    }
    for f in mine.iter().filter(|f| !still.contains(*f)) {
        let p = job_dir.join(f);
        if let Err(e) = fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %p.display(), error = %e, "cannot delete shared file of claimed checkpoint");
            }
        }
    }
    tracing::info!(dir = %dir.display(), "deleted the claimed checkpoint restored from (subsumed)");
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

/// Reads and checks the `_metadata` of the checkpoint in `dir`.
pub fn read_metadata(dir: &Path) -> Result<CheckpointMetadata> {
    let meta_path = dir.join("_metadata");
    if !meta_path.exists() {
        return Err(Error::CorruptCheckpoint {
            path: dir.to_path_buf(),
            reason: "no _metadata: the checkpoint is incomplete".into(),
        });
    }
    read_framed(FileKind::Metadata, &meta_path)
}

/// Loads and verifies the checkpoint in `dir` (a `chk-<n>` directory): the
/// framed files completely, the RocksDB files it references by presence and
/// size (their CRC-32 is checked by [`verify_checkpoint`] and on restore).
pub fn load_checkpoint(dir: &Path) -> Result<LoadedCheckpoint> {
    let metadata = read_metadata(dir)?;
    let mut states = Vec::with_capacity(metadata.subtasks.len());
    for h in &metadata.subtasks {
        let path = dir.join(&h.file);
        let st: SubtaskState = read_framed(FileKind::State, &path)?;
        states.push(st);
    }
    let c = LoadedCheckpoint {
        dir: dir.to_path_buf(),
        metadata,
        states,
    };
    let job_dir = c.job_dir();
    for f in c.raw_files() {
        let p = job_dir.join(&f.path);
        match fs::metadata(&p) {
            Ok(m) if m.len() == f.size => {}
            Ok(m) => {
                return Err(Error::CorruptCheckpoint {
                    path: p,
                    reason: format!("{} bytes, the checkpoint recorded {}", m.len(), f.size),
                })
            }
            Err(_) => {
                return Err(Error::CorruptCheckpoint {
                    path: p,
                    reason: "a file the checkpoint references is missing".into(),
                })
            }
        }
    }
    Ok(c)
}

impl LoadedCheckpoint {
    /// The job directory the checkpoint's relative paths start from.
    pub fn job_dir(&self) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).to_path_buf()
    }

    /// Every raw (RocksDB) file its states reference.
    pub fn raw_files(&self) -> Vec<&super::StateFile> {
        self.states
            .iter()
            .flat_map(|s| &s.operators)
            .filter_map(|o| match &o.keyed {
                Some(super::KeyedStateHandle::Rocks(h)) => Some(h.files.iter()),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// Checks the CRC-32 of every raw file `c` references (the framed files were
/// checked when it was loaded).
pub fn verify_checkpoint(c: &LoadedCheckpoint) -> Result<()> {
    let job_dir = c.job_dir();
    for f in c.raw_files() {
        let p = job_dir.join(&f.path);
        let (size, crc) = file_crc(&p)?;
        if size != f.size || crc != f.crc32 {
            return Err(Error::CorruptCheckpoint {
                path: p,
                reason: format!(
                    "checksum mismatch ({size} bytes, CRC-32 {crc:08x}; recorded {} bytes, {:08x})",
                    f.size, f.crc32
                ),
            });
        }
    }
    Ok(())
}

/// Size and CRC-32 of a file.
pub fn file_crc(path: &Path) -> Result<(u64, u32)> {
    use std::io::Read;
    let mut f = File::open(path).map_err(|e| Error::io("cannot read checkpoint file", path, e))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read checkpoint file", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, h.finalize()))
}

/// Copies `src` to `dest` (created, fsynced), returning (size, CRC-32).
pub fn copy_crc(src: &Path, dest: &Path) -> Result<(u64, u32)> {
    use std::io::Read;
    let mut f = File::open(src).map_err(|e| Error::io("cannot read state file", src, e))?;
    let mut out =
        File::create(dest).map_err(|e| Error::io("cannot create checkpoint file", dest, e))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read state file", src, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::io("cannot write checkpoint file", dest, e))?;
        size += n as u64;
    }
    out.sync_all()
        .map_err(|e| Error::io("cannot sync checkpoint file", dest, e))?;
    Ok((size, h.finalize()))
}

/// The checkpoint to restore from `path`: a `chk-<n>` or savepoint directory
/// or its `_metadata` file (it must be valid), or a job directory (its newest valid checkpoint; invalid newer
/// ones are reported and skipped).
pub fn resolve_restore(path: &Path) -> Result<LoadedCheckpoint> {
    // A `_metadata` file names its checkpoint or savepoint directory.
    if path.file_name().is_some_and(|n| n == "_metadata") && path.is_file() {
        return load_checkpoint(path.parent().unwrap_or(path));
    }
    let is_chk = path.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with("chk-") || n.starts_with("savepoint-")
    }) || path.join("_metadata").exists();
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
    /// Total bytes of the files in its directory.
    pub size: u64,
    /// Bytes of the shared files it references (incremental checkpoints).
    pub shared_size: u64,
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
                shared_size: c
                    .raw_files()
                    .iter()
                    .filter(|f| f.path.starts_with("shared/"))
                    .map(|f| f.size)
                    .sum(),
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
                shared_size: 0,
                completed_timestamp: None,
                is_savepoint: false,
            },
        };
        out.push(info);
    }
    out.sort_by_key(|i| i.id);
    Ok(out)
}

/// The savepoints at `dir`: `dir` itself when it is one (a `savepoint-*`
/// directory or any directory with a `_metadata`), else its `savepoint-*`
/// subdirectories; checked like [`list_checkpoints`] (the id is the one in
/// `_metadata`, 0 when unreadable).
pub fn list_savepoints(dir: &Path) -> Result<Vec<CheckpointInfo>> {
    let is_sp = |d: &Path| {
        d.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("savepoint-"))
    };
    let dirs: Vec<PathBuf> = if is_sp(dir) || dir.join("_metadata").is_file() {
        vec![dir.to_path_buf()]
    } else {
        let rd =
            fs::read_dir(dir).map_err(|e| Error::io("cannot read savepoint directory", dir, e))?;
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && is_sp(p))
            .collect();
        v.sort();
        v
    };
    let mut out = Vec::new();
    for d in dirs {
        let size = dir_size(&d);
        let info = match load_checkpoint(&d) {
            Ok(c) if !c.metadata.is_savepoint => continue, // a chk-<n>: listed with its job
            Ok(c) => CheckpointInfo {
                id: c.metadata.checkpoint_id,
                dir: d,
                status: "complete",
                problem: None,
                size,
                shared_size: 0,
                completed_timestamp: Some(c.metadata.completed_timestamp),
                is_savepoint: true,
            },
            Err(err) => CheckpointInfo {
                id: read_metadata(&d).map(|m| m.checkpoint_id).unwrap_or(0),
                status: if d.join("_metadata").exists() {
                    "corrupt"
                } else {
                    "incomplete"
                },
                problem: Some(err.to_string()),
                dir: d,
                size,
                shared_size: 0,
                completed_timestamp: None,
                is_savepoint: true,
            },
        };
        out.push(info);
    }
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
/// `_metadata.inprogress` files, files inside complete checkpoints that no
/// state of theirs references, and files in `shared/` that no checkpoint
/// references (left by a crash between the deletion of a checkpoint and of
/// its shared files, or mid-upload). Referenced files are never included.
/// Corrupt checkpoints are reported by `verify`, not collected; while one has
/// an unreadable `_metadata`, no shared file is collected (it might be one of
/// its references).
pub fn orphans(job_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut shared_refs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut shared_unknown = false;
    for info in list_checkpoints(job_dir)? {
        match info.status {
            "incomplete" => out.push(info.dir),
            "complete" => {
                let c = load_checkpoint(&info.dir)?;
                let chk = info
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut referenced: std::collections::BTreeSet<String> = c
                    .metadata
                    .subtasks
                    .iter()
                    .map(|h| format!("{chk}/{}", h.file))
                    .collect();
                for f in c.raw_files() {
                    referenced.insert(f.path.clone());
                }
                for h in &c.metadata.subtasks {
                    referenced.extend(h.files.iter().cloned());
                }
                for e in fs::read_dir(&info.dir)
                    .map_err(|e| Error::io("cannot read checkpoint directory", &info.dir, e))?
                    .flatten()
                {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name != "_metadata" && !referenced.contains(&format!("{chk}/{name}")) {
                        out.push(e.path());
                    }
                }
                shared_refs.extend(referenced);
            }
            _ => match read_metadata(&info.dir) {
                // Corrupt but with readable metadata: its references are known and kept.
                Ok(m) => {
                    for h in &m.subtasks {
                        shared_refs.extend(h.files.iter().cloned());
                    }
                }
                Err(_) => shared_unknown = true,
            },
        }
    }
    let shared = job_dir.join("shared");
    if !shared_unknown && shared.is_dir() {
        for e in fs::read_dir(&shared)
            .map_err(|e| Error::io("cannot read checkpoint directory", &shared, e))?
            .flatten()
        {
            let rel = format!("shared/{}", e.file_name().to_string_lossy());
            if !shared_refs.contains(&rel) {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

/// Deletes what [`orphans`] finds in `job_dir`; returns what was deleted.
pub fn sweep(job_dir: &Path) -> Result<Vec<PathBuf>> {
    if !job_dir.exists() {
        return Ok(Vec::new());
    }
    let found = orphans(job_dir)?;
    for p in &found {
        let r = if p.is_dir() {
            fs::remove_dir_all(p)
        } else {
            fs::remove_file(p)
        };
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Error::io("cannot delete orphaned checkpoint file", p, e));
            }
        }
    }
    Ok(found)
}
