//! The RocksDB keyed-state backend (`state.backend.type: rocksdb`, cargo
//! feature `rocksdb`).
//!
//! # Layout
//! One RocksDB instance per stateful subtask, in a working directory of its
//! own under `state.backend.rocksdb.localdir` (default: the system's
//! temporary directory), `weir-rocksdb-<pid>-<instance>/`, deleted when the
//! subtask's operator is dropped; directories of processes that no longer
//! exist are removed when a new instance opens. One column family per
//! registered state (`s:<name>`). Keys are the key group (big-endian `u16`)
//! followed by the postcard-encoded key, so the keys of a key-group range are
//! one contiguous key range (rescaling copies ranges); map state appends the
//! postcard-encoded user key after a varint length of the key. Values are
//! postcard-encoded (`ListState`: the whole `Vec<T>`, which `add` extends
//! with a RocksDB merge, resolved when it is read or compacted). Writes skip RocksDB's
//! write-ahead log: durability comes from checkpoints, and a crashed subtask
//! restores from one.
//!
//! # Per-record cost
//! Key and value bytes are encoded into buffers reused across records.
//! `ValueState` (which `count()`, `sum()` and friends use) keeps up to
//! `state.backend.rocksdb.value-cache.entries` entries per state deserialized
//! in memory; changed entries are written back in one `WriteBatch` when the
//! cache is full (at the end of a batch of records) and before every
//! snapshot, so a snapshot always sees every write. A full cache keeps the
//! entries used at least twice since they were loaded (the hot keys of a
//! skewed input) if they fill at most half of it, and drops the rest. Before
//! a batch of records the keyed operator hands the batch's keys to
//! `RocksKeyedStateBackend::prefetch`: the keys the cache lacks are read
//! with one batched `MultiGet` per value state the previous batch read, so
//! a record costs at most one lookup, batched, and one buffered write. With
//! 0 every access is a RocksDB `get`/`put`. List and map state always go to
//! RocksDB.
//!
//! # Memory
//! `SlotMemory`: the instances of a slot share one block cache of the
//! slot's budget (`state.backend.rocksdb.memory.*`,
//! `taskmanager.memory.managed.size`), their memtables charged to it, and
//! their index and filter blocks pinned in it (or partitioned, read 4 KiB
//! at a time through it, with `...partitioned-index-filters: true`).
//! Universal compaction, eight sorted runs at a time (each checkpoint
//! flushes one).
//!
//! # Snapshots (docs/design.md invariants 2 and 6)
//! Synchronous part (`RocksKeyedStateBackend::snapshot_async`, on the
//! processing loop): write back the value cache, then create a RocksDB
//! checkpoint (flush of the memtables plus hard links of the live SST files)
//! in the working directory. Asynchronous part (`RocksPending::upload`, in
//! the subtask's upload task): copy its files to checkpoint storage with their
//! CRC-32 and fsync them, then delete the local checkpoint. With
//! `execution.checkpointing.incremental: true` SST files go to
//! `<job-dir>/shared/<instance>-<file>`; a file the latest checkpoint known
//! to be complete already uploaded is not copied again, only referenced (the
//! coordinator counts references; see [`crate::checkpoint::storage`]).
//! Without it every file goes into the checkpoint's own directory.
//!
//! # Restore
//! From RocksDB files (any old parallelism): each old instance whose key
//! groups overlap this subtask's range is copied to a temporary directory
//! (CRC-32 checked), opened read-only, and the key range of the overlapping
//! key groups of every column family is copied into this instance. From the
//! canonical form (a heap checkpoint): entries are decoded with the state's
//! types and written. `to_canonical` turns RocksDB files into the canonical
//! form for the heap backend.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamily, MergeOperands, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::BackendScope;
use super::{KeyedStateSnapshot, StateKind, StateSnapshot, UploadTarget, UploadedKeyed};
use crate::checkpoint::storage::{copy_crc, link_or_copy_crc};
use crate::keygroup::KeyGroupRange;
use crate::record::{Data, Key};
use crate::snapshot::{KeyedStateHandle, RocksStateHandle, StateFile};
use crate::{Error, Result};

fn db_err(e: rocksdb::Error) -> Error {
    Error::StateBackend(format!("RocksDB: {e}"))
}

/// Column family name of a state.
fn cf_name(state: &str) -> String {
    format!("s:{state}")
}

// ---------------------------------------------------------------------------
// Encoding.

#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Appends the postcard encoding of `v` to `buf`.
#[inline]
fn append<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<()> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(v, taken)?;
    Ok(())
}

/// `kg ++ postcard(key)` into `buf`.
#[inline]
fn encode_key<K: Serialize>(buf: &mut Vec<u8>, kg: u16, key: &K) -> Result<()> {
    buf.clear();
    buf.extend_from_slice(&kg.to_be_bytes());
    append(buf, key)
}

/// `kg ++ varint(len) ++ postcard(key)` (the prefix of a key's map entries) into `buf`.
fn encode_map_prefix<K: Serialize>(buf: &mut Vec<u8>, kg: u16, key: &K) -> Result<()> {
    let mut k = Vec::new();
    append(&mut k, key)?;
    buf.clear();
    buf.extend_from_slice(&kg.to_be_bytes());
    put_varint(buf, k.len() as u64);
    buf.extend_from_slice(&k);
    Ok(())
}

/// The smallest key greater than every key starting with `prefix` (`None`: no bound).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(Into::into)
}

// ---------------------------------------------------------------------------
// Columns: one per registered state, typed.

trait Column<K>: Send {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Writes changed cached values into `batch`; they stay cached, clean.
    /// (Only value states cache; the others have nothing to write.)
    fn write_back(&mut self, _: &ColumnFamily, _: &mut WriteBatch, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    /// Entries in the cache.
    fn cached(&self) -> usize {
        0
    }
    fn drop_cache(&mut self) {}
    /// Makes room in a full cache (after a write-back: every entry is
    /// clean): keeps the entries used at least twice since they were
    /// loaded or last kept, when they are at most half of `cap`; else
    /// empties it.
    fn evict(&mut self, cap: usize) {
        let _ = cap;
        self.drop_cache();
    }
    /// Reads the entries of `keys` (in key groups `groups`) that are not
    /// cached into the cache with one batched MultiGet. (Only value states
    /// cache; the others read nothing.)
    fn prefetch(&mut self, _: &Prefetch<'_, K>, _: &mut KeyBuffers) -> Result<()> {
        Ok(())
    }
    /// Writes the canonical entries of key group `kg` into `batch`.
    fn restore_canonical(
        &self,
        cf: &ColumnFamily,
        kg: u16,
        bytes: &[u8],
        batch: &mut WriteBatch,
        buf: &mut Vec<u8>,
    ) -> Result<()>;
}

/// One batch's keys and where to read them.
struct Prefetch<'a, K> {
    db: &'a DB,
    cf: &'a ColumnFamily,
    read_opts: &'a ReadOptions,
    keys: &'a [K],
    groups: &'a [u16],
}

/// Encoded keys of a prefetch, back to back (reused across batches).
#[derive(Default)]
struct KeyBuffers {
    bytes: Vec<u8>,
    /// (end of the key in `bytes`, index in the batch)
    ends: Vec<(usize, usize)>,
}

struct Slot<T> {
    value: Option<T>,
    dirty: bool,
    /// Reads and writes since the entry was loaded or last survived an
    /// eviction (saturating): a hot key keeps its entry.
    uses: u8,
    /// The key group the entry is written under (a namespaced key's group
    /// is its key's, not the hash of the whole key).
    kg: u16,
}

struct ValueColumn<K, T> {
    cache: FxHashMap<K, Slot<T>>,
}

impl<K: Key, T: Data + Clone> Column<K> for ValueColumn<K, T> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn write_back(
        &mut self,
        cf: &ColumnFamily,
        batch: &mut WriteBatch,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let mut val = Vec::new();
        for (k, slot) in self.cache.iter_mut().filter(|(_, s)| s.dirty) {
            encode_key(buf, slot.kg, k)?;
            match &slot.value {
                Some(v) => {
                    val.clear();
                    append(&mut val, v)?;
                    batch.put_cf(cf, &*buf, &val);
                }
                None => batch.delete_cf(cf, &*buf),
            }
            slot.dirty = false;
        }
        Ok(())
    }
    fn cached(&self) -> usize {
        self.cache.len()
    }
    fn drop_cache(&mut self) {
        self.cache.clear();
    }
    fn evict(&mut self, cap: usize) {
        self.cache.retain(|_, s| {
            let hot = s.uses >= 2 && !s.dirty;
            s.uses = 0;
            hot
        });
        if self.cache.len() > cap / 2 {
            self.cache.clear();
        }
    }
    fn prefetch(&mut self, p: &Prefetch<'_, K>, b: &mut KeyBuffers) -> Result<()> {
        b.bytes.clear();
        b.ends.clear();
        for (i, (k, kg)) in p.keys.iter().zip(p.groups).enumerate() {
            if self.cache.contains_key(k) {
                continue;
            }
            b.bytes.extend_from_slice(&kg.to_be_bytes());
            append(&mut b.bytes, k)?;
            b.ends.push((b.bytes.len(), i));
        }
        if b.ends.is_empty() {
            return Ok(());
        }
        let mut start = 0;
        let slices: Vec<&[u8]> = b
            .ends
            .iter()
            .map(|&(end, _)| {
                let s = &b.bytes[start..end];
                start = end;
                s
            })
            .collect();
        let values =
            p.db.batched_multi_get_cf_opt(p.cf, slices, false, p.read_opts);
        for (v, &(_, i)) in values.into_iter().zip(&b.ends) {
            let value = match v.map_err(db_err)? {
                Some(bytes) => Some(decode::<T>(&bytes)?),
                None => None,
            };
            // A key twice in the batch: the first read stands.
            self.cache.entry(p.keys[i].clone()).or_insert(Slot {
                value,
                dirty: false,
                uses: 0,
                kg: p.groups[i],
            });
        }
        Ok(())
    }
    fn restore_canonical(
        &self,
        cf: &ColumnFamily,
        kg: u16,
        bytes: &[u8],
        batch: &mut WriteBatch,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let entries: Vec<(K, T)> = decode(bytes)?;
        let mut val = Vec::new();
        for (k, v) in entries {
            encode_key(buf, kg, &k)?;
            val.clear();
            append(&mut val, &v)?;
            batch.put_cf(cf, &*buf, &val);
        }
        Ok(())
    }
}

/// List and map states: no cache; the types are needed to decode canonical snapshots.
struct PlainColumn<K, V> {
    map: bool,
    _t: std::marker::PhantomData<fn() -> (K, V)>,
}

impl<K: Key, T: Data> Column<K> for PlainColumn<K, Vec<T>> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn restore_canonical(
        &self,
        cf: &ColumnFamily,
        kg: u16,
        bytes: &[u8],
        batch: &mut WriteBatch,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let entries: Vec<(K, Vec<T>)> = decode(bytes)?;
        let mut val = Vec::new();
        for (k, v) in entries {
            encode_key(buf, kg, &k)?;
            val.clear();
            append(&mut val, &v)?;
            batch.put_cf(cf, &*buf, &val);
        }
        Ok(())
    }
}

/// Map state column (the `V` parameter is `(UK, UV)`).
impl<K: Key, UK: Key, UV: Data> Column<K> for PlainColumn<K, (UK, UV)> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn restore_canonical(
        &self,
        cf: &ColumnFamily,
        kg: u16,
        bytes: &[u8],
        batch: &mut WriteBatch,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        debug_assert!(self.map);
        let entries: Vec<(K, FxHashMap<UK, UV>)> = decode(bytes)?;
        let mut val = Vec::new();
        for (k, m) in entries {
            encode_map_prefix(buf, kg, &k)?;
            let prefix_len = buf.len();
            for (uk, uv) in m {
                buf.truncate(prefix_len);
                append(buf, &uk)?;
                val.clear();
                append(&mut val, &uv)?;
                batch.put_cf(cf, &*buf, &val);
            }
        }
        Ok(())
    }
}

struct Registered<K> {
    name: String,
    cf: String,
    kind: StateKind,
    column: Box<dyn Column<K>>,
}

// ---------------------------------------------------------------------------
// Upload tracking (incremental checkpoints).

/// Which SST files were uploaded to `shared/`, per checkpoint, and which of
/// them the latest checkpoint known to be complete references.
#[derive(Default)]
struct Tracker {
    pending: BTreeMap<u64, HashMap<String, StateFile>>,
    confirmed: HashMap<String, StateFile>,
}

// ---------------------------------------------------------------------------
// The backend.

/// RocksDB keyed state of one subtask.
pub struct RocksKeyedStateBackend<K> {
    range: KeyGroupRange,
    db: Option<DB>,
    /// The instance's working directory (database, local checkpoints, restores).
    root: PathBuf,
    instance: String,
    incremental: bool,
    cache_entries: usize,
    states: Vec<Registered<K>>,
    write_opts: WriteOptions,
    read_opts: ReadOptions,
    memory: Arc<SlotMemory>,
    /// Key and value encoding buffers, reused across records.
    buf: RefCell<Vec<u8>>,
    vbuf: RefCell<Vec<u8>>,
    tracker: Arc<Mutex<Tracker>>,
    restores: usize,
    /// Bit `id`: value state `id` (of the first 64) was read since the
    /// last prefetch (the next batch is likely to read it too).
    touched: std::cell::Cell<u64>,
    prefetch_keys: KeyBuffers,
}

fn db_of(db: &Option<DB>) -> Result<&DB> {
    db.as_ref()
        .ok_or_else(|| Error::Internal("RocksDB instance already closed".into()))
}

fn cf_of<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| Error::Internal(format!("no column family '{name}'")))
}

/// RocksDB's merge operator for list state: `ListState::add` writes a
/// merge operand (a one-element list) instead of reading, extending and
/// rewriting the whole list. A list is postcard's `Vec<T>` encoding, a
/// varint count followed by the elements, so lists concatenate without
/// knowing `T`: the counts add up and the elements follow one another.
/// Associative (a partial merge is the same function). `None` (bytes that
/// are not a list) makes RocksDB report corruption on the read.
fn append_lists(_: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut count = 0u64;
    let mut len = 0;
    for part in existing.into_iter().chain(operands.iter()) {
        let (n, used) = get_varint(part)?;
        count = count.checked_add(n)?;
        len += part.len() - used;
    }
    let mut out = Vec::with_capacity(len + 10);
    put_varint(&mut out, count);
    for part in existing.into_iter().chain(operands.iter()) {
        let (_, used) = get_varint(part)?;
        out.extend_from_slice(&part[used..]);
    }
    Some(out)
}

fn db_options() -> Options {
    let mut o = Options::default();
    o.set_merge_operator_associative("weir-append-lists", append_lists);
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_max_background_jobs(2);
    // The memtable is flushed by every snapshot's synchronous part: keep it moderate.
    o.set_write_buffer_size(32 << 20);
    o
}

// ---------------------------------------------------------------------------
// Memory: one budget per slot.

/// The RocksDB memory of one slot: what `state.backend.rocksdb.memory.*`
/// bounds. With managed memory every instance of the slot (subtask `i` of
/// every stateful operator of the job, as Flink's slot sharing puts them in
/// one slot) uses the same block cache of the slot's budget, and a write
/// buffer manager charges their memtables to that cache, flushing when they
/// take more than `write-buffer-ratio` of it; index and filter blocks live
/// in the cache too. Without it each instance has a cache of its own and
/// nothing bounds the total.
pub(crate) struct SlotMemory {
    /// The block cache's capacity.
    budget: usize,
    cache: rocksdb::Cache,
    write_buffers: Option<rocksdb::WriteBufferManager>,
    partitioned: bool,
}

/// The slots' memory of this process: (job, slot, budget) -> memory, while
/// an instance uses it.
type SlotRegistry = Vec<((String, usize, u64), std::sync::Weak<SlotMemory>)>;
static SLOTS: Mutex<SlotRegistry> = Mutex::new(Vec::new());

impl SlotMemory {
    /// The memory of `scope`'s slot: shared with the slot's other
    /// instances when managed, this instance's own otherwise.
    fn of(scope: &BackendScope<'_>) -> Arc<SlotMemory> {
        let m = &scope.config.memory;
        if !m.managed {
            return Arc::new(SlotMemory {
                budget: 64 << 20,
                cache: rocksdb::Cache::new_lru_cache(64 << 20),
                write_buffers: None,
                partitioned: m.partitioned_index_filters,
            });
        }
        let budget = m.per_slot(scope.parallelism);
        let id = (scope.job_id.to_string(), scope.subtask, budget);
        let mut slots = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|(_, w)| w.strong_count() > 0);
        if let Some(mem) = slots
            .iter()
            .find(|(k, _)| *k == id)
            .and_then(|(_, w)| w.upgrade())
        {
            return mem;
        }
        // HyperClockCache: lookups without a mutex (the LRU cache's hash
        // table and list were a tenth of the processing loop's time).
        let cache = rocksdb::Cache::new_hyper_clock_cache(budget as usize, 0);
        let write_buffers = rocksdb::WriteBufferManager::new_write_buffer_manager_with_cache(
            (budget as f64 * m.write_buffer_ratio) as usize,
            false,
            cache.clone(),
        );
        let mem = Arc::new(SlotMemory {
            budget: budget as usize,
            cache,
            write_buffers: Some(write_buffers),
            partitioned: m.partitioned_index_filters,
        });
        slots.push((id, Arc::downgrade(&mem)));
        tracing::debug!(
            slot = scope.subtask,
            budget_mib = mem.budget >> 20,
            write_buffer_ratio = m.write_buffer_ratio,
            "RocksDB memory of a slot"
        );
        mem
    }

    /// Options of a live instance (and of its column families):
    /// `db_options` plus whole-key bloom filters (every checkpoint flushes a
    /// small L0 file; point lookups must not read them all), the slot's
    /// block cache, and its write buffer manager.
    fn live_options(&self) -> Options {
        let mut o = db_options();
        let mut t = rocksdb::BlockBasedOptions::default();
        t.set_bloom_filter(10.0, false);
        t.set_block_cache(&self.cache);
        t.set_cache_index_and_filter_blocks(true);
        if self.partitioned {
            // A lookup reads a 4 KiB index partition and filter partition
            // through the cache; the top levels stay pinned, and so do the
            // L0 files' blocks, which every lookup consults. For states
            // whose filters would not fit in the budget.
            t.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
            t.set_partition_filters(true);
            t.set_pin_top_level_index_and_filter(true);
            t.set_pin_l0_filter_and_index_blocks_in_cache(true);
        } else {
            // One index and one filter block per file, charged to the
            // slot's cache and pinned there for the file's life: never
            // evicted, so a lookup never reads them again (unpinned, a 64
            // MiB cache evicted the multi-megabyte filter blocks of 10 M
            // keys and every lookup re-read one: 3 k words/s), and probed
            // without going through a partition index (1.3x to 1.4x the
            // words/s of partitioned filters at 10 M keys). They take about
            // 1.3 bytes per key (10 bits of filter plus the index).
            t.set_unpartitioned_pinning_tier(rocksdb::BlockBasedTablePinningTier::All);
        }
        // Lookups of keys a memtable does not hold (most, with the
        // memtables flushed every checkpoint) skip its skip list.
        o.set_memtable_prefix_bloom_ratio(0.1);
        o.set_memtable_whole_key_filtering(true);
        // Every checkpoint flushes a small L0 file. Universal (tiered)
        // compaction merges sorted runs of similar size, eight at a time,
        // instead of rewriting the bottom level with every few L0 files
        // (leveled compaction at 10 M uniform keys: the largest upload of
        // a checkpoint about 76 MB and 440 MB of disk at peak; universal:
        // 37 MB and 300 MB, the same words/s).
        o.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
        o.set_level_zero_file_num_compaction_trigger(8);
        o.set_level_zero_slowdown_writes_trigger(24);
        o.set_level_zero_stop_writes_trigger(40);
        // L0 and L1 are rewritten all the time and read most: uncompressed;
        // LZ4 below, where most of the data lies.
        o.set_compression_per_level(&[
            rocksdb::DBCompressionType::None,
            rocksdb::DBCompressionType::None,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
            rocksdb::DBCompressionType::Lz4,
        ]);
        o.set_block_based_table_factory(&t);
        if let Some(w) = &self.write_buffers {
            o.set_write_buffer_manager(w);
        }
        o
    }
}

/// Removes working directories left by processes that no longer run.
fn sweep_stale(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("weir-rocksdb-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl<K: Key> RocksKeyedStateBackend<K> {
    /// Opens a fresh instance for the subtask `ctx` describes.
    pub fn open(ctx: &BackendScope<'_>) -> Result<Self> {
        let cfg = ctx.config;
        let base = cfg.local_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base)
            .map_err(|e| Error::io("cannot create the RocksDB working directory", &base, e))?;
        sweep_stale(&base);
        let op: String = ctx
            .operator
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(24)
            .collect();
        let instance = format!(
            "{op}-{}-{}",
            ctx.subtask,
            crate::checkpoint::storage::random_hex12()
        );
        let root = base.join(format!("weir-rocksdb-{}-{instance}", std::process::id()));
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::io("cannot create the RocksDB working directory", &root, e))?;
        let memory = SlotMemory::of(ctx);
        let db = DB::open(&memory.live_options(), root.join("db")).map_err(db_err)?;
        let mut write_opts = WriteOptions::default();
        write_opts.disable_wal(true);
        Ok(RocksKeyedStateBackend {
            range: ctx.key_groups,
            db: Some(db),
            root,
            instance,
            incremental: cfg.incremental,
            cache_entries: cfg.value_cache_entries,
            states: Vec::new(),
            write_opts,
            read_opts: ReadOptions::default(),
            memory,
            buf: RefCell::new(Vec::with_capacity(64)),
            vbuf: RefCell::new(Vec::with_capacity(64)),
            tracker: Arc::new(Mutex::new(Tracker::default())),
            restores: 0,
            touched: std::cell::Cell::new(0),
            prefetch_keys: KeyBuffers::default(),
        })
    }

    /// The key groups this instance holds.
    pub fn range(&self) -> KeyGroupRange {
        self.range
    }

    /// The instance's working directory.
    pub fn working_dir(&self) -> &Path {
        &self.root
    }

    fn register<C: Column<K> + 'static>(
        &mut self,
        name: &str,
        kind: StateKind,
        make: impl FnOnce() -> C,
    ) -> Result<usize> {
        if let Some(i) = self.states.iter().position(|s| s.name == name) {
            let s = &self.states[i];
            if s.kind != kind || !s.column.as_any().is::<C>() {
                return Err(Error::User(format!(
                    "state '{name}' is already registered as a {:?} state of another type",
                    s.kind
                )));
            }
            return Ok(i);
        }
        let cf = cf_name(name);
        self.db
            .as_mut()
            .ok_or_else(|| Error::Internal("RocksDB instance already closed".into()))?
            .create_cf(&cf, &self.memory.live_options())
            .map_err(db_err)?;
        self.states.push(Registered {
            name: name.to_string(),
            cf,
            kind,
            column: Box::new(make()),
        });
        Ok(self.states.len() - 1)
    }

    pub(crate) fn register_value<T: Data + Clone>(&mut self, name: &str) -> Result<usize> {
        self.register(name, StateKind::Value, || ValueColumn::<K, T> {
            cache: FxHashMap::default(),
        })
    }

    pub(crate) fn register_list<T: Data + Clone>(&mut self, name: &str) -> Result<usize> {
        self.register(name, StateKind::List, || PlainColumn::<K, Vec<T>> {
            map: false,
            _t: std::marker::PhantomData,
        })
    }

    pub(crate) fn register_map<UK: Key, UV: Data + Clone>(&mut self, name: &str) -> Result<usize> {
        self.register(name, StateKind::Map, || PlainColumn::<K, (UK, UV)> {
            map: true,
            _t: std::marker::PhantomData,
        })
    }

    fn state(&self, id: usize) -> Result<&Registered<K>> {
        self.states.get(id).ok_or_else(|| {
            Error::Internal(format!(
                "state handle {id} does not belong to this operator"
            ))
        })
    }

    fn value_column<T: Data + Clone>(&self, id: usize) -> Result<&ValueColumn<K, T>> {
        self.state(id)?
            .column
            .as_any()
            .downcast_ref()
            .ok_or_else(|| Error::Internal(format!("state handle {id} has another type")))
    }

    // -- value state --------------------------------------------------------

    fn db_get<T: DeserializeOwned>(&self, cf: &str, kg: u16, key: &K) -> Result<Option<T>> {
        let db = db_of(&self.db)?;
        let mut buf = self.buf.borrow_mut();
        encode_key(&mut buf, kg, key)?;
        match db
            .get_pinned_cf_opt(cf_of(db, cf)?, &*buf, &self.read_opts)
            .map_err(db_err)?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    fn db_put<T: Serialize + ?Sized>(
        &self,
        cf: &str,
        kg: u16,
        key: &K,
        value: Option<&T>,
    ) -> Result<()> {
        let db = db_of(&self.db)?;
        let cf = cf_of(db, cf)?;
        let mut buf = self.buf.borrow_mut();
        encode_key(&mut buf, kg, key)?;
        match value {
            Some(v) => {
                let mut val = self.vbuf.borrow_mut();
                val.clear();
                append(&mut val, v)?;
                db.put_cf_opt(cf, &*buf, &*val, &self.write_opts)
            }
            None => db.delete_cf_opt(cf, &*buf, &self.write_opts),
        }
        .map_err(db_err)
    }

    pub(crate) fn value_get<T: Data + Clone>(
        &self,
        id: usize,
        kg: u16,
        key: &K,
    ) -> Result<Option<T>> {
        self.touch(id);
        let col = self.value_column::<T>(id)?;
        if let Some(slot) = col.cache.get(key) {
            return Ok(slot.value.clone());
        }
        self.db_get(&self.states[id].cf, kg, key)
    }

    /// Notes that value state `id` was read (see [`Self::prefetch`]).
    #[inline]
    fn touch(&self, id: usize) {
        if id < 64 {
            self.touched.set(self.touched.get() | 1 << id);
        }
    }

    /// Before a batch of records: reads the keys of the batch that the
    /// value caches lack, for every value state the previous batch read,
    /// with one batched MultiGet per state, so the records find their
    /// values cached (RocksDB sorts the keys, and looks each file's filter
    /// and index blocks up once for all of them). Nothing with the value
    /// cache off.
    pub(crate) fn prefetch(&mut self, keys: &[K], groups: &[u16]) -> Result<()> {
        let touched = self.touched.replace(0);
        if self.cache_entries == 0 || touched == 0 {
            return Ok(());
        }
        let db = db_of(&self.db)?;
        for (id, s) in self.states.iter_mut().enumerate() {
            if id >= 64 || touched & (1 << id) == 0 {
                continue;
            }
            let p = Prefetch {
                db,
                cf: cf_of(db, &s.cf)?,
                read_opts: &self.read_opts,
                keys,
                groups,
            };
            s.column.prefetch(&p, &mut self.prefetch_keys)?;
        }
        Ok(())
    }

    pub(crate) fn value_put<T: Data + Clone>(
        &mut self,
        id: usize,
        kg: u16,
        key: &K,
        value: Option<T>,
    ) -> Result<()> {
        if self.cache_entries == 0 {
            let cf = &self.state(id)?.cf;
            return self.db_put(cf, kg, key, value.as_ref());
        }
        let col = self
            .states
            .get_mut(id)
            .and_then(|s| s.column.as_any_mut().downcast_mut::<ValueColumn<K, T>>())
            .ok_or_else(|| Error::Internal(format!("state handle {id} has another type")))?;
        match col.cache.get_mut(key) {
            Some(slot) => {
                slot.value = value;
                slot.dirty = true;
                slot.uses = slot.uses.saturating_add(1);
            }
            None => {
                col.cache.insert(
                    key.clone(),
                    Slot {
                        value,
                        dirty: true,
                        uses: 1,
                        kg,
                    },
                );
            }
        }
        Ok(())
    }

    pub(crate) fn value_update_with<T: Data + Clone>(
        &mut self,
        id: usize,
        kg: u16,
        key: &K,
        f: impl FnOnce(Option<&T>) -> T,
    ) -> Result<T> {
        if self.cache_entries == 0 {
            let cf = &self.state(id)?.cf;
            let old: Option<T> = self.db_get(cf, kg, key)?;
            let new = f(old.as_ref());
            self.db_put(cf, kg, key, Some(&new))?;
            return Ok(new);
        }
        let slot = self.cached_slot::<T>(id, kg, key)?;
        let new = f(slot.value.as_ref());
        slot.value = Some(new.clone());
        slot.dirty = true;
        Ok(new)
    }

    /// Changes a value in place (`init()` when there is none, then `f`);
    /// says whether it is new.
    pub(crate) fn value_modify<T: Data + Clone>(
        &mut self,
        id: usize,
        kg: u16,
        key: &K,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T),
    ) -> Result<bool> {
        if self.cache_entries == 0 {
            let cf = &self.state(id)?.cf;
            let old: Option<T> = self.db_get(cf, kg, key)?;
            let new = old.is_none();
            let mut v = old.unwrap_or_else(init);
            f(&mut v);
            self.db_put(cf, kg, key, Some(&v))?;
            return Ok(new);
        }
        let slot = self.cached_slot::<T>(id, kg, key)?;
        let new = slot.value.is_none();
        f(slot.value.get_or_insert_with(init));
        slot.dirty = true;
        Ok(new)
    }

    /// The cache slot of `key` in value state `id`, read from the
    /// database first when it is not cached (its value `None` when the
    /// key has none); the state counts as read for the next prefetch.
    fn cached_slot<T: Data + Clone>(
        &mut self,
        id: usize,
        kg: u16,
        key: &K,
    ) -> Result<&mut Slot<T>> {
        self.touch(id);
        let loaded: Option<Option<T>> = if self.value_column::<T>(id)?.cache.contains_key(key) {
            None
        } else {
            Some(self.db_get(&self.states[id].cf, kg, key)?)
        };
        let col = self
            .states
            .get_mut(id)
            .and_then(|s| s.column.as_any_mut().downcast_mut::<ValueColumn<K, T>>())
            .ok_or_else(|| Error::Internal(format!("state handle {id} has another type")))?;
        if let Some(value) = loaded {
            col.cache.insert(
                key.clone(),
                Slot {
                    value,
                    dirty: false,
                    uses: 0,
                    kg,
                },
            );
        }
        let slot = col
            .cache
            .get_mut(key)
            .ok_or_else(|| Error::Internal("value cache entry vanished".into()))?;
        slot.uses = slot.uses.saturating_add(1);
        Ok(slot)
    }

    /// Every `(key, value)` of value state `id`, over all key groups.
    pub(crate) fn value_all_entries<T: Data + Clone>(&mut self, id: usize) -> Result<Vec<(K, T)>> {
        self.write_back(false)?;
        let db = db_of(&self.db)?;
        let cf = cf_of(db, &self.state(id)?.cf)?;
        let mut it = db.raw_iterator_cf(cf);
        it.seek_to_first();
        let mut out = Vec::new();
        while it.valid() {
            if let (Some(k), Some(v)) = (it.key(), it.value()) {
                let key = k
                    .get(2..)
                    .ok_or_else(|| Error::StateBackend("malformed value-state key".into()))?;
                out.push((decode(key)?, decode(v)?));
            }
            it.next();
        }
        it.status().map_err(db_err)?;
        Ok(out)
    }

    /// Writes the value caches back (all of them, or only those over their size).
    fn write_back(&mut self, only_full: bool) -> Result<()> {
        let cap = self.cache_entries;
        let db = db_of(&self.db)?;
        let mut batch = WriteBatch::default();
        let mut buf = self.buf.borrow_mut();
        for s in self.states.iter_mut() {
            let n = s.column.cached();
            if n == 0 || (only_full && n <= cap) {
                continue;
            }
            s.column
                .write_back(cf_of(db, &s.cf)?, &mut batch, &mut buf)?;
            if only_full {
                s.column.evict(cap);
            }
        }
        if !batch.is_empty() {
            db.write_opt(batch, &self.write_opts).map_err(db_err)?;
        }
        Ok(())
    }

    /// End of a batch of records: write back and empty value caches over their size.
    #[inline]
    pub(crate) fn end_batch(&mut self) -> Result<()> {
        if self.cache_entries == 0 {
            return Ok(());
        }
        let cap = self.cache_entries;
        if self.states.iter().any(|s| s.column.cached() > cap) {
            self.write_back(true)?;
        }
        Ok(())
    }

    // -- list state ---------------------------------------------------------

    pub(crate) fn list_get<T: Data>(&self, id: usize, kg: u16, key: &K) -> Result<Vec<T>> {
        let cf = &self.state(id)?.cf;
        Ok(self.db_get::<Vec<T>>(cf, kg, key)?.unwrap_or_default())
    }

    pub(crate) fn list_add<T: Data>(
        &mut self,
        id: usize,
        kg: u16,
        key: &K,
        value: T,
    ) -> Result<()> {
        // A merge operand, one element long (see `append_lists`): no read.
        let db = db_of(&self.db)?;
        let cf = cf_of(db, &self.state(id)?.cf)?;
        let mut buf = self.buf.borrow_mut();
        encode_key(&mut buf, kg, key)?;
        let mut val = self.vbuf.borrow_mut();
        val.clear();
        put_varint(&mut val, 1);
        append(&mut val, &value)?;
        db.merge_cf_opt(cf, &*buf, &*val, &self.write_opts)
            .map_err(db_err)
    }

    pub(crate) fn list_put<T: Data>(
        &mut self,
        id: usize,
        kg: u16,
        key: &K,
        values: &[T],
    ) -> Result<()> {
        let cf = &self.state(id)?.cf;
        self.db_put(cf, kg, key, (!values.is_empty()).then_some(values))
    }

    // -- map state ----------------------------------------------------------

    fn map_key<UK: Serialize>(buf: &mut Vec<u8>, kg: u16, key: &K, user_key: &UK) -> Result<()> {
        encode_map_prefix(buf, kg, key)?;
        append(buf, user_key)
    }

    pub(crate) fn map_get<UK: Key, UV: Data>(
        &self,
        id: usize,
        kg: u16,
        key: &K,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let db = db_of(&self.db)?;
        let cf = cf_of(db, &self.state(id)?.cf)?;
        let mut buf = self.buf.borrow_mut();
        Self::map_key(&mut buf, kg, key, user_key)?;
        match db
            .get_pinned_cf_opt(cf, &*buf, &self.read_opts)
            .map_err(db_err)?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn map_put<UK: Key, UV: Data>(
        &mut self,
        id: usize,
        kg: u16,
        key: &K,
        user_key: &UK,
        value: Option<&UV>,
    ) -> Result<()> {
        let db = db_of(&self.db)?;
        let cf = cf_of(db, &self.state(id)?.cf)?;
        let mut buf = self.buf.borrow_mut();
        Self::map_key(&mut buf, kg, key, user_key)?;
        match value {
            Some(v) => {
                let mut val = Vec::new();
                append(&mut val, v)?;
                db.put_cf_opt(cf, &*buf, &val, &self.write_opts)
            }
            None => db.delete_cf_opt(cf, &*buf, &self.write_opts),
        }
        .map_err(db_err)
    }

    /// Calls `f(user key bytes, value bytes, full key)` for every entry of `key`'s map.
    fn scan_map(
        &self,
        id: usize,
        kg: u16,
        key: &K,
        mut f: impl FnMut(&[u8], &[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let db = db_of(&self.db)?;
        let cf = cf_of(db, &self.state(id)?.cf)?;
        let mut prefix = Vec::new();
        encode_map_prefix(&mut prefix, kg, key)?;
        let mut opts = ReadOptions::default();
        if let Some(end) = prefix_end(&prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let mut it = db.raw_iterator_cf_opt(cf, opts);
        it.seek(&prefix);
        while it.valid() {
            match (it.key(), it.value()) {
                (Some(k), Some(v)) if k.starts_with(&prefix) => f(&k[prefix.len()..], v, k)?,
                _ => break,
            }
            it.next();
        }
        it.status().map_err(db_err)
    }

    pub(crate) fn map_entries<UK: Key, UV: Data>(
        &self,
        id: usize,
        kg: u16,
        key: &K,
    ) -> Result<Vec<(UK, UV)>> {
        let mut out = Vec::new();
        self.scan_map(id, kg, key, |uk, uv, _| {
            out.push((decode(uk)?, decode(uv)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every `(key, user key)` of map state `id`, over all key groups.
    pub(crate) fn map_all_user_keys<UK: Key>(&self, id: usize) -> Result<Vec<(K, UK)>> {
        let db = db_of(&self.db)?;
        let cf = cf_of(db, &self.state(id)?.cf)?;
        let mut it = db.raw_iterator_cf(cf);
        it.seek_to_first();
        let mut out = Vec::new();
        while it.valid() {
            if let Some(k) = it.key() {
                let malformed =
                    || Error::StateBackend("malformed map-state key while listing timers".into());
                let rest = k.get(2..).ok_or_else(malformed)?;
                let (len, used) = get_varint(rest).ok_or_else(malformed)?;
                let key = rest.get(used..used + len as usize).ok_or_else(malformed)?;
                let uk = &rest[used + len as usize..];
                out.push((decode(key)?, decode(uk)?));
            }
            it.next();
        }
        it.status().map_err(db_err)?;
        Ok(out)
    }

    pub(crate) fn map_clear(&mut self, id: usize, kg: u16, key: &K) -> Result<()> {
        let db = db_of(&self.db)?;
        let cf = cf_of(db, &self.state(id)?.cf)?;
        let mut batch = WriteBatch::default();
        self.scan_map(id, kg, key, |_, _, full| {
            batch.delete_cf(cf, full);
            Ok(())
        })?;
        db.write_opt(batch, &self.write_opts).map_err(db_err)
    }

    // -- snapshots ------------------------------------------------------------

    /// Number of entries (exact: iterates; for tests and tools).
    pub(crate) fn num_entries(&self) -> usize {
        let Ok(db) = db_of(&self.db) else { return 0 };
        let mut n = 0;
        for s in &self.states {
            let pending = s.column.cached();
            let Ok(cf) = cf_of(db, &s.cf) else { continue };
            let mut it = db.raw_iterator_cf(cf);
            it.seek_to_first();
            while it.valid() {
                n += 1;
                it.next();
            }
            n += pending;
        }
        n
    }

    /// The whole state in canonical form (synchronously).
    pub(crate) fn canonical_snapshot(&mut self) -> Result<KeyedStateSnapshot> {
        self.write_back(false)?;
        let db = db_of(&self.db)?;
        let states: Vec<(String, String, StateKind)> = self
            .states
            .iter()
            .map(|s| (s.name.clone(), s.cf.clone(), s.kind))
            .collect();
        canonical_from_db(db, &states, self.range)
    }

    /// Synchronous part of a snapshot: write back the caches and create a
    /// RocksDB checkpoint (flush + hard links) in the working directory.
    pub(crate) fn snapshot_async(&mut self, checkpoint_id: u64) -> Result<RocksPending> {
        self.write_back(false)?;
        let db = db_of(&self.db)?;
        let dir = self.root.join(format!("chk-{checkpoint_id}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io("cannot remove an old local checkpoint", &dir, e))?;
        }
        rocksdb::checkpoint::Checkpoint::new(db)
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(db_err)?;
        Ok(RocksPending {
            dir,
            checkpoint_id,
            instance: self.instance.clone(),
            range: self.range,
            states: self
                .states
                .iter()
                .map(|s| (s.name.clone(), s.kind))
                .collect(),
            incremental: self.incremental,
            tracker: self.tracker.clone(),
        })
    }

    pub(crate) fn notify_complete(&mut self, checkpoint_id: u64) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(files) = t.pending.remove(&checkpoint_id) {
            t.confirmed = files;
        }
        t.pending.retain(|id, _| *id > checkpoint_id);
    }

    pub(crate) fn notify_aborted(&mut self, checkpoint_id: u64) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.pending.remove(&checkpoint_id);
    }

    // -- restore --------------------------------------------------------------

    fn registered(&self, name: &str, kind: StateKind) -> Result<&Registered<K>> {
        let s = self.states.iter().find(|s| s.name == name).ok_or_else(|| {
            Error::User(format!(
                "restored state '{name}' was not registered by the operator"
            ))
        })?;
        if s.kind != kind {
            return Err(Error::User(format!(
                "restored state '{name}' is a {kind:?} state but the operator registers a {:?} state",
                s.kind
            )));
        }
        Ok(s)
    }

    /// Loads the key groups of this range from a canonical snapshot.
    pub(crate) fn restore_canonical(&mut self, snap: &KeyedStateSnapshot) -> Result<()> {
        let db = db_of(&self.db)?;
        let mut buf = Vec::new();
        for (name, st) in &snap.states {
            if st.key_groups.is_empty() {
                // Nothing to restore (e.g. the `_timers` of an operator
                // that never set a timer): not checked against the operator.
                continue;
            }
            let s = self.registered(name, st.kind)?;
            let cf = cf_of(db, &s.cf)?;
            let mut batch = WriteBatch::default();
            for (kg, bytes) in st.key_groups.range(self.range.start..=self.range.end) {
                s.column
                    .restore_canonical(cf, *kg, bytes, &mut batch, &mut buf)?;
                if batch.size_in_bytes() > 4 << 20 {
                    db.write_opt(std::mem::take(&mut batch), &self.write_opts)
                        .map_err(db_err)?;
                }
            }
            db.write_opt(batch, &self.write_opts).map_err(db_err)?;
        }
        Ok(())
    }

    /// Copies the key groups of this range from an old instance's files.
    pub(crate) fn restore_rocks(&mut self, job_dir: &Path, h: &RocksStateHandle) -> Result<()> {
        self.restores += 1;
        if h.key_groups == self.range && self.is_empty() {
            return self.restore_whole(job_dir, h);
        }
        let tmp = self.root.join(format!("restore-{}", self.restores));
        let old = download(job_dir, h, &tmp)?;
        let result = (|| -> Result<()> {
            let db = db_of(&self.db)?;
            let lo = self.range.start.max(h.key_groups.start);
            let hi = self.range.end.min(h.key_groups.end);
            for (name, kind) in &h.states {
                let s = match self.registered(name, *kind) {
                    Ok(s) => s,
                    Err(e) => {
                        // A state the operator does not register is only
                        // fine when it holds nothing here (`_timers` of an
                        // operator that never set a timer).
                        let mut any = false;
                        scan_range(&old, &cf_name(name), lo, hi, |_, _| {
                            any = true;
                            Ok(())
                        })?;
                        if any {
                            return Err(e);
                        }
                        continue;
                    }
                };
                let cf = cf_of(db, &s.cf)?;
                let mut batch = WriteBatch::default();
                scan_range(&old, &cf_name(name), lo, hi, |k, v| {
                    batch.put_cf(cf, k, v);
                    if batch.size_in_bytes() > 4 << 20 {
                        db.write_opt(std::mem::take(&mut batch), &self.write_opts)
                            .map_err(db_err)?;
                    }
                    Ok(())
                })?;
                db.write_opt(batch, &self.write_opts).map_err(db_err)?;
            }
            Ok(())
        })();
        drop(old);
        let _ = std::fs::remove_dir_all(&tmp);
        result
    }
}

impl<K: Key> RocksKeyedStateBackend<K> {
    /// Whether the instance holds nothing yet (nothing written, nothing cached).
    fn is_empty(&self) -> bool {
        let Ok(db) = db_of(&self.db) else {
            return false;
        };
        self.states.iter().all(|s| {
            s.column.cached() == 0
                && cf_of(db, &s.cf).is_ok_and(|cf| {
                    let mut it = db.raw_iterator_cf(cf);
                    it.seek_to_first();
                    !it.valid()
                })
        })
    }

    /// Restore without rescaling into an empty instance: the old instance's
    /// files become this instance's database (opened read-write where they
    /// were downloaded), instead of copying every entry into a new one. The
    /// files are the old instance's exactly, so nothing outside this
    /// subtask's key groups comes with them. Later checkpoints upload under
    /// this instance's name, so they never share files with the restored
    /// checkpoint.
    fn restore_whole(&mut self, job_dir: &Path, h: &RocksStateHandle) -> Result<()> {
        let dir = self.root.join(format!("db-{}", self.restores));
        drop(download(job_dir, h, &dir)?);
        let opts = self.memory.live_options();
        let mut names: Vec<String> = self.states.iter().map(|s| s.cf.clone()).collect();
        for (name, _) in &h.states {
            let cf = cf_name(name);
            if !names.contains(&cf) {
                names.push(cf);
            }
        }
        let cfs = names
            .iter()
            .map(|n| rocksdb::ColumnFamilyDescriptor::new(n, self.memory.live_options()));
        let db = DB::open_cf_descriptors(&opts, &dir, cfs).map_err(db_err)?;
        // Close the empty database only once the restored one is open.
        drop(self.db.replace(db));
        let _ = std::fs::remove_dir_all(self.root.join("db"));
        Ok(())
    }
}

impl<K> Drop for RocksKeyedStateBackend<K> {
    fn drop(&mut self) {
        // Close the database before deleting its directory.
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Copies an instance's files into `dir` (checking size and CRC-32) and opens it read-only.
fn download(job_dir: &Path, h: &RocksStateHandle, dir: &Path) -> Result<DB> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)
            .map_err(|e| Error::io("cannot clear a restore directory", dir, e))?;
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io("cannot create a restore directory", dir, e))?;
    for f in &h.files {
        if f.local.contains('/') || f.local.contains("..") {
            return Err(Error::CorruptCheckpoint {
                path: job_dir.join(&f.path),
                reason: format!("bad RocksDB file name '{}'", f.local),
            });
        }
        let src = job_dir.join(&f.path);
        // SST files are immutable: a local checkpoint's are hard-linked.
        let (size, crc) = if f.local.ends_with(".sst") {
            link_or_copy_crc(&src, &dir.join(&f.local))?
        } else {
            copy_crc(&src, &dir.join(&f.local))?
        };
        if size != f.size || crc != f.crc32 {
            return Err(Error::CorruptCheckpoint {
                path: src,
                reason: format!(
                    "checksum mismatch ({size} bytes, CRC-32 {crc:08x}; recorded {} bytes, {:08x})",
                    f.size, f.crc32
                ),
            });
        }
    }
    let mut names: Vec<String> = h.states.iter().map(|(n, _)| cf_name(n)).collect();
    names.push("default".into());
    open_read_only(dir, names)
}

/// Opens the database files in `dir` read-only, every column family with
/// [`db_options`] (its merge operator resolves list appends).
fn open_read_only(dir: &Path, names: Vec<String>) -> Result<DB> {
    let cfs = names.into_iter().map(|n| (n, db_options()));
    DB::open_cf_with_opts_for_read_only(&db_options(), dir, cfs, false).map_err(db_err)
}

/// Calls `f(key, value)` for every entry of column family `cf` in key groups `lo..=hi`.
fn scan_range(
    db: &DB,
    cf: &str,
    lo: u16,
    hi: u16,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let cf = cf_of(db, cf)?;
    let mut opts = ReadOptions::default();
    opts.set_iterate_upper_bound((u32::from(hi) + 1).to_be_bytes()[2..].to_vec());
    if hi == u16::MAX {
        opts = ReadOptions::default();
    }
    opts.fill_cache(false);
    let mut it = db.raw_iterator_cf_opt(cf, opts);
    it.seek(lo.to_be_bytes());
    while it.valid() {
        match (it.key(), it.value()) {
            (Some(k), Some(v)) => {
                if k.len() < 2 || u16::from_be_bytes([k[0], k[1]]) > hi {
                    break;
                }
                f(k, v)?;
            }
            _ => break,
        }
        it.next();
    }
    it.status().map_err(db_err)
}

/// The canonical form of the key groups `range` of the states of `db`
/// (`(name, column family, kind)`), built from the stored bytes without
/// knowing the types: postcard encodes a `Vec<(K, V)>` as a varint length
/// followed by the encoded pairs, and a map as a varint length followed by
/// the encoded entries, which is how the keys and values are stored here.
fn canonical_from_db(
    db: &DB,
    states: &[(String, String, StateKind)],
    range: KeyGroupRange,
) -> Result<KeyedStateSnapshot> {
    let mut out = KeyedStateSnapshot::default();
    for (name, cf, kind) in states {
        let mut groups: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        // Per key group: number of keys and their encoded entries.
        let mut cur: Option<(u16, u64, Vec<u8>)> = None;
        // Map state: the current key's bytes, its entry count and entries.
        let mut map_key: Option<(Vec<u8>, u64, Vec<u8>)> = None;
        let finish_key = |cur: &mut Option<(u16, u64, Vec<u8>)>,
                          mk: &mut Option<(Vec<u8>, u64, Vec<u8>)>| {
            if let (Some((_, n, body)), Some((k, m, entries))) = (cur.as_mut(), mk.take()) {
                body.extend_from_slice(&k);
                put_varint(body, m);
                body.extend_from_slice(&entries);
                *n += 1;
            }
        };
        let finish_group = |cur: &mut Option<(u16, u64, Vec<u8>)>,
                            groups: &mut BTreeMap<u16, Vec<u8>>| {
            if let Some((g, n, body)) = cur.take() {
                let mut bytes = Vec::with_capacity(body.len() + 10);
                put_varint(&mut bytes, n);
                bytes.extend_from_slice(&body);
                groups.insert(g, bytes);
            }
        };
        scan_range(db, cf, range.start, range.end, |k, v| {
            let g = u16::from_be_bytes([k[0], k[1]]);
            if cur.as_ref().is_some_and(|c| c.0 != g) {
                finish_key(&mut cur, &mut map_key);
                finish_group(&mut cur, &mut groups);
            }
            if cur.is_none() {
                cur = Some((g, 0, Vec::new()));
            }
            let rest = &k[2..];
            match kind {
                StateKind::Value | StateKind::List => {
                    if let Some((_, n, body)) = cur.as_mut() {
                        body.extend_from_slice(rest);
                        body.extend_from_slice(v);
                        *n += 1;
                    }
                }
                StateKind::Map => {
                    let (len, used) = get_varint(rest).ok_or_else(|| {
                        Error::StateBackend(format!("malformed map-state key in '{name}'"))
                    })?;
                    let len = len as usize;
                    let Some(key) = rest.get(used..used + len) else {
                        return Err(Error::StateBackend(format!(
                            "malformed map-state key in '{name}'"
                        )));
                    };
                    let uk = &rest[used + len..];
                    if map_key.as_ref().is_some_and(|m| m.0 != key) {
                        finish_key(&mut cur, &mut map_key);
                    }
                    let m = map_key.get_or_insert_with(|| (key.to_vec(), 0, Vec::new()));
                    m.1 += 1;
                    m.2.extend_from_slice(uk);
                    m.2.extend_from_slice(v);
                }
            }
            Ok(())
        })?;
        finish_key(&mut cur, &mut map_key);
        finish_group(&mut cur, &mut groups);
        out.states.insert(
            name.clone(),
            StateSnapshot {
                kind: *kind,
                key_groups: groups,
            },
        );
    }
    Ok(out)
}

/// The canonical form of the key groups of `range` held by an old instance
/// (a RocksDB checkpoint restored on the heap backend).
pub(crate) fn to_canonical(
    job_dir: &Path,
    h: &RocksStateHandle,
    range: KeyGroupRange,
) -> Result<KeyedStateSnapshot> {
    let tmp = std::env::temp_dir().join(format!(
        "weir-rocksdb-{}-restore-{}",
        std::process::id(),
        crate::checkpoint::storage::random_hex12()
    ));
    let result = download(job_dir, h, &tmp).and_then(|db| {
        let lo = range.start.max(h.key_groups.start);
        let hi = range.end.min(h.key_groups.end);
        let states: Vec<(String, String, StateKind)> = h
            .states
            .iter()
            .map(|(n, k)| (n.clone(), cf_name(n), *k))
            .collect();
        canonical_from_db(&db, &states, KeyGroupRange { start: lo, end: hi })
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

// ---------------------------------------------------------------------------
// The asynchronous part.

/// A RocksDB checkpoint in the working directory, waiting to be uploaded.
pub struct RocksPending {
    dir: PathBuf,
    checkpoint_id: u64,
    instance: String,
    range: KeyGroupRange,
    states: Vec<(String, StateKind)>,
    incremental: bool,
    tracker: Arc<Mutex<Tracker>>,
}

impl RocksPending {
    /// Copies the checkpoint's files to storage (see the module doc).
    pub(crate) fn upload(self, target: &UploadTarget<'_>) -> Result<UploadedKeyed> {
        debug_assert_eq!(self.checkpoint_id, target.checkpoint_id);
        let confirmed = if self.incremental {
            self.tracker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .confirmed
                .clone()
        } else {
            HashMap::new()
        };
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io("cannot read a local RocksDB checkpoint", &self.dir, e))?
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut files = Vec::with_capacity(names.len());
        let mut shared = HashMap::new();
        let mut uploaded = 0u64;
        for name in names {
            let src = self.dir.join(&name);
            let is_sst = name.ends_with(".sst");
            let file = if is_sst && self.incremental {
                match confirmed.get(&name) {
                    Some(f) => f.clone(),
                    None => {
                        let rel = format!("shared/{}-{name}", self.instance);
                        let existed = target.storage.exists(&rel)?;
                        let (size, crc32) = target.storage.copy_in(&src, &rel, true)?;
                        if !existed {
                            uploaded += size;
                            crate::failpoint::hit("rocksdb-upload-file")?;
                        }
                        StateFile {
                            path: rel,
                            local: name.clone(),
                            size,
                            crc32,
                        }
                    }
                }
            } else {
                let rel = format!("chk-{}/{}-{name}", target.checkpoint_id, self.instance);
                let (size, crc32) = target.storage.copy_in(&src, &rel, false)?;
                uploaded += size;
                crate::failpoint::hit("rocksdb-upload-file")?;
                StateFile {
                    path: rel,
                    local: name.clone(),
                    size,
                    crc32,
                }
            };
            if is_sst && self.incremental {
                shared.insert(name, file.clone());
            }
            files.push(file);
        }
        self.tracker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pending
            .insert(target.checkpoint_id, shared);
        let handle = RocksStateHandle {
            instance: self.instance.clone(),
            key_groups: self.range,
            states: self.states.clone(),
            files,
        };
        Ok(UploadedKeyed {
            files: handle.files.iter().map(|f| f.path.clone()).collect(),
            uploaded,
            full_size: handle.size(),
            handle: KeyedStateHandle::Rocks(handle),
        })
    }
}

impl RocksPending {
    /// The canonical form of the local checkpoint's key groups (savepoints).
    pub(crate) fn canonical(self) -> Result<KeyedStateSnapshot> {
        let mut names: Vec<String> = self.states.iter().map(|(n, _)| cf_name(n)).collect();
        names.push("default".into());
        let db = open_read_only(&self.dir, names)?;
        let states: Vec<(String, String, StateKind)> = self
            .states
            .iter()
            .map(|(n, k)| (n.clone(), cf_name(n), *k))
            .collect();
        let out = canonical_from_db(&db, &states, self.range);
        drop(db);
        out
    }
}

impl Drop for RocksPending {
    fn drop(&mut self) {
        // The local checkpoint (hard links) is not needed once uploaded, or failed.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_prefix_ends() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Some((v, b.len())));
            // The same bytes as postcard's usize encoding.
            if v <= usize::MAX as u64 {
                assert_eq!(postcard::to_allocvec(&(v as usize)).unwrap(), b);
            }
        }
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    fn config(dir: &Path, cache: usize, managed: bool) -> crate::state::StateBackendConfig {
        crate::state::StateBackendConfig {
            kind: crate::state::BackendKind::RocksDb,
            incremental: true,
            local_dir: Some(dir.to_path_buf()),
            value_cache_entries: cache,
            memory: crate::state::RocksMemoryConfig {
                managed,
                ..Default::default()
            },
        }
    }

    fn open(
        cfg: &crate::state::StateBackendConfig,
        job: &str,
        subtask: usize,
    ) -> RocksKeyedStateBackend<u64> {
        RocksKeyedStateBackend::open(&BackendScope {
            config: cfg,
            operator: "op",
            subtask,
            key_groups: KeyGroupRange::for_subtask(128, 2, subtask),
            max_parallelism: 128,
            job_id: job,
            parallelism: 2,
        })
        .unwrap()
    }

    #[test]
    fn the_instances_of_a_slot_share_one_budget() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 16, true);
        let a = open(&cfg, "job-a", 0);
        let b = open(&cfg, "job-a", 0);
        let other_slot = open(&cfg, "job-a", 1);
        let other_job = open(&cfg, "job-b", 0);
        assert!(Arc::ptr_eq(&a.memory, &b.memory));
        assert!(!Arc::ptr_eq(&a.memory, &other_slot.memory));
        assert!(!Arc::ptr_eq(&a.memory, &other_job.memory));
        // The default budget: 512 MiB over 2 slots, memtables charged to it.
        assert_eq!(a.memory.budget, 256 << 20);
        let mut a = a;
        let v = a.register_value::<u64>("v").unwrap();
        for k in 0..1000u64 {
            a.value_put(v, 0, &k, Some(k)).unwrap();
        }
        a.write_back(false).unwrap();
        assert!(
            a.memory.cache.get_usage() > 0,
            "memtable memory is charged to the slot's cache"
        );
        let unmanaged = config(dir.path(), 16, false);
        let c = open(&unmanaged, "job-a", 0);
        let d = open(&unmanaged, "job-a", 0);
        assert!(!Arc::ptr_eq(&c.memory, &d.memory));
        assert_eq!(c.memory.budget, 64 << 20);
    }

    #[test]
    fn list_adds_are_merges_that_read_back_as_the_whole_list() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 16, true);
        let mut b = open(&cfg, "job-l", 0);
        let l = b.register_list::<String>("l").unwrap();
        let words = |r: std::ops::Range<u32>| r.map(|i| format!("w{i}")).collect::<Vec<_>>();
        for w in words(0..300) {
            b.list_add(l, 3, &7, w).unwrap();
        }
        assert_eq!(b.list_get::<String>(l, 3, &7).unwrap(), words(0..300));
        // A put replaces, later adds merge onto it; flushed files too.
        b.list_put(l, 3, &7, &words(5..7)).unwrap();
        db_of(&b.db)
            .unwrap()
            .flush_cf(cf_of(db_of(&b.db).unwrap(), "s:l").unwrap())
            .unwrap();
        b.list_add(l, 3, &7, "x".to_string()).unwrap();
        let mut want = words(5..7);
        want.push("x".into());
        assert_eq!(b.list_get::<String>(l, 3, &7).unwrap(), want);
        assert_eq!(
            b.list_get::<String>(l, 3, &8).unwrap(),
            Vec::<String>::new()
        );
        // Snapshots see the merged lists: canonical form, and RocksDB files
        // opened read-only (as restores and savepoints do).
        b.list_add(l, 4, &9, "y".to_string()).unwrap();
        let snap = b.canonical_snapshot().unwrap();
        let mut c = open(&cfg, "job-l", 1);
        c.register_list::<String>("l").unwrap();
        c.range = b.range;
        c.restore_canonical(&snap).unwrap();
        assert_eq!(c.list_get::<String>(l, 3, &7).unwrap(), want);
        assert_eq!(
            c.list_get::<String>(l, 4, &9).unwrap(),
            vec!["y".to_string()]
        );
        let pending = b.snapshot_async(1).unwrap();
        let canon = pending.canonical().unwrap();
        assert_eq!(canon, snap);
    }

    #[test]
    fn appended_lists_are_the_postcard_encoding_of_the_concatenation() {
        let a: Vec<u64> = (0..200).collect();
        let enc = |v: &[u64]| postcard::to_allocvec(v).unwrap();
        let mut count = 0u64;
        let mut body = Vec::new();
        for part in [enc(&a[..3]), enc(&a[3..150]), enc(&a[150..])] {
            let (n, used) = get_varint(&part).unwrap();
            count += n;
            body.extend_from_slice(&part[used..]);
        }
        let mut joined = Vec::new();
        put_varint(&mut joined, count);
        joined.extend(body);
        assert_eq!(joined, enc(&a));
        assert_eq!(get_varint(&[0x80]), None, "a truncated count is no list");
    }

    #[test]
    fn a_full_value_cache_keeps_its_hot_keys_and_loses_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 100, true);
        let mut b = open(&cfg, "job-e", 0);
        let v = b.register_value::<u64>("v").unwrap();
        let bump = |b: &mut RocksKeyedStateBackend<u64>, k: u64| {
            b.value_modify(v, (k % 7) as u16, &k, || 0u64, |x| *x += 1)
                .unwrap();
        };
        // Ten hot keys used twice, then cold keys until the cache is full.
        for _ in 0..2 {
            for k in 0..10 {
                bump(&mut b, k);
            }
        }
        for k in 1000..1200 {
            bump(&mut b, k);
        }
        b.end_batch().unwrap();
        let mut kept: Vec<u64> = b
            .value_column::<u64>(v)
            .unwrap()
            .cache
            .keys()
            .copied()
            .collect();
        kept.sort();
        assert_eq!(kept, (0..10).collect::<Vec<_>>());
        // Every write reached RocksDB: the evicted keys read back right.
        for k in 1000..1200 {
            assert_eq!(b.value_get::<u64>(v, (k % 7) as u16, &k).unwrap(), Some(1));
        }
        for k in 0..10 {
            assert_eq!(b.value_get::<u64>(v, (k % 7) as u16, &k).unwrap(), Some(2));
        }
        // Kept entries must be used twice again to stay: a second sweep
        // with the hot keys untouched empties the cache of them.
        for k in 2000..2200 {
            bump(&mut b, k);
        }
        b.end_batch().unwrap();
        assert!(b.value_column::<u64>(v).unwrap().cache.is_empty());
        // More hot keys than half the cache: everything goes.
        for _ in 0..2 {
            for k in 3000..3060 {
                bump(&mut b, k);
            }
        }
        for k in 4000..4050 {
            bump(&mut b, k);
        }
        b.end_batch().unwrap();
        assert!(b.value_column::<u64>(v).unwrap().cache.is_empty());
        assert_eq!(
            b.value_get::<u64>(v, (3001 % 7) as u16, &3001).unwrap(),
            Some(2)
        );
    }

    #[test]
    fn prefetch_loads_present_and_absent_keys_of_read_states_only() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, true);
        let mut b = open(&cfg, "job-p", 0);
        let v = b.register_value::<u64>("v").unwrap();
        let w = b.register_value::<u64>("w").unwrap();
        for k in 0..100u64 {
            b.value_put(v, (k % 3) as u16, &k, Some(k * 10)).unwrap();
            b.value_put(w, (k % 3) as u16, &k, Some(k)).unwrap();
        }
        b.write_back(false).unwrap();
        for s in b.states.iter_mut() {
            s.column.drop_cache();
        }
        let cached = |b: &RocksKeyedStateBackend<u64>, id: usize| -> Vec<(u64, Option<u64>)> {
            let mut e: Vec<_> = b
                .value_column::<u64>(id)
                .unwrap()
                .cache
                .iter()
                .map(|(k, s)| (*k, s.value))
                .collect();
            e.sort();
            e
        };
        // Nothing read yet: nothing is prefetched.
        let keys: Vec<u64> = (90..110).chain([95, 105]).collect();
        let groups: Vec<u16> = keys.iter().map(|k| (k % 3) as u16).collect();
        b.prefetch(&keys, &groups).unwrap();
        assert!(cached(&b, v).is_empty() && cached(&b, w).is_empty());
        // A batch reads state v: the next batch's keys are read for v only.
        b.value_modify(v, 0, &0, || 0u64, |x| *x += 1).unwrap();
        b.prefetch(&keys, &groups).unwrap();
        let got = cached(&b, v);
        let mut want: Vec<(u64, Option<u64>)> = vec![(0, Some(1))];
        want.extend((90..100).map(|k| (k, Some(k * 10))));
        want.extend((100..110).map(|k| (k, None)));
        assert_eq!(got, want);
        assert!(cached(&b, w).is_empty());
        // Prefetched slots are clean: only the modified key is written back.
        let dirty = b
            .value_column::<u64>(v)
            .unwrap()
            .cache
            .values()
            .filter(|s| s.dirty)
            .count();
        assert_eq!(dirty, 1);
        // The values read through the cache are the stored ones.
        assert!(!b.value_modify(v, 0, &99, || 0u64, |x| *x += 1).unwrap());
        assert_eq!(b.value_get::<u64>(v, 0, &99).unwrap(), Some(991));
        assert!(b.value_modify(v, 1, &103, || 7u64, |x| *x += 1).unwrap());
        assert_eq!(b.value_get::<u64>(v, 1, &103).unwrap(), Some(8));
        // With the value cache off nothing is prefetched.
        let off = config(dir.path(), 0, true);
        let mut c = open(&off, "job-p", 1);
        let v = c.register_value::<u64>("v").unwrap();
        c.value_modify(v, 0, &0, || 0u64, |x| *x += 1).unwrap();
        c.prefetch(&keys, &groups).unwrap();
        assert!(cached(&c, v).is_empty());
    }
}
