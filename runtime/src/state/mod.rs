//! Keyed state and operator state.
//!
//! # Keyed state
//! A keyed operator (after `key_by`) registers named states through
//! descriptors when it opens: [`ValueStateDescriptor`], [`ListStateDescriptor`],
//! [`MapStateDescriptor`]. Registration returns a small, copyable handle
//! ([`ValueState`], [`ListState`], [`MapState`]); every access goes through the
//! [`KeyedContext`] the runtime passes with each record, so the value read or
//! written is always the **current key's**. Handles hold no data and no
//! borrow: state lives in the subtask's [`KeyedStateBackend`].
//!
//! # Backends (`state.backend.type`)
//! [`KeyedStateBackend`] is an enum over the backends; operator code only sees
//! the handles, so a backend changes no operator.
//! - `hashmap` ([`heap`], the default): typed hash maps per key group in
//!   memory, copy-on-write snapshots.
//! - `rocksdb` (`rocks`, cargo feature `rocksdb`): one RocksDB instance per
//!   stateful subtask on local disk, a column family per state, keys prefixed
//!   by their key group (big-endian `u16`) so key-group ranges are contiguous
//!   key ranges; snapshots are RocksDB checkpoints whose SST files are uploaded
//!   asynchronously, in full or incrementally.
//!
//! # Snapshots (docs/design.md invariant 2)
//! A snapshot has two parts. [`KeyedStateBackend::snapshot_async`] is the
//! synchronous part, on the processing loop: it must be cheap (heap: freeze the
//! per-key-group maps, O(key groups); RocksDB: flush and hard-link a RocksDB
//! checkpoint). It returns a [`PendingKeyedSnapshot`] that the subtask's
//! upload task turns into a [`KeyedStateHandle`] off the loop (heap: encode
//! the canonical form; RocksDB: copy the SST files to checkpoint storage).
//!
//! # Canonical form and restore
//! [`KeyedStateSnapshot`] (per state, per key group, postcard `Vec<(K, V)>`)
//! is backend-independent. A restore ([`KeyedStateBackend::restore_from`])
//! takes the handles of every old subtask and keeps the key groups of this
//! subtask's range, whatever the old parallelism (rescaling): the heap backend
//! reads canonical snapshots and converts RocksDB files to the canonical form;
//! the RocksDB backend ingests canonical snapshots and copies the key-group
//! key ranges of old RocksDB instances. So a checkpoint of either backend
//! restores on the other.
//!
//! # Savepoints
//! A savepoint's keyed state is always canonical
//! ([`PendingKeyedSnapshot::canonical`]): the heap backend encodes its frozen
//! maps, the RocksDB backend reads the key groups of its local RocksDB
//! checkpoint (taken by the same synchronous part as for a checkpoint) into
//! the canonical form off the processing loop. No SST file is uploaded.
//!
//! # Operator state
//! Non-keyed state of a subtask (a source's split positions) is an
//! [`OperatorStateStore`]: named lists of serialized values, written by
//! the operator when a snapshot is taken and handed back when it is restored.

pub mod heap;
#[cfg(feature = "rocksdb")]
pub mod rocks;

use std::marker::PhantomData;
use std::path::PathBuf;

pub use crate::snapshot::{
    KeyedStateHandle, KeyedStateSnapshot, OperatorStateStore, RestoredKeyed, RocksStateHandle,
    StateFile, StateKind, StateSnapshot,
};

use crate::config::{options, Conf};
use crate::keygroup::{key_group_for, KeyGroupRange};
use crate::record::{Data, Key};
use crate::Result;

pub use heap::HeapKeyedStateBackend;
#[cfg(feature = "rocksdb")]
pub use rocks::RocksKeyedStateBackend;

/// Which keyed state backend a job uses (`state.backend.type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// `hashmap`: in memory.
    #[default]
    Heap,
    /// `rocksdb`: RocksDB on local disk (cargo feature `rocksdb`).
    RocksDb,
}

/// The state backend settings of a job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateBackendConfig {
    /// The backend.
    pub kind: BackendKind,
    /// `execution.checkpointing.incremental`.
    pub incremental: bool,
    /// `state.backend.rocksdb.localdir` (`None`: the system's temporary directory).
    pub local_dir: Option<PathBuf>,
    /// `state.backend.rocksdb.value-cache.entries`.
    pub value_cache_entries: usize,
    /// `state.backend.rocksdb.memory.*` and `taskmanager.memory.managed.size`.
    pub memory: RocksMemoryConfig,
}

/// How much memory RocksDB may use (`state.backend.rocksdb.memory.*`):
/// a budget per slot, shared by the RocksDB instances of the slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RocksMemoryConfig {
    /// `state.backend.rocksdb.memory.managed`.
    pub managed: bool,
    /// `taskmanager.memory.managed.size`: the process's budget, divided
    /// among the slots.
    pub managed_size: u64,
    /// `state.backend.rocksdb.memory.fixed-per-slot` (0: a share of `managed_size`).
    pub fixed_per_slot: u64,
    /// `state.backend.rocksdb.memory.write-buffer-ratio`.
    pub write_buffer_ratio: f64,
    /// `state.backend.rocksdb.memory.partitioned-index-filters`.
    pub partitioned_index_filters: bool,
}

impl Default for RocksMemoryConfig {
    /// The defaults of the options.
    fn default() -> Self {
        RocksMemoryConfig::from_conf(&Conf::defaults())
    }
}

impl RocksMemoryConfig {
    /// Reads the options.
    pub fn from_conf(conf: &Conf) -> Self {
        RocksMemoryConfig {
            managed: conf.get(&options::ROCKSDB_MEMORY_MANAGED),
            managed_size: conf.get(&options::MANAGED_MEMORY_SIZE).0,
            fixed_per_slot: conf.get(&options::ROCKSDB_MEMORY_FIXED_PER_SLOT).0,
            write_buffer_ratio: conf.get(&options::ROCKSDB_WRITE_BUFFER_RATIO),
            partitioned_index_filters: conf.get(&options::ROCKSDB_PARTITIONED_INDEX_FILTERS),
        }
    }

    /// The budget of one slot when there are `slots` (at least 8 MiB).
    pub fn per_slot(&self, slots: usize) -> u64 {
        let b = if self.fixed_per_slot > 0 {
            self.fixed_per_slot
        } else {
            self.managed_size / slots.max(1) as u64
        };
        b.max(8 << 20)
    }
}

impl StateBackendConfig {
    /// Reads the `state.backend.*` options.
    pub fn from_conf(conf: &Conf) -> Self {
        let dir = conf.get(&options::ROCKSDB_LOCALDIR);
        StateBackendConfig {
            kind: if conf.get(&options::STATE_BACKEND) == "rocksdb" {
                BackendKind::RocksDb
            } else {
                BackendKind::Heap
            },
            incremental: conf.get(&options::CHECKPOINTING_INCREMENTAL),
            local_dir: (!dir.trim().is_empty()).then(|| PathBuf::from(dir)),
            value_cache_entries: conf.get(&options::ROCKSDB_CACHE_ENTRIES),
            memory: RocksMemoryConfig::from_conf(conf),
        }
    }
}

macro_rules! descriptor {
    ($(#[$m:meta])* $name:ident, [$($p:ident),*]) => {
        $(#[$m])*
        #[derive(Debug, Clone)]
        pub struct $name<$($p),*> {
            name: String,
            _t: PhantomData<fn() -> ($($p,)*)>,
        }
        impl<$($p),*> $name<$($p),*> {
            /// A descriptor for the state called `name` (unique within the operator).
            pub fn new(name: impl Into<String>) -> Self {
                Self { name: name.into(), _t: PhantomData }
            }
            /// The state's name.
            pub fn name(&self) -> &str {
                &self.name
            }
        }
    };
}

descriptor!(
    /// Describes a [`ValueState`]: one value of type `T` per key.
    ValueStateDescriptor, [T]
);
descriptor!(
    /// Describes a [`ListState`]: a list of `T` per key.
    ListStateDescriptor, [T]
);
descriptor!(
    /// Describes a [`MapState`]: a map from `UK` to `UV` per key.
    MapStateDescriptor, [UK, UV]
);

macro_rules! handle {
    ($(#[$m:meta])* $name:ident, [$($p:ident),*]) => {
        $(#[$m])*
        #[derive(Debug)]
        pub struct $name<$($p),*> {
            pub(crate) id: usize,
            _t: PhantomData<fn() -> ($($p,)*)>,
        }
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($p),*> Copy for $name<$($p),*> {}
        impl<$($p),*> $name<$($p),*> {
            pub(crate) fn from_id(id: usize) -> Self {
                Self { id, _t: PhantomData }
            }
        }
    };
}

handle!(
    /// One value per key. Read and write it through the [`KeyedContext`] of the current record.
    ValueState, [T]
);
handle!(
    /// A list of values per key.
    ListState, [T]
);
handle!(
    /// A map per key.
    MapState, [UK, UV]
);

/// The keyed state of one subtask, over all registered states.
pub enum KeyedStateBackend<K: Key> {
    /// In-memory hash maps (`state.backend.type: hashmap`).
    Heap(HeapKeyedStateBackend<K>),
    /// RocksDB (`state.backend.type: rocksdb`).
    #[cfg(feature = "rocksdb")]
    Rocks(Box<RocksKeyedStateBackend<K>>),
}

/// Dispatches `$body` over the backends with `$b` bound to the backend.
macro_rules! dispatch {
    ($self:expr, $b:ident => $heap:expr, $rocks:expr) => {
        match $self {
            KeyedStateBackend::Heap($b) => $heap,
            #[cfg(feature = "rocksdb")]
            KeyedStateBackend::Rocks($b) => $rocks,
        }
    };
}

/// Which subtask's keyed state a backend holds, and how: what
/// [`KeyedStateBackend::for_subtask`] needs of the subtask (its
/// [`crate::operator::RuntimeContext`] converts into one).
#[derive(Debug, Clone, Copy)]
pub struct BackendScope<'a> {
    /// `state.backend.*`.
    pub config: &'a StateBackendConfig,
    /// The operator's name (part of a RocksDB instance's directory name).
    pub operator: &'a str,
    /// The subtask's index.
    pub subtask: usize,
    /// The key groups the subtask owns.
    pub key_groups: KeyGroupRange,
    /// `pipeline.max-parallelism`: the number of key groups.
    pub max_parallelism: usize,
    /// The job's id (RocksDB instances of one job and slot share memory).
    pub job_id: &'a str,
    /// The operator's parallelism: the slots its subtasks take.
    pub parallelism: usize,
}

impl<K: Key> KeyedStateBackend<K> {
    /// A heap backend for the subtask that owns `range` of `max_parallelism` key groups.
    pub fn heap(range: KeyGroupRange, max_parallelism: usize) -> Self {
        KeyedStateBackend::Heap(HeapKeyedStateBackend::new(range, max_parallelism))
    }

    /// The backend `scope.config` asks for, for the subtask `scope`
    /// describes (a `&RuntimeContext` converts into one).
    pub fn for_subtask<'a>(scope: impl Into<BackendScope<'a>>) -> Result<Self> {
        let scope = scope.into();
        match scope.config.kind {
            BackendKind::Heap => Ok(Self::heap(scope.key_groups, scope.max_parallelism)),
            #[cfg(feature = "rocksdb")]
            BackendKind::RocksDb => Ok(KeyedStateBackend::Rocks(Box::new(
                RocksKeyedStateBackend::open(&scope)?,
            ))),
            #[cfg(not(feature = "rocksdb"))]
            BackendKind::RocksDb => Err(crate::Error::Config(
                crate::config::ConfigError::FeatureMissing {
                    key: options::STATE_BACKEND.def.key.to_string(),
                    value: "rocksdb".into(),
                    origin: crate::config::ValueSource::Code,
                    feature: "rocksdb",
                },
            )),
        }
    }

    /// Registers (or looks up) a value state.
    pub fn value_state<T: Data + Clone>(
        &mut self,
        d: &ValueStateDescriptor<T>,
    ) -> Result<ValueState<T>> {
        dispatch!(self, b => b
            .register::<heap::ValueTable<K, T>>(d.name(), StateKind::Value)
            .map(ValueState::from_id),
            b.register_value::<T>(d.name()).map(ValueState::from_id))
    }

    /// Registers (or looks up) a list state.
    pub fn list_state<T: Data + Clone>(
        &mut self,
        d: &ListStateDescriptor<T>,
    ) -> Result<ListState<T>> {
        dispatch!(self, b => b
            .register::<heap::ListTable<K, T>>(d.name(), StateKind::List)
            .map(ListState::from_id),
            b.register_list::<T>(d.name()).map(ListState::from_id))
    }

    /// Registers (or looks up) a map state.
    pub fn map_state<UK: Key, UV: Data + Clone>(
        &mut self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapState<UK, UV>> {
        dispatch!(self, b => b
            .register::<heap::MapTable<K, UK, UV>>(d.name(), StateKind::Map)
            .map(MapState::from_id),
            b.register_map::<UK, UV>(d.name()).map(MapState::from_id))
    }

    /// The key groups this backend holds.
    pub fn key_group_range(&self) -> KeyGroupRange {
        dispatch!(self, b => b.range, b.range())
    }

    /// Number of (state, key) entries, over all states (RocksDB: an estimate).
    pub fn num_entries(&self) -> usize {
        dispatch!(self, b => b.num_entries(), b.num_entries())
    }

    /// Serializes the state of every key, grouped by key group: the canonical,
    /// backend-independent form (synchronously; checkpoints use
    /// [`snapshot_async`](Self::snapshot_async)).
    pub fn snapshot(&mut self) -> Result<KeyedStateSnapshot> {
        dispatch!(self, b => b.snapshot(), b.canonical_snapshot())
    }

    /// The synchronous part of a checkpoint's snapshot: cheap and consistent;
    /// the returned job does the expensive part off the processing loop.
    pub fn snapshot_async(&mut self, checkpoint_id: u64) -> Result<PendingKeyedSnapshot> {
        let _ = checkpoint_id;
        dispatch!(self, b => Ok(PendingKeyedSnapshot(Pending::Heap(b.snapshot_async()))),
            Ok(PendingKeyedSnapshot(Pending::Rocks(Box::new(b.snapshot_async(checkpoint_id)?)))))
    }

    /// Loads the entries of `snap` whose key group this backend owns.
    pub fn restore(&mut self, snap: &KeyedStateSnapshot) -> Result<()> {
        dispatch!(self, b => b.restore(snap), b.restore_canonical(snap))
    }

    /// Loads the key groups of this backend's range from the state of every
    /// old subtask of a checkpoint (either backend, any old parallelism).
    pub fn restore_from(&mut self, restored: &RestoredKeyed) -> Result<()> {
        let range = self.key_group_range();
        self.restore(&restored.canonical)?;
        for (job_dir, h) in &restored.rocks {
            if !h.overlaps(range) {
                continue;
            }
            match self {
                KeyedStateBackend::Heap(b) => {
                    let snap = rocks_to_canonical(job_dir, h, range)?;
                    b.restore(&snap)?;
                }
                #[cfg(feature = "rocksdb")]
                KeyedStateBackend::Rocks(b) => b.restore_rocks(job_dir, h)?,
            }
        }
        Ok(())
    }

    /// Before a batch of records with these keys (in key groups `groups`):
    /// RocksDB reads the values the batch is likely to need in one batched
    /// lookup per value state; the heap backend does nothing.
    #[inline]
    pub fn prefetch(&mut self, keys: &[K], groups: &[u16]) -> Result<()> {
        dispatch!(self, b => { let _ = (b, keys, groups); Ok(()) }, b.prefetch(keys, groups))
    }

    /// A batch of records has been processed (lets RocksDB write back its cache).
    #[inline]
    pub fn end_batch(&mut self) -> Result<()> {
        dispatch!(self, b => { let _ = b; Ok(()) }, b.end_batch())
    }

    /// Checkpoint `checkpoint_id` is complete (incremental snapshots may reuse its files).
    pub fn notify_complete(&mut self, checkpoint_id: u64) {
        dispatch!(self, b => { let _ = (b, checkpoint_id); }, b.notify_complete(checkpoint_id))
    }

    /// Checkpoint `checkpoint_id` was aborted.
    pub fn notify_aborted(&mut self, checkpoint_id: u64) {
        dispatch!(self, b => { let _ = (b, checkpoint_id); }, b.notify_aborted(checkpoint_id))
    }
}

/// Converts RocksDB files to the canonical form (for the heap backend).
fn rocks_to_canonical(
    job_dir: &std::path::Path,
    h: &RocksStateHandle,
    range: KeyGroupRange,
) -> Result<KeyedStateSnapshot> {
    #[cfg(feature = "rocksdb")]
    {
        rocks::to_canonical(job_dir, h, range)
    }
    #[cfg(not(feature = "rocksdb"))]
    {
        let _ = (h, range);
        Err(crate::Error::Restore(format!(
            "the checkpoint in {} holds RocksDB state, and this build of weir has no RocksDB support: rebuild with `--features rocksdb`",
            job_dir.display()
        )))
    }
}

enum Pending {
    Heap(heap::HeapPending),
    #[cfg(feature = "rocksdb")]
    Rocks(Box<rocks::RocksPending>),
}

/// The synchronous part of a keyed snapshot, waiting for its asynchronous part.
pub struct PendingKeyedSnapshot(Pending);

/// Where the asynchronous part of a snapshot writes.
pub struct UploadTarget<'a> {
    /// The job's checkpoint storage.
    pub storage: &'a crate::checkpoint::storage::CheckpointStorage,
    /// The checkpoint id.
    pub checkpoint_id: u64,
}

/// The result of a snapshot's asynchronous part.
pub struct UploadedKeyed {
    /// What the subtask's state file records.
    pub handle: KeyedStateHandle,
    /// Files outside the state file this handle references, relative to the job directory.
    pub files: Vec<String>,
    /// Bytes written by this upload outside the subtask's state file (less
    /// than `full_size` when incremental).
    pub uploaded: u64,
    /// Bytes of the files outside the state file the handle references.
    pub full_size: u64,
}

impl PendingKeyedSnapshot {
    /// The asynchronous part: encode or upload (call off the processing loop).
    pub fn upload(self, target: &UploadTarget<'_>) -> Result<UploadedKeyed> {
        match self.0 {
            Pending::Heap(h) => {
                let _ = target;
                // Inline in the state file: no bytes outside it.
                Ok(UploadedKeyed {
                    handle: KeyedStateHandle::Canonical(h.encode()?),
                    files: Vec::new(),
                    uploaded: 0,
                    full_size: 0,
                })
            }
            #[cfg(feature = "rocksdb")]
            Pending::Rocks(r) => r.upload(target),
        }
    }

    /// The asynchronous part of a savepoint: the canonical form, whatever
    /// the backend (RocksDB: read from the local RocksDB checkpoint the
    /// synchronous part made), so the savepoint holds no backend files.
    pub fn canonical(self) -> Result<KeyedStateSnapshot> {
        match self.0 {
            Pending::Heap(h) => h.encode(),
            #[cfg(feature = "rocksdb")]
            Pending::Rocks(r) => r.canonical(),
        }
    }
}

/// What a keyed function sees with each record (and each timer): the
/// current key, its state, its timers, the time, and the side outputs.
pub struct KeyedContext<'a, K: Key> {
    pub(crate) key: &'a K,
    pub(crate) backend: &'a mut KeyedStateBackend<K>,
    pub(crate) watermark: i64,
    /// The key's key group, computed once.
    pub(crate) kg: u16,
    /// The current record's timestamp, or the firing timer's.
    pub(crate) timestamp: Option<i64>,
    /// Timer changes asked for during this call (applied by the operator after it).
    pub(crate) timers: Vec<crate::time::TimerOp>,
    /// Side records emitted during this call (collected by the operator after it).
    pub(crate) side: Vec<crate::side_output::SideRecord>,
}

impl<'a, K: Key> KeyedContext<'a, K> {
    /// A context for `key` over `backend` (for operators and tests).
    pub fn new(key: &'a K, backend: &'a mut KeyedStateBackend<K>, max_parallelism: usize) -> Self {
        Self::in_group(key, key_group_for(key, max_parallelism), backend)
    }

    /// A context for `key`, whose key group `kg` the caller computed.
    pub(crate) fn in_group(key: &'a K, kg: u16, backend: &'a mut KeyedStateBackend<K>) -> Self {
        KeyedContext {
            key,
            backend,
            watermark: i64::MIN,
            kg,
            timestamp: None,
            timers: Vec::new(),
            side: Vec::new(),
        }
    }

    /// The same with the operator's watermark and the record's timestamp.
    pub(crate) fn at(mut self, watermark: i64, timestamp: Option<i64>) -> Self {
        self.watermark = watermark;
        self.timestamp = timestamp;
        self
    }

    /// The operator's current event-time watermark (`i64::MIN` before the first).
    pub fn current_watermark(&self) -> i64 {
        self.watermark
    }

    /// The key of the record being processed.
    pub fn key(&self) -> &K {
        self.key
    }

    /// The key group of the current key.
    #[inline]
    pub fn key_group(&self) -> u16 {
        self.kg
    }

    /// The event timestamp of the record being processed (when its stream
    /// has timestamps: see
    /// [`assign_timestamps_and_watermarks`](crate::stream::DataStream::assign_timestamps_and_watermarks)),
    /// or, in `on_timer`, the timer's timestamp.
    pub fn timestamp(&self) -> Option<i64> {
        self.timestamp
    }

    /// The current key's timers (Flink's `ctx.timerService()`).
    pub fn timer_service(&mut self) -> crate::time::TimerService<'_> {
        crate::time::TimerService {
            ops: &mut self.timers,
            watermark: self.watermark,
        }
    }

    /// Emits `value` to the side output `tag` (Flink's `ctx.output`).
    pub fn output<T: Data>(&mut self, tag: &crate::side_output::OutputTag<T>, value: T) {
        self.side
            .push(crate::side_output::SideRecord::new(tag, value));
    }
}

impl<T: Data + Clone> ValueState<T> {
    /// The current key's value, or `None` if it has none.
    pub fn value<K: Key>(&self, ctx: &KeyedContext<'_, K>) -> Result<Option<T>> {
        let kg = ctx.key_group();
        dispatch!(&*ctx.backend, h => Ok(h
                .table::<heap::ValueTable<K, T>>(self.id)?
                .map
                .get(kg, ctx.key)?
                .cloned()),
            h.value_get::<T>(self.id, kg, ctx.key))
    }

    /// Sets the current key's value.
    pub fn update<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, value: T) -> Result<()> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                let m = h.table_mut::<heap::ValueTable<K, T>>(self.id)?.map.shard_mut(kg)?;
                match m.get_mut(ctx.key) {
                    Some(v) => *v = value,
                    None => {
                        m.insert(ctx.key.clone(), value);
                    }
                }
                Ok(())
            },
            h.value_put::<T>(self.id, kg, ctx.key, Some(value)))
    }

    /// Replaces the current key's value with `f(old)` in one lookup and returns the new value.
    #[inline]
    pub fn update_with<K: Key>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        f: impl FnOnce(Option<&T>) -> T,
    ) -> Result<T> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                let m = h.table_mut::<heap::ValueTable<K, T>>(self.id)?.map.shard_mut(kg)?;
                match m.get_mut(ctx.key) {
                    Some(v) => {
                        *v = f(Some(&*v));
                        Ok(v.clone())
                    }
                    None => {
                        let v = f(None);
                        m.insert(ctx.key.clone(), v.clone());
                        Ok(v)
                    }
                }
            },
            h.value_update_with::<T>(self.id, kg, ctx.key, f))
    }

    /// Changes the current key's value in place: `init()` when it has
    /// none, then `f` on it; says whether the value is new. (Heap: one
    /// lookup, no copy; RocksDB: in the value cache.)
    #[inline]
    pub fn modify<K: Key>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T),
    ) -> Result<bool> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                let m = h.table_mut::<heap::ValueTable<K, T>>(self.id)?.map.shard_mut(kg)?;
                match m.get_mut(ctx.key) {
                    Some(v) => {
                        f(v);
                        Ok(false)
                    }
                    None => {
                        let mut v = init();
                        f(&mut v);
                        m.insert(ctx.key.clone(), v);
                        Ok(true)
                    }
                }
            },
            h.value_modify::<T>(self.id, kg, ctx.key, init, f))
    }

    /// Every `(key, value)` of this state over all keys of the backend
    /// (for rebuilding in-memory indexes after a restore).
    pub fn all_entries<K: Key>(&self, backend: &mut KeyedStateBackend<K>) -> Result<Vec<(K, T)>> {
        dispatch!(backend, h => Ok(h
                .table::<heap::ValueTable<K, T>>(self.id)?
                .map
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()),
            h.value_all_entries::<T>(self.id))
    }

    /// Removes the current key's value.
    pub fn clear<K: Key>(&self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                h.table_mut::<heap::ValueTable<K, T>>(self.id)?
                    .map
                    .shard_mut(kg)?
                    .remove(ctx.key);
                Ok(())
            },
            h.value_put::<T>(self.id, kg, ctx.key, None))
    }
}

impl<T: Data + Clone> ListState<T> {
    /// The current key's list (empty if none).
    pub fn get<K: Key>(&self, ctx: &KeyedContext<'_, K>) -> Result<Vec<T>> {
        let kg = ctx.key_group();
        dispatch!(&*ctx.backend, h => Ok(h
                .table::<heap::ListTable<K, T>>(self.id)?
                .map
                .get(kg, ctx.key)?
                .cloned()
                .unwrap_or_default()),
            h.list_get::<T>(self.id, kg, ctx.key))
    }

    /// Appends to the current key's list.
    pub fn add<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, value: T) -> Result<()> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                let m = h.table_mut::<heap::ListTable<K, T>>(self.id)?.map.shard_mut(kg)?;
                match m.get_mut(ctx.key) {
                    Some(l) => l.push(value),
                    None => {
                        m.insert(ctx.key.clone(), vec![value]);
                    }
                }
                Ok(())
            },
            h.list_add::<T>(self.id, kg, ctx.key, value))
    }

    /// Replaces the current key's list.
    pub fn update<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, values: Vec<T>) -> Result<()> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                let m = h.table_mut::<heap::ListTable<K, T>>(self.id)?.map.shard_mut(kg)?;
                if values.is_empty() {
                    m.remove(ctx.key);
                } else {
                    m.insert(ctx.key.clone(), values);
                }
                Ok(())
            },
            h.list_put::<T>(self.id, kg, ctx.key, &values))
    }

    /// Removes the current key's list.
    pub fn clear<K: Key>(&self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        self.update(ctx, Vec::new())
    }
}

impl<UK: Key, UV: Data + Clone> MapState<UK, UV> {
    /// The value under `user_key` in the current key's map.
    pub fn get<K: Key>(&self, ctx: &KeyedContext<'_, K>, user_key: &UK) -> Result<Option<UV>> {
        let kg = ctx.key_group();
        dispatch!(&*ctx.backend, h => Ok(h
                .table::<heap::MapTable<K, UK, UV>>(self.id)?
                .map
                .get(kg, ctx.key)?
                .and_then(|m| m.get(user_key))
                .cloned()),
            h.map_get::<UK, UV>(self.id, kg, ctx.key, user_key))
    }

    /// Puts `value` under `user_key` in the current key's map.
    pub fn put<K: Key>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                h.table_mut::<heap::MapTable<K, UK, UV>>(self.id)?
                    .map
                    .shard_mut(kg)?
                    .entry(ctx.key.clone())
                    .or_default()
                    .insert(user_key, value);
                Ok(())
            },
            h.map_put::<UK, UV>(self.id, kg, ctx.key, &user_key, Some(&value)))
    }

    /// Removes `user_key` from the current key's map.
    pub fn remove<K: Key>(&self, ctx: &mut KeyedContext<'_, K>, user_key: &UK) -> Result<()> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                let t = h.table_mut::<heap::MapTable<K, UK, UV>>(self.id)?.map.shard_mut(kg)?;
                if let Some(m) = t.get_mut(ctx.key) {
                    m.remove(user_key);
                    if m.is_empty() {
                        t.remove(ctx.key);
                    }
                }
                Ok(())
            },
            h.map_put::<UK, UV>(self.id, kg, ctx.key, user_key, None))
    }

    /// Changes the value under `user_key` in the current key's map in
    /// place: `init()` when there is none, then `f` on it. Says whether the
    /// entry is new. (Heap: one lookup of the key and one of `user_key`,
    /// no copy of the value.)
    #[inline]
    pub fn update_with<K: Key>(
        &self,
        ctx: &mut KeyedContext<'_, K>,
        user_key: &UK,
        init: impl FnOnce() -> UV,
        f: impl FnOnce(&mut UV),
    ) -> Result<bool> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
            let t = h.table_mut::<heap::MapTable<K, UK, UV>>(self.id)?.map.shard_mut(kg)?;
            let m = match t.get_mut(ctx.key) {
                Some(m) => m,
                None => t.entry(ctx.key.clone()).or_default(),
            };
            match m.get_mut(user_key) {
                Some(v) => {
                    f(v);
                    Ok(false)
                }
                None => {
                    let mut v = init();
                    f(&mut v);
                    m.insert(user_key.clone(), v);
                    Ok(true)
                }
            }
        },
        {
            let old = h.map_get::<UK, UV>(self.id, kg, ctx.key, user_key)?;
            let new = old.is_none();
            let mut v = old.unwrap_or_else(init);
            f(&mut v);
            h.map_put::<UK, UV>(self.id, kg, ctx.key, user_key, Some(&v))?;
            Ok(new)
        })
    }

    /// Every `(key, user key)` of this map state over all keys of the
    /// backend (for rebuilding in-memory indexes, such as the timer queue,
    /// after a restore).
    pub fn all_user_keys<K: Key>(
        &self,
        backend: &mut KeyedStateBackend<K>,
    ) -> Result<Vec<(K, UK)>> {
        dispatch!(backend, h => {
                let t = h.table::<heap::MapTable<K, UK, UV>>(self.id)?;
                Ok(t.map
                    .iter()
                    .flat_map(|(k, m)| m.keys().map(move |uk| (k.clone(), uk.clone())))
                    .collect())
            },
            h.map_all_user_keys::<UK>(self.id))
    }

    /// All entries of the current key's map, in no particular order.
    pub fn entries<K: Key>(&self, ctx: &KeyedContext<'_, K>) -> Result<Vec<(UK, UV)>> {
        let kg = ctx.key_group();
        dispatch!(&*ctx.backend, h => Ok(h
                .table::<heap::MapTable<K, UK, UV>>(self.id)?
                .map
                .get(kg, ctx.key)?
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default()),
            h.map_entries::<UK, UV>(self.id, kg, ctx.key))
    }

    /// Removes the current key's whole map.
    pub fn clear<K: Key>(&self, ctx: &mut KeyedContext<'_, K>) -> Result<()> {
        let kg = ctx.key_group();
        dispatch!(&mut *ctx.backend, h => {
                h.table_mut::<heap::MapTable<K, UK, UV>>(self.id)?
                    .map
                    .shard_mut(kg)?
                    .remove(ctx.key);
                Ok(())
            },
            h.map_clear(self.id, kg, ctx.key))
    }
}
