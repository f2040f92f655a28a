//! Checkpoint storage in Flink's layout, on the local filesystem or an
//! object store (S3): every location here is a bare path, a `file://` or an
//! `s3://` URI, and the bytes move through a [`super::store::Store`]:
//!
//! ```text
//! <execution.checkpointing.dir>/<job-id>/
//!     chk-<n>/_metadata                 the checkpoint: which files hold which subtask's state
//!     chk-<n>/<chain>-<subtask>.state   one file per subtask (operator, keyed and channel state)
//!     chk-<n>/<instance>-<file>         RocksDB files of a full (non-incremental) checkpoint
//!     shared/<instance>-<sst>           RocksDB SST files of incremental checkpoints,
//!                                       referenced by every checkpoint that needs them
//!     taskowned/                        files owned by tasks, not by a checkpoint
//!     .running                          the lock of a running job (its process id)
//! ```
//!
//! The layout and the bytes are the same on every store: an `s3://bucket/p`
//! checkpoint copied to a local directory (or back) restores as it is. On an
//! object store a directory is a key prefix, so empty ones (`taskowned/`)
//! do not show.
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
//! restore, while it downloads) checks the CRC-32.
//!
//! # Atomicity
//! State files and RocksDB files are written by the subtasks before they
//! acknowledge, each atomically: locally to a temporary name, fsynced, then
//! renamed (so a name never holds a partial file); on an object store with
//! one PUT, or a multipart upload for files above
//! [`super::store::PART_SIZE`], which becomes visible only when completed.
//! `_metadata` is written last by the coordinator, only when every subtask
//! has acknowledged, and exclusively (an existing `_metadata` is never
//! replaced): locally to `_metadata.<pid>-<random>.inprogress`, fsynced,
//! hard-linked to `_metadata` (the link fails when the name exists), and
//! the directory fsynced; on an object store with one conditional PUT
//! (`If-None-Match: *`). A checkpoint directory without a valid `_metadata` is incomplete
//! and is never restored. `_metadata` lists, per subtask, every file outside
//! the state file that the subtask's state references (`StateHandle::files`).
//!
//! # Reference counting of shared files
//! A shared file's name is fixed by the RocksDB instance and the SST file
//! number, and SST files never change, so uploading one twice writes the same
//! bytes under the same name. The coordinator counts, per shared file, the
//! retained checkpoints whose `_metadata` lists it; a file is deleted only
//! when that count drops to zero (docs/design.md invariant 6). A subtask reuses a
//! shared file only if the latest checkpoint it knows to be complete
//! referenced it and the file is still live in its database; SST files live
//! for one interval of time, so such a file is also referenced by the
//! coordinator's latest completed checkpoint, which is always retained: no
//! checkpoint in flight can reference a file whose count dropped to zero.
//!
//! # Deletion, crash-safe
//! A subsumed checkpoint is deleted in this order: (1) its `_metadata`: from
//! that moment it is no longer a restore candidate and references nothing;
//! (2) the rest of its directory (its state files and full-checkpoint RocksDB
//! files); (3) the shared files whose reference count dropped to zero. If
//! (1) fails, nothing else of it is deleted. A crash at any point in between
//! leaves only files that no complete checkpoint references: an incomplete
//! directory, or unreferenced shared files. The orphan sweep ([`orphans`],
//! run when a job starts on its own directory and on those of jobs that
//! crashed on this machine, and by `weir checkpoints gc`)
//! removes exactly those, and never a file a complete checkpoint references.
//! Shared files uploaded for a checkpoint that was then aborted are deleted
//! by the coordinator once a later checkpoint completes without them (or by
//! the sweep after a crash).
//!
//! Per store: locally, each deletion is followed by an fsync of its
//! directory, so (1) is durable before (2) starts, and the deletions run on
//! the caller's thread as they always did. On an object store a DELETE is
//! durable when it returns (S3 is strongly consistent), and "the rest of a
//! directory" is every object under its prefix, listed then deleted one by
//! one: a crash mid-way leaves an incomplete prefix for the sweep. There the
//! deletions of a job run in order on one background thread
//! (`weir-storage-delete`), so the coordinator never waits for a request;
//! [`CheckpointStorage::release`] and [`CheckpointStorage::discard_all`]
//! wait until the queue is empty, so a finished job leaves exactly the
//! retained checkpoints.
//!
//! # The lock of a running job
//! `.running` names the process using the directory and the namespace its
//! pid means something in; [`super::lock`] decides from it whether the job
//! runs, crashed, or runs elsewhere. When a job starts,
//! [`sweep_dead_jobs`] sweeps (in the background) the other directories of
//! the base directory whose job crashed on this machine; `weir checkpoints
//! gc` sweeps every directory whose job is not running, and leaves those
//! locked from another machine or container unless told `--force`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::lock::{lock_state, LockOwner, LockState};
use super::store::{self, Store};
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
    let payload = check_frame(kind, bytes, path)?;
    postcard::from_bytes(payload).map_err(|e| Error::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: format!("undecodable payload: {e}"),
    })
}

/// The payload of a framed file's bytes, once magic, kind, version, length
/// and checksum are checked.
fn check_frame<'a>(kind: FileKind, bytes: &'a [u8], path: &Path) -> Result<&'a [u8]> {
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
    Ok(payload)
}

/// What a state file holds after its [`SubtaskState`]: fields added since
/// format version 2 without changing it. postcard reads a value from the
/// front of its bytes and leaves what follows, so a reader that knows only
/// the state (an older build, `weir checkpoints`) still reads these files,
/// and this build reads older files, which end after the state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct StateFileExtension {
    /// `pipeline.max-parallelism` of the job that wrote the file.
    pub max_parallelism: Option<u64>,
}

/// Reads a subtask's state file with its extension, if it has one.
pub fn read_state_file(path: &Path) -> Result<SubtaskState> {
    let (st, key) = store::resolve(path)?;
    let bytes = st.get(&key)?;
    let payload = check_frame(FileKind::State, &bytes, path)?;
    let corrupt = |e: postcard::Error| Error::CorruptCheckpoint {
        path: path.to_path_buf(),
        reason: format!("undecodable payload: {e}"),
    };
    let (mut state, rest) = postcard::take_from_bytes::<SubtaskState>(payload).map_err(corrupt)?;
    if !rest.is_empty() {
        let ext: StateFileExtension = postcard::from_bytes(rest).map_err(corrupt)?;
        state.max_parallelism = ext.max_parallelism.map(|m| m as usize);
    }
    Ok(state)
}

/// Reads and checks a framed file (a location: bare path or URI).
pub fn read_framed<T: DeserializeOwned>(kind: FileKind, path: &Path) -> Result<T> {
    let (st, key) = store::resolve(path)?;
    let bytes = st.get(&key)?;
    unframe(kind, &bytes, path)
}

/// Writes bytes to `path` (a location) atomically and durably: on the local
/// filesystem through a temporary file, fsynced and renamed; on an object
/// store with one PUT.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let (st, key) = store::resolve(path)?;
    st.put(&key, bytes.to_vec(), &|| Ok(()))
}

/// The key of `rel` under `base` in a store.
fn child(base: &str, rel: &str) -> String {
    if base.is_empty() {
        rel.to_string()
    } else {
        format!("{}/{rel}", base.trim_end_matches('/'))
    }
}

/// The directories of one job's checkpoints (and of the savepoints it is taking).
#[derive(Debug, Clone)]
pub struct CheckpointStorage {
    job_dir: PathBuf,
    store: Arc<dyn Store>,
    /// The job directory's key in `store`.
    key: String,
    /// Object stores: deletions run in order on one background thread, so a
    /// retention step never waits for a request on the coordinator's thread.
    deleter: Option<Deleter>,
    /// Savepoints in flight: checkpoint id -> its `savepoint-...` directory
    /// (shared by every clone: the coordinator registers, subtasks write).
    savepoints: Arc<Mutex<BTreeMap<u64, PathBuf>>>,
    /// High availability: the log a checkpoint is committed to (the
    /// leadership of `crate::ha`); `None` without HA (and on TaskManagers).
    leadership: Option<Arc<dyn super::CompletionLog>>,
}

/// An ordered queue of deletions, run by one thread (object stores only).
#[derive(Debug, Clone)]
struct Deleter {
    tx: std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl Deleter {
    fn start() -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("weir-storage-delete".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the storage deleter: {e}")))?;
        Ok(Deleter { tx })
    }

    /// Waits until every deletion queued before returned.
    fn flush(&self) {
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        if self
            .tx
            .send(Box::new(move || {
                let _ = done_tx.send(());
            }))
            .is_ok()
        {
            let _ = done_rx.recv();
        }
    }
}

impl CheckpointStorage {
    /// Storage under `base/<job_id>/` (`base` a bare path, `file://` or
    /// `s3://` URI), creating `shared/` and `taskowned/` (local). Fails with
    /// a clear error when the location is bad or its store unreachable.
    pub fn create(base: &Path, job_id: &str) -> Result<Self> {
        let storage = Self::attach(base, job_id)?;
        let (st, key, job_dir) = (&storage.store, &storage.key, &storage.job_dir);
        // Reachability (object stores): one listing, with bounded retries.
        st.list_dir(key)?;
        // Start-up sweep of this job's own directory (never another job's):
        // leftovers of a crash of an earlier run with this id.
        match sweep(job_dir) {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(dir = %job_dir.display(), n = removed.len(), "removed orphaned checkpoint files")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(dir = %job_dir.display(), error = %e, "orphan sweep failed"),
        }
        // Marks the directory as in use, for `weir checkpoints gc` and the
        // sweep of dead jobs (see `super::lock`).
        st.put(
            &child(key, LOCK_FILE),
            LockOwner::this_process().encode().into_bytes(),
            &|| Ok(()),
        )?;
        // The leftovers of crashed jobs under the same base directory, on a
        // thread of its own: the job does not wait.
        let (base, own) = (job_dir.parent().map(Path::to_path_buf), job_dir.clone());
        if let Some(base) = base {
            let _ = std::thread::Builder::new()
                .name("weir-sweep-dead-jobs".into())
                .spawn(move || sweep_dead_jobs(&base, &own));
        }
        Ok(storage)
    }

    /// The storage of job `job_id` under `base`, as a TaskManager of a
    /// cluster uses it: the JobManager created the directory ([`Self::create`]),
    /// owns its lock and sweeps it; a TaskManager only writes its subtasks'
    /// state files there (never sweeps: other processes write beside it).
    pub fn attach(base: &Path, job_id: &str) -> Result<Self> {
        let job_dir = store::normalize(base)?.join(job_id);
        let (st, key) = store::resolve(&job_dir)?;
        for d in ["shared", "taskowned"] {
            st.create_dir(&child(&key, d))?;
        }
        let deleter = if st.is_local() {
            None
        } else {
            Some(Deleter::start()?)
        };
        Ok(CheckpointStorage {
            job_dir,
            store: st,
            key,
            deleter,
            savepoints: Arc::default(),
            leadership: None,
        })
    }

    /// This storage with the job's HA leadership: completed checkpoints are
    /// committed through it (see `crate::coordinator`).
    pub fn with_leadership(mut self, leadership: Arc<dyn super::CompletionLog>) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// The job's HA leadership, when high availability is on.
    pub fn leadership(&self) -> Option<&Arc<dyn super::CompletionLog>> {
        self.leadership.as_ref()
    }

    fn savepoint_dirs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, PathBuf>> {
        self.savepoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the directory of savepoint `id` under `base`, named as Flink
    /// names it (`savepoint-<first 6 of the job id>-<12 random hex>`), and
    /// routes the files of checkpoint `id` there instead of `chk-<id>`.
    pub fn begin_savepoint(&self, id: u64, base: &Path, job_id: &str) -> Result<PathBuf> {
        let prefix: String = job_id.chars().take(6).collect();
        let dir = store::normalize(base)?.join(format!("savepoint-{prefix}-{}", random_hex12()));
        let (st, key) = store::resolve(&dir)?;
        st.create_dir(&key)?;
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

    /// The store and key of [`Self::target_dir`]: the job's store, or the
    /// savepoint's (a savepoint may go to another store than the checkpoints).
    fn target(&self, id: u64) -> Result<(Arc<dyn Store>, String)> {
        match self.savepoint_dirs().get(&id) {
            Some(d) => store::resolve(d),
            None => Ok((self.store.clone(), child(&self.key, &format!("chk-{id}")))),
        }
    }

    /// Runs `f` now (local) or queued in order (object stores).
    fn deleting(&self, f: impl FnOnce(&dyn Store, &str) + Send + 'static) {
        match &self.deleter {
            None => f(self.store.as_ref(), &self.key),
            Some(d) => {
                let (st, key) = (self.store.clone(), self.key.clone());
                if let Err(e) = d.tx.send(Box::new(move || f(st.as_ref(), &key))) {
                    // The thread is gone (it cannot be, short of a panic): delete here.
                    (e.0)();
                }
            }
        }
    }

    /// The job has ended: its directory is no longer in use. Waits for
    /// queued deletions.
    pub fn release(&self) {
        self.deleting(|st, key| {
            let _ = st.delete(&child(key, LOCK_FILE));
        });
        if let Some(d) = &self.deleter {
            d.flush();
        }
    }

    /// `<dir>/<job-id>`.
    pub fn job_dir(&self) -> &Path {
        &self.job_dir
    }

    /// `<dir>/<job-id>/chk-<n>`.
    pub fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.job_dir.join(format!("chk-{id}"))
    }

    /// Whether `rel` (relative to the job directory) exists.
    pub fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.store.size(&child(&self.key, rel))?.is_some())
    }

    /// Writes one subtask's state for checkpoint `id`; returns (relative file name, size).
    pub fn write_state(
        &self,
        id: u64,
        chain: usize,
        subtask: usize,
        state: &SubtaskState,
    ) -> Result<(String, u64)> {
        let (st, dir) = self.target(id)?;
        let name = format!("{chain}-{subtask}.state");
        let bytes = state_file_bytes(state)?;
        let len = bytes.len() as u64;
        st.put(&child(&dir, &name), bytes, &|| Ok(()))?;
        Ok((name, len))
    }

    /// Writes the final state of a finished subtask, once, to `shared/`
    /// (`shared/final-<chain>-<subtask>-<id>.state`): every later
    /// checkpoint's handle names it (and lists it among its files, so it is
    /// reference-counted like any shared file). Returns its path relative
    /// to the job directory and its size.
    pub fn write_final_state(
        &self,
        id: u64,
        chain: usize,
        subtask: usize,
        state: &SubtaskState,
    ) -> Result<(String, u64)> {
        let rel = format!("shared/final-{chain}-{subtask}-{id}.state");
        let bytes = state_file_bytes(state)?;
        let len = bytes.len() as u64;
        self.store.put(&child(&self.key, &rel), bytes, &|| Ok(()))?;
        Ok((rel, len))
    }

    /// Writes `_metadata` atomically and exclusively: locally a temp file,
    /// fsync, a hard link (which fails on an existing `_metadata`), fsync
    /// of the directory; on an object store one conditional PUT. A
    /// `_metadata` that exists already is never replaced
    /// ([`Error::CheckpointExists`]): with high availability, a JobManager of
    /// another generation may have written that checkpoint id.
    pub fn write_metadata(&self, meta: &CheckpointMetadata) -> Result<PathBuf> {
        let dir = self.target_dir(meta.checkpoint_id);
        let (st, dir_key) = self.target(meta.checkpoint_id)?;
        let written = st.put_new(
            &child(&dir_key, "_metadata"),
            frame(FileKind::Metadata, meta)?,
            &|| Ok(crate::failpoint::hit("after-metadata-write")?),
        )?;
        if !written {
            return Err(Error::CheckpointExists(dir));
        }
        Ok(dir)
    }

    /// Copies the local file `src` to `rel` (relative to the job directory)
    /// atomically (locally through a temporary name, fsynced; on an object
    /// store one PUT or a multipart upload), computing its CRC-32; returns
    /// (size, CRC-32). With `skip_existing`, an existing file is not written
    /// again (shared files: same name, same bytes) and its CRC-32 is
    /// computed from `src`.
    pub fn copy_in(&self, src: &Path, rel: &str, skip_existing: bool) -> Result<(u64, u32)> {
        let key = child(&self.key, rel);
        if skip_existing && self.store.size(&key)?.is_some() {
            return file_crc(src);
        }
        self.store.put_file(src, &key)
    }

    /// Deletes shared files (relative to the job directory) that no retained
    /// checkpoint references any more.
    pub fn delete_unreferenced(&self, files: &[String]) {
        let files = files.to_vec();
        self.deleting(move |st, key| {
            for f in files {
                if crate::failpoint::hit("delete-shared-file").is_err() {
                    return;
                }
                if let Err(e) = st.delete(&child(key, &f)) {
                    tracing::warn!(file = %st.display(&child(key, &f)), error = %e, "cannot delete shared checkpoint file");
                }
            }
        });
    }

    /// Deletes checkpoint `id`: `_metadata` first, then the rest (see the
    /// module doc). For a savepoint in flight (aborted), its directory.
    pub fn discard(&self, id: u64) {
        let target = self.target(id);
        self.deleting(move |_, _| {
            let (st, dir) = match target {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(id, error = %e, "cannot delete checkpoint");
                    return;
                }
            };
            if let Err(e) = st.delete(&child(&dir, "_metadata")) {
                // Never delete the rest while `_metadata` may still name it.
                tracing::warn!(dir = %st.display(&dir), error = %e, "cannot delete checkpoint metadata");
                return;
            }
            if crate::failpoint::hit("discard-after-metadata").is_err() {
                return;
            }
            if let Err(e) = st.delete_all(&dir) {
                // A late upload may still be writing into an aborted checkpoint; its
                // acknowledgement or decline deletes the directory again.
                tracing::debug!(dir = %st.display(&dir), error = %e, "checkpoint directory not deleted yet");
            }
        });
    }

    /// Deletes the whole job directory.
    pub fn discard_all(&self) {
        self.deleting(|st, key| {
            if let Err(e) = st.delete_all(key) {
                tracing::warn!(dir = %st.display(key), error = %e, "cannot delete checkpoints");
            }
        });
        if let Some(d) = &self.deleter {
            d.flush();
        }
    }
}

pub(crate) use super::store::random_hex12;

/// Deletes a checkpoint of another job's directory that this job restored
/// in `CLAIM` mode and that a checkpoint of its own has now subsumed:
/// `_metadata` first (it stops being a restore candidate), then its
/// directory, then the shared files it referenced that no other complete
/// checkpoint of that job directory references. Savepoints are never deleted.
pub fn discard_claimed(dir: &Path) {
    if !exists(&dir.join("_metadata")).unwrap_or(false) {
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
    if let Err(e) = remove(&dir.join("_metadata")) {
        // Never delete the rest while `_metadata` may still name it.
        tracing::warn!(dir = %dir.display(), error = %e, "cannot delete claimed checkpoint");
        return;
    }
    if let Err(e) = remove(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot delete claimed checkpoint");
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
        if let Err(e) = remove(&p) {
            tracing::warn!(file = %p.display(), error = %e, "cannot delete shared file of claimed checkpoint");
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

/// A state file's bytes: the framed state, then its extension (the max
/// parallelism its keyed state was partitioned with).
fn state_file_bytes(state: &SubtaskState) -> Result<Vec<u8>> {
    let ext = StateFileExtension {
        max_parallelism: state.max_parallelism.map(|m| m as u64),
    };
    frame(FileKind::State, &(state, ext))
}

/// Where a checkpoint's state file `file` is: inside its directory `dir`,
/// or, for the final state of a finished subtask written once
/// (`shared/...`), in the job directory.
pub fn state_file_path(dir: &Path, file: &str) -> PathBuf {
    if file.starts_with("shared/") {
        dir.parent().unwrap_or(dir).join(file)
    } else {
        dir.join(file)
    }
}

/// Reads and checks the `_metadata` of the checkpoint in `dir`.
pub fn read_metadata(dir: &Path) -> Result<CheckpointMetadata> {
    let meta_path = dir.join("_metadata");
    if !exists(&meta_path)? {
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
    let dir = &store::normalize(dir)?;
    let metadata = read_metadata(dir)?;
    let mut states = Vec::with_capacity(metadata.subtasks.len());
    for h in &metadata.subtasks {
        states.push(read_state_file(&state_file_path(dir, &h.file))?);
    }
    let c = LoadedCheckpoint {
        dir: dir.to_path_buf(),
        metadata,
        states,
    };
    let job_dir = c.job_dir();
    for f in c.raw_files() {
        let p = job_dir.join(&f.path);
        let (st, key) = store::resolve(&p)?;
        match st.size(&key)? {
            Some(len) if len == f.size => {}
            Some(len) => {
                return Err(Error::CorruptCheckpoint {
                    path: p,
                    reason: format!("{len} bytes, the checkpoint recorded {}", f.size),
                })
            }
            None => {
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

/// Whether the file (object) `path` exists.
pub fn exists(path: &Path) -> Result<bool> {
    let (st, key) = store::resolve(path)?;
    Ok(st.size(&key)?.is_some())
}

/// Size and CRC-32 of a file (a location: bare path or URI), streamed.
pub fn file_crc(path: &Path) -> Result<(u64, u32)> {
    let (st, key) = store::resolve(path)?;
    st.crc(&key)
}

/// Copies `src` (a location in checkpoint storage) to the local file `dest`
/// (created, fsynced), returning (size, CRC-32).
pub fn copy_crc(src: &Path, dest: &Path) -> Result<(u64, u32)> {
    let (st, key) = store::resolve(src)?;
    st.get_to_file(&key, dest)
}

/// Like [`copy_crc`], but a file on the local filesystem is hard-linked to
/// `dest` instead of copied (when both are on one filesystem), then read once
/// for its CRC-32. Only for files nobody ever writes to again (RocksDB SST
/// files: RocksDB never modifies one, and deleting the link leaves the
/// checkpoint's file alone). Anything else, or a failed link, is copied.
pub fn link_or_copy_crc(src: &Path, dest: &Path) -> Result<(u64, u32)> {
    let (st, key) = store::resolve(src)?;
    if st.is_local() && std::fs::hard_link(&key, dest).is_ok() {
        return st.crc(&key);
    }
    st.get_to_file(&key, dest)
}

/// Deletes a file or a whole directory (everything under it) at `path`
/// (a location); a missing one is not an error. For `weir checkpoints gc`.
pub fn remove(path: &Path) -> Result<()> {
    let (st, key) = store::resolve(path)?;
    st.delete_all(&key)
}

/// The directories under `dir` (a location) whose names start with `chk-`,
/// with their ids.
pub fn chk_dirs(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let (st, key) = store::resolve(dir)?;
    Ok(st
        .list_dir(&key)?
        .into_iter()
        .filter(|e| e.is_dir)
        .filter_map(|e| {
            e.name
                .strip_prefix("chk-")
                .and_then(|n| n.parse().ok())
                .map(|id| (id, dir.join(&e.name)))
        })
        .collect())
}

/// The checkpoint to restore from `path`: a `chk-<n>` or savepoint directory
/// or its `_metadata` file (it must be valid), or a job directory (its newest valid checkpoint; invalid newer
/// ones are reported and skipped).
pub fn resolve_restore(path: &Path) -> Result<LoadedCheckpoint> {
    let path = &store::normalize(path)?;
    // A `_metadata` file names its checkpoint or savepoint directory.
    if path.file_name().is_some_and(|n| n == "_metadata") && exists(path)? {
        return load_checkpoint(path.parent().unwrap_or(path));
    }
    let is_chk = path.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with("chk-") || n.starts_with("savepoint-")
    }) || exists(&path.join("_metadata"))?;
    if is_chk {
        return load_checkpoint(path);
    }
    let (st, _) = store::resolve(path)?;
    if st.is_local() && !path.is_dir() {
        return Err(Error::io(
            "cannot read checkpoint directory",
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut ids = chk_dirs(path)?;
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
    store::resolve(dir)
        .and_then(|(st, key)| st.list_dir(&key))
        .map(|d| d.iter().filter(|e| !e.is_dir).map(|e| e.size).sum())
        .unwrap_or(0)
}

/// The job directories under `dir`: `dir` itself if it holds `chk-*`
/// directories, else its subdirectories that do.
pub fn job_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = &store::normalize(dir)?;
    let (st, key) = store::resolve(dir)?;
    let is_job = |entries: &[store::Entry]| {
        entries
            .iter()
            .any(|e| e.is_dir && (e.name.starts_with("chk-") || e.name == "shared"))
    };
    if st.is_local() && !dir.is_dir() {
        return Err(Error::io(
            "cannot read checkpoint directory",
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let top = st.list_dir(&key)?;
    if is_job(&top) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut jobs = Vec::new();
    for e in top.iter().filter(|e| e.is_dir) {
        if is_job(&st.list_dir(&child(&key, &e.name))?) {
            jobs.push(dir.join(&e.name));
        }
    }
    jobs.sort();
    Ok(jobs)
}

/// Every `chk-<n>` directory of a job directory, oldest first, checked.
pub fn list_checkpoints(job_dir: &Path) -> Result<Vec<CheckpointInfo>> {
    let job_dir = &store::normalize(job_dir)?;
    let (st, _) = store::resolve(job_dir)?;
    if st.is_local() && !job_dir.is_dir() {
        return Err(Error::io(
            "cannot read checkpoint directory",
            job_dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let mut out = Vec::new();
    for (id, dir) in chk_dirs(job_dir)? {
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
                status: if exists(&dir.join("_metadata")).unwrap_or(false) {
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
    let dir = &store::normalize(dir)?;
    let dirs: Vec<PathBuf> = if is_sp(dir) || exists(&dir.join("_metadata"))? {
        vec![dir.to_path_buf()]
    } else {
        let (st, key) = store::resolve(dir)?;
        if st.is_local() && !dir.is_dir() {
            return Err(Error::io(
                "cannot read savepoint directory",
                dir,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        let mut v: Vec<PathBuf> = st
            .list_dir(&key)?
            .into_iter()
            .filter(|e| e.is_dir && e.name.starts_with("savepoint-"))
            .map(|e| dir.join(e.name))
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
                status: if exists(&d.join("_metadata")).unwrap_or(false) {
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

pub use super::lock::LOCK_FILE;

/// What [`sweep_dead_jobs`] did to one dead job's directory.
#[derive(Debug)]
pub struct Swept {
    /// The job directory.
    pub job_dir: PathBuf,
    /// What was deleted (orphans, then the stale lock).
    pub removed: Vec<PathBuf>,
}

/// Sweeps the directories under `base` (but `own`) whose lock is
/// [`LockState::Dead`] with a recorded namespace: their orphans, then the
/// stale lock. A directory that cannot be read or swept is logged and left.
pub fn sweep_dead_jobs(base: &Path, own: &Path) -> Vec<Swept> {
    let dirs = match job_dirs(base) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(dir = %base.display(), error = %e, "no dead jobs swept");
            return Vec::new();
        }
    };
    let me = LockOwner::this_process();
    let mut out = Vec::new();
    for job in dirs.into_iter().filter(|d| d != own) {
        let owner = match lock_state(&job, &me) {
            LockState::Dead(o) if o.has_namespace() => o,
            _ => continue,
        };
        let swept = sweep(&job).and_then(|mut removed| {
            remove(&job.join(LOCK_FILE))?;
            removed.push(job.join(LOCK_FILE));
            Ok(removed)
        });
        match swept {
            Ok(removed) => {
                tracing::info!(dir = %job.display(), pid = owner.pid, n = removed.len(), "swept the leftovers of a crashed job");
                out.push(Swept {
                    job_dir: job,
                    removed,
                });
            }
            Err(e) => {
                tracing::warn!(dir = %job.display(), error = %e, "cannot sweep a crashed job's directory")
            }
        }
    }
    out
}

/// Files and directories of `job_dir` that no complete checkpoint references:
/// incomplete `chk-<n>` directories (a crash mid-checkpoint), temporary
/// `_metadata.*.inprogress` files, files inside complete checkpoints that no
/// state of theirs references, and files in `shared/` that no checkpoint
/// references (left by a crash between the deletion of a checkpoint and of
/// its shared files, or mid-upload). Referenced files are never included.
/// Corrupt checkpoints are reported by `verify`, not collected; while one has
/// an unreadable `_metadata`, no shared file is collected (it might be one of
/// its references).
pub fn orphans(job_dir: &Path) -> Result<Vec<PathBuf>> {
    let job_dir = &store::normalize(job_dir)?;
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
                let (st, key) = store::resolve(&info.dir)?;
                for e in st.list_dir(&key)? {
                    if e.name != "_metadata" && !referenced.contains(&format!("{chk}/{}", e.name)) {
                        out.push(info.dir.join(&e.name));
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
    if !shared_unknown {
        let (st, key) = store::resolve(&shared)?;
        for e in st.list_dir(&key)? {
            let rel = format!("shared/{}", e.name);
            if !shared_refs.contains(&rel) {
                out.push(shared.join(&e.name));
            }
        }
    }
    Ok(out)
}

/// Deletes what [`orphans`] finds in `job_dir`; returns what was deleted.
pub fn sweep(job_dir: &Path) -> Result<Vec<PathBuf>> {
    let (st, key) = store::resolve(job_dir)?;
    if st.list_dir(&key)?.is_empty() {
        return Ok(Vec::new());
    }
    let found = orphans(job_dir)?;
    for p in &found {
        remove(p)?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::StateHandle;

    /// A state file carries the max parallelism after the state; a file
    /// written before that (the state alone) still reads, without it; and a
    /// reader of the state alone reads the new files.
    #[test]
    fn state_files_read_with_and_without_their_extension() {
        let dir = tempfile::tempdir().unwrap();
        let st = CheckpointStorage::create(dir.path(), "job").unwrap();
        let state = SubtaskState {
            chain: "count".into(),
            parallelism: 2,
            max_parallelism: Some(64),
            ..Default::default()
        };
        let (name, _) = st.write_state(1, 0, 0, &state).unwrap();
        let path = st.job_dir().join("chk-1").join(&name);
        assert_eq!(read_state_file(&path).unwrap(), state);
        let plain: SubtaskState = read_framed(FileKind::State, &path).unwrap();
        assert_eq!(plain.max_parallelism, None);
        assert_eq!(plain.chain, "count");
        // The format before the extension: the state alone.
        let old = SubtaskState {
            max_parallelism: None,
            ..state
        };
        std::fs::write(&path, frame(FileKind::State, &old).unwrap()).unwrap();
        assert_eq!(read_state_file(&path).unwrap(), old);
    }

    fn meta(id: u64, file: &str, files: &[&str]) -> CheckpointMetadata {
        CheckpointMetadata {
            job_id: "j".into(),
            job_name: "t".into(),
            checkpoint_id: id,
            trigger_timestamp: 1,
            completed_timestamp: 2,
            is_savepoint: false,
            subtasks: vec![StateHandle {
                chain: "c".into(),
                chain_index: 0,
                subtask: 0,
                file: file.into(),
                size: 0,
                files: files.iter().map(|f| f.to_string()).collect(),
            }],
        }
    }

    /// The layout, listing, sweep and crash-safe discard on an in-memory object store.
    #[test]
    fn checkpoint_storage_on_an_object_store() {
        store::register(
            "memory://storage-test",
            Arc::new(object_store::memory::InMemory::new()),
        );
        let root = Path::new("memory://storage-test/ck");
        let st = CheckpointStorage::create(root, "j").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sst = dir.path().join("1.sst");
        std::fs::write(&sst, b"sst bytes").unwrap();
        for id in 1..=2 {
            let (file, _) = st.write_state(id, 0, 0, &SubtaskState::default()).unwrap();
            st.copy_in(&sst, "shared/i-1.sst", true).unwrap();
            st.write_metadata(&meta(id, &file, &["shared/i-1.sst"]))
                .unwrap();
        }
        st.write_state(3, 0, 0, &SubtaskState::default()).unwrap();
        st.copy_in(&sst, "shared/i-2.sst", true).unwrap();
        let job = root.join("j");
        assert_eq!(job_dirs(root).unwrap(), vec![job.clone()]);
        let listed: Vec<(u64, &str)> = list_checkpoints(&job)
            .unwrap()
            .iter()
            .map(|c| (c.id, c.status))
            .collect();
        assert_eq!(
            listed,
            vec![(1, "complete"), (2, "complete"), (3, "incomplete")]
        );
        assert_eq!(
            orphans(&job).unwrap(),
            vec![job.join("chk-3"), job.join("shared/i-2.sst")]
        );
        assert_eq!(sweep(&job).unwrap().len(), 2);
        assert!(orphans(&job).unwrap().is_empty());
        assert_eq!(resolve_restore(&job).unwrap().metadata.checkpoint_id, 2);

        // Discarding chk-2 leaves chk-1 and the shared file it references.
        st.discard(2);
        st.release();
        assert_eq!(resolve_restore(&job).unwrap().metadata.checkpoint_id, 1);
        assert!(st.exists("shared/i-1.sst").unwrap());
        assert!(!st.exists(LOCK_FILE).unwrap());
        st.discard_all();
        assert!(job_dirs(root).unwrap().is_empty());
    }
}
