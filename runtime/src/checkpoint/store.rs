//! Where checkpoint bytes live: a small blocking [`Store`] trait with a local
//! filesystem implementation ([`LocalStore`]) and one over any
//! [`object_store::ObjectStore`] ([`ObjectStoreBackend`]: S3 in production,
//! `object_store::memory::InMemory` in unit tests). [`super::storage`] keeps
//! the layout, the framing and the protocol; this module only moves bytes.
//!
//! # Locations
//! A location is a [`std::path::Path`] whose text is one of
//! - a bare path (`checkpoints`, `/var/lib/weir/checkpoints`): the local filesystem;
//! - `file:///abs/path`: the same as the bare path `/abs/path`;
//! - `s3://bucket/prefix`: the objects `prefix/...` of an S3 bucket (AWS or
//!   any S3-compatible server, see [`S3Settings`]).
//!
//! Any other scheme is rejected with a clear [`crate::Error::Storage`]
//! ([`resolve`]), never a panic. A `file://` location is turned into its bare
//! path ([`normalize`]) before it is used, so both spell the same directory.
//!
//! # Why weir keeps its own local store
//! `object_store::local::LocalFileSystem` publishes a write through a staged
//! file and a rename, and fsyncs only when built `with_fsync(true)`; a
//! deletion is never followed by an fsync of its directory, and it creates
//! no empty directories. The crash-safe deletion order of
//! [`super::storage`] needs the removal of `_metadata` to be durable before
//! the rest of a checkpoint goes, so [`LocalStore`] does what weir always
//! did: temp file, fsync, rename, fsync of the directory, and an fsync of the
//! directory after every delete.
//!
//! # Object stores
//! A PUT is atomic (readers see the old object or the whole new one), so a
//! write needs no temporary name: `_metadata` is simply written last. Files
//! above [`PART_SIZE`] are uploaded as a multipart upload of `PART_SIZE`
//! parts (aborted on failure), streamed from disk while their CRC-32 is
//! computed. A "directory" is a key prefix: it exists while an object lives
//! under it, and deleting one deletes every object under it.
//!
//! # Blocking, and the I/O runtime
//! The trait is blocking, as the checkpoint code that calls it runs on
//! blocking threads (`spawn_blocking` in the subtasks' upload and the
//! coordinator's `_metadata` write). [`ObjectStoreBackend`] runs each request
//! on a small dedicated tokio runtime (two threads named `weir-storage-io`)
//! and waits for it, so a caller needs no runtime of its own and never blocks
//! a worker thread of the job's runtime while a request is in flight on it.
//! Requests are bounded: a connect timeout of 5 s, a request timeout of 60 s
//! and at most 3 retries within 15 s ([`S3Settings::build`]), so an
//! unreachable endpoint fails a job at start in bounded time.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::{options, Conf};
use crate::{Error, Result};

/// Size of the parts of a multipart upload (S3 needs at least 5 MiB but for the last part).
pub const PART_SIZE: usize = 8 << 20;

/// One child of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (the last path segment).
    pub name: String,
    /// A directory (local) or a common prefix (object store).
    pub is_dir: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

/// The operations the checkpoint code needs, blocking. Keys are `/`-separated
/// paths inside the store (for [`LocalStore`]: filesystem paths).
pub trait Store: Send + Sync + fmt::Debug {
    /// The text a key is shown with, e.g. `s3://bucket/<key>` or the path itself.
    fn display(&self, key: &str) -> String;
    /// Whether it is the local filesystem.
    fn is_local(&self) -> bool;
    /// Writes `bytes` to `key` atomically and durably: readers see no partial
    /// object. `before_publish` runs after the bytes are written but before
    /// they are visible under `key` (a failure point for crash tests).
    fn put(&self, key: &str, bytes: Vec<u8>, before_publish: &dyn Fn() -> Result<()>)
        -> Result<()>;
    /// Like [`Store::put`], but only if nothing exists at `key` yet, decided
    /// atomically by the store (locally a hard link, which fails on an
    /// existing name; on an object store a conditional PUT, S3's
    /// `If-None-Match: *`): `Ok(true)` when written, `Ok(false)` when `key`
    /// existed (it is left as it was). Two writers racing for one key: one
    /// wins, the other sees `false`. The leadership log (`crate::ha`) and
    /// `_metadata` files are written this way.
    fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        before_publish: &dyn Fn() -> Result<()>,
    ) -> Result<bool>;
    /// Uploads the local file `src` to `key` atomically (streamed: multipart
    /// on object stores); returns its size and CRC-32.
    fn put_file(&self, src: &Path, key: &str) -> Result<(u64, u32)>;
    /// Reads the whole object.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Downloads `key` to the local file `dest` (created, fsynced); returns its size and CRC-32.
    fn get_to_file(&self, key: &str, dest: &Path) -> Result<(u64, u32)>;
    /// Size and CRC-32 of the object, streamed.
    fn crc(&self, key: &str) -> Result<(u64, u32)>;
    /// Its size, `None` when there is no such object (file).
    fn size(&self, key: &str) -> Result<Option<u64>>;
    /// The children of the directory `key`; empty when it does not exist.
    fn list_dir(&self, key: &str) -> Result<Vec<Entry>>;
    /// Deletes the object (file) `key`; a missing one is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Deletes `key` and everything under `key/`; missing is not an error.
    fn delete_all(&self, key: &str) -> Result<()>;
    /// Creates the directory `key` (local); a no-op on object stores.
    fn create_dir(&self, key: &str) -> Result<()>;
}

/// 12 random lowercase hex digits (savepoint directory and RocksDB instance names, temporary files of exclusive writes).
pub(crate) fn random_hex12() -> String {
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

// ---------------------------------------------------------------- local

/// The local filesystem, with fsyncs and atomic renames (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalStore;

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn file_name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Streams `r` into `sink` in 1 MiB pieces, computing size and CRC-32.
fn stream_crc(
    mut r: impl Read,
    what: &Path,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(u64, u32)> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| Error::io("cannot read checkpoint file", what, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        sink(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, h.finalize()))
}

/// Copies `src` to `dest` (created, fsynced), returning (size, CRC-32).
fn local_copy(src: &Path, dest: &Path) -> Result<(u64, u32)> {
    let f = File::open(src).map_err(|e| Error::io("cannot read state file", src, e))?;
    let mut out =
        File::create(dest).map_err(|e| Error::io("cannot create checkpoint file", dest, e))?;
    let r = stream_crc(f, src, |b| {
        out.write_all(b)
            .map_err(|e| Error::io("cannot write checkpoint file", dest, e))
    })?;
    out.sync_all()
        .map_err(|e| Error::io("cannot sync checkpoint file", dest, e))?;
    Ok(r)
}

/// Writes the file `path` atomically: `write` fills the temporary file
/// `tmp_name` beside it (and fsyncs it), `before_publish` runs, the rename
/// publishes it, and the directory is fsynced so the rename survives a crash
/// (a `_metadata` written later may name this file).
fn publish_local<R>(
    path: &Path,
    tmp_name: &str,
    write: impl FnOnce(&Path) -> Result<R>,
    before_publish: &dyn Fn() -> Result<()>,
) -> Result<R> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir)
        .map_err(|e| Error::io("cannot create checkpoint directory", &dir, e))?;
    let tmp = dir.join(tmp_name);
    let published = write(&tmp).and_then(|r| {
        before_publish()?;
        fs::rename(&tmp, path).map_err(|e| Error::io("cannot publish checkpoint file", path, e))?;
        Ok(r)
    });
    if published.is_err() {
        // A failed write (a full disk) leaves no temporary file behind.
        let _ = fs::remove_file(&tmp);
    } else {
        sync_dir(&dir);
    }
    published
}

impl Store for LocalStore {
    fn display(&self, key: &str) -> String {
        key.to_string()
    }

    fn is_local(&self) -> bool {
        true
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        before_publish: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let path = Path::new(key);
        let tmp = format!("{}.inprogress", file_name_of(path));
        publish_local(
            path,
            &tmp,
            |tmp| {
                let mut f = File::create(tmp)
                    .map_err(|e| Error::io("cannot create checkpoint file", tmp, e))?;
                f.write_all(&bytes)
                    .map_err(|e| Error::io("cannot write checkpoint file", tmp, e))?;
                f.sync_all()
                    .map_err(|e| Error::io("cannot sync checkpoint file", tmp, e))
            },
            before_publish,
        )
    }

    fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        before_publish: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        let path = Path::new(key);
        let dir = parent_of(path);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create checkpoint directory", &dir, e))?;
        // A temporary name of this writer alone: two processes racing for
        // `key` never write into one file.
        let tmp = dir.join(format!(
            "{}.{}-{}.inprogress",
            file_name_of(path),
            std::process::id(),
            random_hex12()
        ));
        let written = (|| {
            let mut f = File::create(&tmp)
                .map_err(|e| Error::io("cannot create checkpoint file", &tmp, e))?;
            f.write_all(&bytes)
                .map_err(|e| Error::io("cannot write checkpoint file", &tmp, e))?;
            f.sync_all()
                .map_err(|e| Error::io("cannot sync checkpoint file", &tmp, e))?;
            before_publish()?;
            // link(2) publishes the complete file under `key`, or fails when
            // the name exists: the exclusive create, atomic.
            match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Error::io("cannot publish checkpoint file", path, e)),
            }
        })();
        let _ = fs::remove_file(&tmp);
        if matches!(written, Ok(true)) {
            sync_dir(&dir);
        }
        written
    }

    fn put_file(&self, src: &Path, key: &str) -> Result<(u64, u32)> {
        let dest = Path::new(key);
        let tmp = format!(".{}.inprogress", file_name_of(dest));
        publish_local(dest, &tmp, |tmp| local_copy(src, tmp), &|| Ok(()))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        fs::read(key).map_err(|e| Error::io("cannot read checkpoint file", key, e))
    }

    fn get_to_file(&self, key: &str, dest: &Path) -> Result<(u64, u32)> {
        local_copy(Path::new(key), dest)
    }

    fn crc(&self, key: &str) -> Result<(u64, u32)> {
        let f = File::open(key).map_err(|e| Error::io("cannot read checkpoint file", key, e))?;
        stream_crc(f, Path::new(key), |_| Ok(()))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        match fs::metadata(key) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read checkpoint file", key, e)),
        }
    }

    fn list_dir(&self, key: &str) -> Result<Vec<Entry>> {
        let rd = match fs::read_dir(key) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot read checkpoint directory", key, e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            out.push(Entry {
                name: e.file_name().to_string_lossy().into_owned(),
                is_dir: m.is_dir(),
                size: if m.is_file() { m.len() } else { 0 },
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match fs::remove_file(key) {
            Ok(()) => {
                sync_dir(&parent_of(Path::new(key)));
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot delete checkpoint file", key, e)),
        }
    }

    fn delete_all(&self, key: &str) -> Result<()> {
        let p = Path::new(key);
        let r = match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(p),
            Ok(_) => fs::remove_file(p),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot delete checkpoint files", p, e)),
        }
    }

    fn create_dir(&self, key: &str) -> Result<()> {
        fs::create_dir_all(key).map_err(|e| Error::io("cannot create checkpoint directory", key, e))
    }
}

// ---------------------------------------------------------------- object stores

/// The runtime object-store requests run on (see the module doc).
fn io_runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("weir-storage-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Internal(format!("cannot start the storage I/O runtime: {e}")))
}

/// Runs `f` on the I/O runtime and waits for it (from any thread).
fn block_on<T: Send + 'static>(f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    let handle = io_runtime()?.spawn(f);
    futures::executor::block_on(handle)
        .unwrap_or_else(|e| Err(Error::Internal(format!("storage request panicked: {e}"))))
}

/// Any [`ObjectStore`] (S3, in-memory) behind the blocking [`Store`] trait.
#[derive(Clone)]
pub struct ObjectStoreBackend {
    inner: Arc<dyn ObjectStore>,
    /// `s3://bucket`, for messages.
    root: String,
}

impl fmt::Debug for ObjectStoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStoreBackend({})", self.root)
    }
}

impl ObjectStoreBackend {
    /// Wraps `inner`; `root` (e.g. `s3://bucket`) is how its keys are shown.
    pub fn new(inner: Arc<dyn ObjectStore>, root: impl Into<String>) -> Self {
        ObjectStoreBackend {
            inner,
            root: root.into().trim_end_matches('/').to_string(),
        }
    }

    fn err(&self, action: &'static str, key: &str, e: impl fmt::Display) -> Error {
        Error::Storage {
            action,
            location: self.display(key),
            message: e.to_string(),
        }
    }

    fn path(key: &str) -> ObjectPath {
        ObjectPath::from(key)
    }
}

impl Store for ObjectStoreBackend {
    fn display(&self, key: &str) -> String {
        format!("{}/{}", self.root, key.trim_start_matches('/'))
    }

    fn is_local(&self) -> bool {
        false
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        before_publish: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        // A PUT is atomic: "before it is visible" is before the request.
        before_publish()?;
        let (s, p) = (self.inner.clone(), Self::path(key));
        block_on(async move {
            s.put(&p, PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
                .map_err(Error::Internal)
        })
        .map_err(|e| self.err("cannot write checkpoint object", key, unwrap_internal(e)))
    }

    fn put_new(
        &self,
        key: &str,
        bytes: Vec<u8>,
        before_publish: &dyn Fn() -> Result<()>,
    ) -> Result<bool> {
        before_publish()?;
        let (s, p) = (self.inner.clone(), Self::path(key));
        block_on(async move {
            let opts = object_store::PutOptions {
                mode: object_store::PutMode::Create,
                ..Default::default()
            };
            match s.put_opts(&p, PutPayload::from(bytes), opts).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(Error::Internal(e.to_string())),
            }
        })
        .map_err(|e| self.err("cannot write checkpoint object", key, unwrap_internal(e)))
    }

    fn put_file(&self, src: &Path, key: &str) -> Result<(u64, u32)> {
        let mut f = File::open(src).map_err(|e| Error::io("cannot read state file", src, e))?;
        let len = f
            .metadata()
            .map_err(|e| Error::io("cannot read state file", src, e))?
            .len();
        let p = Self::path(key);
        if len <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(len as usize);
            f.read_to_end(&mut bytes)
                .map_err(|e| Error::io("cannot read state file", src, e))?;
            let r = (bytes.len() as u64, crc32fast::hash(&bytes));
            let s = self.inner.clone();
            block_on(async move {
                s.put(&p, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::Internal(e.to_string()))
            })
            .map_err(|e| self.err("cannot upload checkpoint file", key, unwrap_internal(e)))?;
            return Ok(r);
        }
        // Multipart: one part in flight at a time, read while the CRC-32 is computed.
        let s = self.inner.clone();
        let p2 = p.clone();
        let mut upload = block_on(async move {
            s.put_multipart(&p2)
                .await
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .map_err(|e| self.err("cannot start upload", key, unwrap_internal(e)))?;
        let mut h = crc32fast::Hasher::new();
        let mut size = 0u64;
        let result: Result<()> = (|| loop {
            let mut part = vec![0u8; PART_SIZE];
            let mut filled = 0;
            while filled < PART_SIZE {
                let n = f
                    .read(&mut part[filled..])
                    .map_err(|e| Error::io("cannot read state file", src, e))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                return Ok(());
            }
            part.truncate(filled);
            h.update(&part);
            size += filled as u64;
            let fut = upload.put_part(PutPayload::from(part));
            block_on(async move { fut.await.map_err(|e| Error::Internal(e.to_string())) })
                .map_err(|e| self.err("cannot upload checkpoint file", key, unwrap_internal(e)))?;
            if filled < PART_SIZE {
                return Ok(());
            }
        })();
        let done = match result {
            Ok(()) => block_on(async move {
                let r = upload.complete().await.map(|_| ());
                if r.is_err() {
                    let _ = upload.abort().await;
                }
                r.map_err(|e| Error::Internal(e.to_string()))
            })
            .map_err(|e| self.err("cannot complete upload", key, unwrap_internal(e))),
            Err(e) => {
                let _ = block_on(async move {
                    upload
                        .abort()
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))
                });
                Err(e)
            }
        };
        done.map(|()| (size, h.finalize()))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let (s, p) = (self.inner.clone(), Self::path(key));
        block_on(async move {
            let r = s
                .get(&p)
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            r.bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .map_err(|e| self.err("cannot read checkpoint object", key, unwrap_internal(e)))
    }

    fn get_to_file(&self, key: &str, dest: &Path) -> Result<(u64, u32)> {
        use futures::StreamExt;
        let mut out =
            File::create(dest).map_err(|e| Error::io("cannot create restore file", dest, e))?;
        let (s, p) = (self.inner.clone(), Self::path(key));
        // Chunks come back over a bounded channel and are written here, so
        // the I/O runtime never blocks on the disk.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<bytes::Bytes>>(4);
        io_runtime()?.spawn(async move {
            let mut stream = match s.get(&p).await {
                Ok(r) => r.into_stream(),
                Err(e) => {
                    let _ = tx.send(Err(Error::Internal(e.to_string())));
                    return;
                }
            };
            while let Some(chunk) = stream.next().await {
                let failed = chunk.is_err();
                let tx = tx.clone();
                let sent = tokio::task::spawn_blocking(move || {
                    tx.send(chunk.map_err(|e| Error::Internal(e.to_string())))
                        .is_ok()
                })
                .await
                .unwrap_or(false);
                if failed || !sent {
                    return;
                }
            }
        });
        let mut h = crc32fast::Hasher::new();
        let mut size = 0u64;
        for chunk in rx {
            let chunk = chunk
                .map_err(|e| self.err("cannot read checkpoint object", key, unwrap_internal(e)))?;
            h.update(&chunk);
            out.write_all(&chunk)
                .map_err(|e| Error::io("cannot write restore file", dest, e))?;
            size += chunk.len() as u64;
        }
        out.sync_all()
            .map_err(|e| Error::io("cannot sync restore file", dest, e))?;
        Ok((size, h.finalize()))
    }

    fn crc(&self, key: &str) -> Result<(u64, u32)> {
        use futures::StreamExt;
        let (s, p) = (self.inner.clone(), Self::path(key));
        block_on(async move {
            let r = s
                .get(&p)
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            let mut stream = r.into_stream();
            let mut h = crc32fast::Hasher::new();
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Error::Internal(e.to_string()))?;
                h.update(&chunk);
                size += chunk.len() as u64;
            }
            Ok((size, h.finalize()))
        })
        .map_err(|e| self.err("cannot read checkpoint object", key, unwrap_internal(e)))
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let (s, p) = (self.inner.clone(), Self::path(key));
        block_on(async move {
            match s.head(&p).await {
                Ok(m) => Ok(Some(m.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(Error::Internal(e.to_string())),
            }
        })
        .map_err(|e| self.err("cannot read checkpoint object", key, unwrap_internal(e)))
    }

    fn list_dir(&self, key: &str) -> Result<Vec<Entry>> {
        let (s, p) = (self.inner.clone(), Self::path(key));
        let listed = block_on(async move {
            let prefix = (!p.as_ref().is_empty()).then_some(p);
            s.list_with_delimiter(prefix.as_ref())
                .await
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .map_err(|e| self.err("cannot list checkpoint storage", key, unwrap_internal(e)))?;
        let mut out: Vec<Entry> = listed
            .common_prefixes
            .iter()
            .filter_map(|d| d.filename().map(str::to_string))
            .map(|name| Entry {
                name,
                is_dir: true,
                size: 0,
            })
            .chain(listed.objects.iter().filter_map(|o| {
                o.location.filename().map(|name| Entry {
                    name: name.to_string(),
                    is_dir: false,
                    size: o.size,
                })
            }))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (s, p) = (self.inner.clone(), Self::path(key));
        block_on(async move {
            match s.delete(&p).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(Error::Internal(e.to_string())),
            }
        })
        .map_err(|e| self.err("cannot delete checkpoint object", key, unwrap_internal(e)))
    }

    fn delete_all(&self, key: &str) -> Result<()> {
        use futures::TryStreamExt;
        let (s, p) = (self.inner.clone(), Self::path(key));
        block_on(async move {
            let prefix = (!p.as_ref().is_empty()).then_some(p.clone());
            // `list` of a prefix lists the objects under `prefix/`, not `prefix` itself.
            let mut keys: Vec<ObjectPath> = s
                .list(prefix.as_ref())
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            keys.push(p);
            for k in keys {
                match s.delete(&k).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::Internal(e.to_string())),
                }
            }
            Ok(())
        })
        .map_err(|e| self.err("cannot delete checkpoint objects", key, unwrap_internal(e)))
    }

    fn create_dir(&self, _key: &str) -> Result<()> {
        Ok(())
    }
}

/// The message of an error made inside [`block_on`] (its `Internal` text).
fn unwrap_internal(e: Error) -> String {
    match e {
        Error::Internal(m) => m,
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------- S3 settings

/// S3 settings, Flink's keys (`s3.*`); what is empty falls back to the
/// standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
/// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// `s3.endpoint`: an S3-compatible server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// `s3.access-key`.
    pub access_key: String,
    /// `s3.secret-key`.
    pub secret_key: String,
    /// `s3.region`.
    pub region: String,
    /// `s3.path.style.access`: `http://endpoint/bucket/key` instead of `http://bucket.endpoint/key`.
    pub path_style: bool,
}

impl S3Settings {
    /// Reads the `s3.*` options.
    pub fn from_conf(conf: &Conf) -> Self {
        S3Settings {
            endpoint: conf.get(&options::S3_ENDPOINT),
            access_key: conf.get(&options::S3_ACCESS_KEY),
            secret_key: conf.get(&options::S3_SECRET_KEY),
            region: conf.get(&options::S3_REGION),
            path_style: conf.get(&options::S3_PATH_STYLE_ACCESS),
        }
    }

    /// An S3 client for `bucket` (bounded timeouts and retries, see the module doc).
    pub fn build(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        use object_store::aws::AmazonS3Builder;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !self.endpoint.trim().is_empty() {
            b = b.with_endpoint(self.endpoint.trim());
        }
        if !self.access_key.is_empty() {
            b = b.with_access_key_id(&self.access_key);
        }
        if !self.secret_key.is_empty() {
            b = b.with_secret_access_key(&self.secret_key);
        }
        let region = if self.region.trim().is_empty() {
            std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".into())
        } else {
            self.region.trim().to_string()
        };
        let endpoint = if self.endpoint.trim().is_empty() {
            std::env::var("AWS_ENDPOINT").unwrap_or_default()
        } else {
            self.endpoint.trim().to_string()
        };
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(60))
            .with_allow_http(endpoint.starts_with("http://"));
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
        };
        let store = b
            .with_region(region)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| Error::Storage {
                action: "cannot configure S3",
                location: format!("s3://{bucket}"),
                message: e.to_string(),
            })?;
        Ok(Arc::new(store))
    }
}

// ---------------------------------------------------------------- resolution

static S3: RwLock<Option<S3Settings>> = RwLock::new(None);

fn stores() -> &'static Mutex<HashMap<String, Arc<dyn Store>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn Store>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

/// Sets the S3 settings used for `s3://` locations from now on (a job calls
/// it with its configuration before it touches storage; so does the CLI).
/// They are per process, as Flink's file systems are: jobs of one process
/// that name different S3 endpoints must not run at the same time.
pub fn configure(settings: S3Settings) {
    let mut cur = S3.write().unwrap_or_else(|p| p.into_inner());
    if cur.as_ref() != Some(&settings) {
        *cur = Some(settings);
        stores()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with("s3://"));
    }
}

/// Makes `root` (`scheme://name`, e.g. `memory://test`) resolve to `store`:
/// for tests with `object_store::memory::InMemory`.
pub fn register(root: &str, store: Arc<dyn ObjectStore>) {
    let root = root.trim_end_matches('/').to_string();
    stores()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(root.clone(), Arc::new(ObjectStoreBackend::new(store, root)));
}

fn bad(location: &str, message: String) -> Error {
    Error::Storage {
        action: "bad checkpoint storage location",
        location: location.to_string(),
        message,
    }
}

/// Splits `scheme://rest` when the text is a URI (a scheme of two or more
/// letters, digits, `+`, `-`, `.`).
fn split_uri(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let ok = scheme.len() >= 2
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    ok.then_some((scheme, rest))
}

/// `file:///abs` as the bare path `/abs`; other locations as they are.
/// Rejects `file://host/...` and unsupported schemes.
pub fn normalize(loc: &Path) -> Result<PathBuf> {
    let text = loc.to_string_lossy();
    match split_uri(&text) {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => {
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(bad(
                    &text,
                    "a file:// URI needs an absolute path: file:///abs/path".into(),
                ));
            }
            Ok(PathBuf::from(path))
        }
        Some(_) => {
            resolve(loc)?;
            Ok(loc.to_path_buf())
        }
        None => Ok(loc.to_path_buf()),
    }
}

/// The store a location lives in and its key there (see the module doc).
pub fn resolve(loc: &Path) -> Result<(Arc<dyn Store>, String)> {
    let text = loc.to_string_lossy();
    let Some((scheme, rest)) = split_uri(&text) else {
        return Ok((Arc::new(LocalStore), text.into_owned()));
    };
    let scheme_lc = scheme.to_ascii_lowercase();
    if scheme_lc == "file" {
        let p = normalize(loc)?;
        return Ok((Arc::new(LocalStore), p.to_string_lossy().into_owned()));
    }
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let key = key.trim_matches('/').to_string();
    let root = format!("{scheme_lc}://{bucket}");
    if let Some(s) = stores()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&root)
    {
        return Ok((s.clone(), key));
    }
    if scheme_lc != "s3" {
        return Err(bad(
            &text,
            format!("unsupported scheme '{scheme}': checkpoint storage takes a bare path, file:///path or s3://bucket/prefix"),
        ));
    }
    if bucket.is_empty() {
        return Err(bad(
            &text,
            "an s3:// URI needs a bucket: s3://bucket/prefix".into(),
        ));
    }
    let settings = S3
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default();
    let store: Arc<dyn Store> = Arc::new(ObjectStoreBackend::new(settings.build(bucket)?, &root));
    stores()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(root, store.clone());
    Ok((store, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn mem() -> ObjectStoreBackend {
        ObjectStoreBackend::new(Arc::new(InMemory::new()), "memory://t")
    }

    #[test]
    fn put_get_size_list_delete() {
        let s = mem();
        assert_eq!(s.size("job/chk-1/_metadata").unwrap(), None);
        assert!(s.list_dir("job").unwrap().is_empty());
        s.put("job/chk-1/_metadata", b"meta".to_vec(), &|| Ok(()))
            .unwrap();
        s.put("job/shared/a.sst", vec![7; 10], &|| Ok(())).unwrap();
        s.put("job/.running", b"1".to_vec(), &|| Ok(())).unwrap();
        assert_eq!(s.get("job/chk-1/_metadata").unwrap(), b"meta");
        assert_eq!(s.size("job/shared/a.sst").unwrap(), Some(10));
        let names: Vec<(String, bool)> = s
            .list_dir("job")
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.is_dir))
            .collect();
        assert_eq!(
            names,
            vec![
                (".running".into(), false),
                ("chk-1".into(), true),
                ("shared".into(), true)
            ]
        );
        s.delete("job/shared/a.sst").unwrap();
        s.delete("job/shared/a.sst").unwrap(); // missing: fine
        assert_eq!(s.size("job/shared/a.sst").unwrap(), None);
        s.delete_all("job/chk-1").unwrap();
        assert!(s.list_dir("job/chk-1").unwrap().is_empty());
        assert_eq!(s.size("job/.running").unwrap(), Some(1));
        assert!(s.get("job/nothing").is_err());
    }

    #[test]
    fn a_failure_before_publishing_leaves_nothing() {
        let s = mem();
        let r = s.put("k/_metadata", b"x".to_vec(), &|| {
            Err(Error::Injected("test".into()))
        });
        assert!(r.is_err());
        assert_eq!(s.size("k/_metadata").unwrap(), None);
    }

    /// On the local filesystem a write that fails before it is published
    /// (a full disk, an injected failure) leaves neither the file nor its
    /// temporary file.
    #[test]
    fn a_failed_local_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("chk-3").join("0-0.state");
        let r = LocalStore.put(key.to_str().unwrap(), b"x".to_vec(), &|| {
            Err(Error::Injected("test".into()))
        });
        assert!(r.is_err());
        let left: Vec<String> = fs::read_dir(dir.path().join("chk-3"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn files_round_trip_with_crc_small_and_multipart() {
        let s = mem();
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in [("small", 1000usize), ("big", PART_SIZE * 2 + 12_345)] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let src = dir.path().join(name);
            fs::write(&src, &data).unwrap();
            let key = format!("job/shared/{name}");
            let (size, crc) = s.put_file(&src, &key).unwrap();
            assert_eq!((size, crc), (len as u64, crc32fast::hash(&data)));
            assert_eq!(s.size(&key).unwrap(), Some(len as u64));
            assert_eq!(s.crc(&key).unwrap(), (size, crc));
            let back = dir.path().join(format!("{name}.back"));
            assert_eq!(s.get_to_file(&key, &back).unwrap(), (size, crc));
            assert_eq!(fs::read(&back).unwrap(), data);
        }
    }

    #[test]
    fn local_store_is_the_same_contract() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore;
        let base = dir.path().join("job");
        let key = |k: &str| base.join(k).to_string_lossy().into_owned();
        s.put(&key("chk-1/_metadata"), b"m".to_vec(), &|| Ok(()))
            .unwrap();
        assert_eq!(s.size(&key("chk-1/_metadata")).unwrap(), Some(1));
        assert_eq!(s.size(&key("chk-1")).unwrap(), None);
        let r = s.put(&key("chk-2/_metadata"), b"m".to_vec(), &|| {
            Err(Error::Injected("test".into()))
        });
        assert!(r.is_err());
        assert_eq!(s.size(&key("chk-2/_metadata")).unwrap(), None);
        s.delete_all(&key("chk-1")).unwrap();
        assert!(s.list_dir(&key("chk-1")).unwrap().is_empty());
    }

    #[test]
    fn locations() {
        assert_eq!(
            normalize(Path::new("file:///tmp/ck")).unwrap(),
            PathBuf::from("/tmp/ck")
        );
        assert_eq!(
            normalize(Path::new("rel/dir")).unwrap(),
            PathBuf::from("rel/dir")
        );
        assert!(normalize(Path::new("file://host/x")).is_err());
        let e = resolve(Path::new("gs://b/x")).unwrap_err().to_string();
        assert!(e.contains("unsupported scheme 'gs'"), "{e}");
        let e = resolve(Path::new("s3:///x")).unwrap_err().to_string();
        assert!(e.contains("needs a bucket"), "{e}");
        register("memory://unit", Arc::new(InMemory::new()));
        let (s, key) = resolve(Path::new("memory://unit/a/b/")).unwrap();
        assert_eq!(key, "a/b");
        assert_eq!(s.display(&key), "memory://unit/a/b");
        assert!(!s.is_local());
        let (s, key) = resolve(Path::new("/abs/p")).unwrap();
        assert!(s.is_local());
        assert_eq!(key, "/abs/p");
    }
}
