//! The DataStream API: [`Env`], [`DataStream`], [`KeyedStream`].
//!
//! ```no_run
//! use weir_runtime::prelude::*;
//! # fn demo<S: SourceFunction<String> + Clone, K: SinkFunction<(String, u64)> + Clone>(lines: S, sink: K) -> weir_runtime::Result<()> {
//! let env = Env::from_conf(Conf::load(&[])?)?;
//! env.add_source(lines)
//!     .name("lines")
//!     .flat_map(|line: String, out: &mut Collector<String>| {
//!         for w in line.split_whitespace() {
//!             out.collect(w.to_lowercase());
//!         }
//!     })
//!     .key_by(|w: &String| w.clone())
//!     .count()
//!     .add_sink(sink);
//! let result = env.execute("wordcount")?;
//! println!("{:?}", result.operators);
//! # Ok(()) }
//! ```
//!
//! Calls build a logical graph; [`Env::execute`] plans it ([`crate::graph`]),
//! spawns the actors ([`crate::job`]) and blocks until the job ends. The API is
//! synchronous, like Flink's: the environment owns its tokio runtime, so call
//! it from ordinary (non-async) code.

use std::cell::RefCell;
use std::hash::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::marker::PhantomData;
use std::ops::AddAssign;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::checkpoint::{storage, CheckpointConfig};
use crate::config::{options, Conf};
use crate::connect::{CoInput, Wrap};
use crate::exchange::{HashPartition, PartitionSetup};
use crate::graph::{Edge, JobPlan, Node, NodeKind, OperatorCounters, Ship, StreamGraph};
use crate::job::{
    CheckpointSetup, Failover, JobArgs, JobCore, JobHandle, JobMaster, JobResult, Lifecycle,
};
use crate::metrics::OperatorInfo;
use crate::operator::{
    Aggregate, ChainOp, Collector, FilterOp, FlatMapOp, KeyedProcessFunction, KeyedProcessOp,
    MapOp, Reduce, SinkFunction, SinkOp, SourceAdapter, SourceFunction, SourceOp,
    TimestampsAndWatermarksOp, WatermarkedSource,
};
use crate::record::{batch_len, serde_clone, Data, Key};
use crate::restore;
use crate::side_output::OutputTag;
use crate::watermarks::{TimestampFn, WatermarkGenerator, WatermarkStrategy};
use crate::window::WindowAssigner;
use crate::{Error, Result};

mod connected;
mod windowed;

pub use connected::{ConnectedKeyedStreams, ConnectedStreams, IntervalJoin};
pub use windowed::WindowedStream;

/// The execution environment: configuration, the job graph being built, and
/// the runtime that executes it.
pub struct Env {
    conf: Conf,
    graph: Rc<RefCell<StreamGraph>>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl Env {
    /// An environment with the compiled-in defaults only (no file, no
    /// environment variables), checkpointing into the system's temporary
    /// directory: what tests want.
    pub fn local() -> Result<Env> {
        let mut conf = Conf::defaults();
        let dir = std::env::temp_dir().join("weir-checkpoints");
        conf.set(options::CHECKPOINTING_DIR.def.key, dir.display())?;
        Env::from_conf(conf)
    }

    /// An environment with the given configuration.
    pub fn from_conf(conf: Conf) -> Result<Env> {
        let threads = match conf.get(&options::WORKER_THREADS) {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("weir-worker")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the tokio runtime: {e}")))?;
        Ok(Env {
            conf,
            graph: Rc::default(),
            runtime: Arc::new(runtime),
        })
    }

    /// The configuration.
    pub fn conf(&self) -> &Conf {
        &self.conf
    }

    /// Sets `parallelism.default` for operators that do not set their own.
    pub fn set_parallelism(&mut self, parallelism: usize) -> Result<&mut Self> {
        self.conf
            .set(options::PARALLELISM_DEFAULT.def.key, parallelism)?;
        Ok(self)
    }

    /// Adds a parallel source; each subtask gets a clone of `source`.
    pub fn add_source<T: Data, S: SourceFunction<T> + Clone>(&self, source: S) -> DataStream<T> {
        let proto = Prototype::new(source);
        let factory = Arc::new(move || {
            Box::new(SourceAdapter {
                source: proto.get(),
                buf: Vec::new(),
            }) as Box<dyn SourceOp>
        });
        let id = push_node::<T>(
            &self.graph,
            "Source",
            NodeKind::Source(factory),
            Vec::new(),
            None,
            false,
        );
        DataStream::new(self.graph.clone(), id)
    }

    /// Adds a parallel source whose records get timestamps and watermarks
    /// from `strategy` per split (Flink's `env.fromSource`): each split the
    /// source reports ([`SourceFunction::split_count`]) gets its own
    /// generator, a subtask's watermark is the minimum over its active
    /// splits, idle splits (`with_idleness`) stop holding it back, and every
    /// split's watermark is checkpointed ([`crate::watermarks`]).
    pub fn from_source<T: Data, S: SourceFunction<T> + Clone, G: WatermarkGenerator<T>>(
        &self,
        source: S,
        strategy: WatermarkStrategy<T, G>,
        name: &str,
    ) -> DataStream<T> {
        let timestamps = strategy.timestamps.clone();
        if timestamps.is_none() {
            self.graph.borrow_mut().errors.push(format!(
                "source '{name}': the watermark strategy has no timestamp assigner; add one with with_timestamp_assigner"
            ));
        }
        let proto = Prototype::new(source);
        let strategy = Arc::new(strategy);
        let factory = Arc::new(move || {
            Box::new(WatermarkedSource::new(proto.get(), (*strategy).clone())) as Box<dyn SourceOp>
        });
        let id = push_node::<T>(
            &self.graph,
            name,
            NodeKind::Source(factory),
            Vec::new(),
            None,
            false,
        );
        DataStream::new(self.graph.clone(), id).with_timestamps(timestamps)
    }

    /// The physical plan of the graph built so far (chains, channels).
    pub fn plan(&self) -> Result<JobPlan> {
        self.graph.borrow().plan(&self.conf)
    }

    /// Runs the graph built so far and blocks until it ends.
    pub fn execute(&self, name: &str) -> Result<JobResult> {
        self.execute_async(name)?.wait()
    }

    /// Starts the graph built so far and returns at once with a handle.
    /// The environment's graph is emptied, ready for the next job.
    pub fn execute_async(&self, name: &str) -> Result<JobHandle> {
        let graph = std::mem::take(&mut *self.graph.borrow_mut());
        let plan = graph.plan(&self.conf)?;
        let role = crate::cluster::Role::from_conf(&self.conf)?;
        // The S3 endpoint and credentials (`s3.*`), for every role: a
        // TaskManager uploads its subtasks' state itself.
        crate::checkpoint::store::configure(crate::checkpoint::store::S3Settings::from_conf(
            &self.conf,
        ));
        if role == crate::cluster::Role::TaskManager {
            // A TaskManager serves its JobManager until the job ends, then
            // the process exits with the job's status (see crate::cluster).
            let code = self.runtime.block_on(crate::cluster::taskmanager::run(
                graph,
                plan,
                self.conf.clone(),
                name.to_string(),
            ));
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        // High availability: a stable job id, leadership taken through the
        // log before anything else touches the job directory (crate::ha).
        let submitted = Instant::now();
        let ha = crate::ha::HaSettings::from_conf(&self.conf)?;
        let job_id = match &ha {
            Some(h) => crate::ha::job_id(&h.cluster_id, name),
            None => new_job_id(),
        };
        let cfg = CheckpointConfig::from_conf(&self.conf);
        let explicit_recovery = Some(self.conf.get(&options::RECOVERY_PATH))
            .filter(|p| !p.is_empty())
            .map(std::path::PathBuf::from);
        let acquired = match &ha {
            Some(h) => {
                let job_dir = crate::checkpoint::store::normalize(&cfg.dir)?.join(&job_id);
                let a = crate::ha::Leadership::acquire(
                    &h.log_dir(&job_id),
                    &job_dir,
                    explicit_recovery.clone(),
                )?;
                eprintln!(
                    "high availability: JobManager generation {} of job '{name}' ({job_id}), {}",
                    a.leadership.generation(),
                    match &a.restore {
                        Some(p) => format!("resuming from {}", p.display()),
                        None => "starting fresh (no checkpoint yet)".to_string(),
                    }
                );
                Some(a)
            }
            None => None,
        };
        let counters: Vec<Arc<OperatorCounters>> = plan
            .node_parallelism
            .iter()
            .map(|p| Arc::new(OperatorCounters::new(*p)))
            .collect();
        let operators = operator_infos(&graph, &plan, &counters);
        let cluster = match role {
            crate::cluster::Role::JobManager => {
                let cm = crate::cluster::jobmanager::ClusterManager::start(
                    self.runtime.handle(),
                    &self.conf,
                    &job_id,
                    name,
                    &plan,
                    counters.clone(),
                    acquired
                        .as_ref()
                        .map_or(0, |a| a.leadership.generation() << 32),
                )?;
                eprintln!(
                    "JobManager of job '{name}' ({job_id}) on {}: waiting for TaskManagers to offer {} slot(s)",
                    cm.address,
                    plan.chains.iter().map(|c| c.parallelism).max().unwrap_or(0)
                );
                Some(cm)
            }
            _ => None,
        };
        let io: Vec<Arc<crate::metrics::SubtaskIo>> =
            (0..plan.num_subtasks()).map(|_| Arc::default()).collect();
        // The REST server (when configured) is up before the job starts, so
        // a bind error stops the job before it does anything.
        let rest = crate::rest::ensure_started(&self.conf)?;
        tracing::info!(job = name, %job_id, "starting job\n{plan}");
        let recovery = match &acquired {
            Some(a) => a.restore.clone(),
            None => explicit_recovery.clone(),
        };
        let RestoreStart {
            restore,
            restored_from,
            first_id,
            mut claimed,
        } = restore_start(&self.conf, &plan, recovery.as_deref())?;
        if acquired.is_some() && explicit_recovery.is_none() {
            // Resumed from the job's own checkpoint: it is the job's anyway.
            claimed = None;
        }
        let first_id = first_id.max(acquired.as_ref().map_or(1, |a| a.first_id));
        let stats = Arc::new(std::sync::Mutex::new(Vec::new()));
        let counts: Arc<crate::checkpoint::CheckpointCounts> = Arc::default();
        let checkpoint_cfg = cfg.enabled().then(|| cfg.clone());
        let checkpoint = if cfg.enabled() {
            let mut storage = storage::CheckpointStorage::create(&cfg.dir, &job_id)?;
            if let Some(a) = &acquired {
                a.leadership
                    .watch(self.conf.get(&options::HEARTBEAT_INTERVAL));
                storage = storage.with_leadership(a.leadership.clone());
            }
            Some(CheckpointSetup {
                cfg,
                storage,
                first_id,
                stats: stats.clone(),
                counts: counts.clone(),
            })
        } else {
            None
        };
        let restart = Failover {
            strategy: crate::restart::RestartStrategy::from_conf(&self.conf),
            seed: self.conf.get(&options::CHAOS_SEED),
            region: self.conf.get(&options::FAILOVER_STRATEGY) == "region",
        };
        let regions: Vec<Vec<String>> = plan
            .regions()
            .iter()
            .map(|m| m.iter().map(|t| plan.subtask_name(*t)).collect())
            .collect();
        let region_restarts: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
            regions
                .iter()
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        );
        let last_failure = Arc::new(std::sync::Mutex::new(None));
        let channels = Arc::new(std::sync::Mutex::new(Vec::new()));
        let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let telemetry = crate::telemetry::Telemetry::from_conf(&self.conf, &job_id, name)?;
        // The job's observers: telemetry, when it is on, is the only one.
        let mut observers = crate::observer::Observers::none();
        if let Some(t) = &telemetry {
            observers.register(Arc::new(t.clone()));
        }
        let lifecycle = Arc::new(Lifecycle::new(restored_from.as_ref().map(|(path, id)| {
            crate::job::RestoreRecord {
                id: *id,
                timestamp: crate::checkpoint::now_ms(),
                path: path.clone(),
            }
        })));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let started = Instant::now();
        // Every operator but the sources: the first record has gone all
        // the way through once each of them processed one.
        let counters_for_announce: Vec<Arc<OperatorCounters>> = graph
            .nodes
            .iter()
            .zip(&counters)
            .filter(|(n, _)| !matches!(n.kind, NodeKind::Source(_)))
            .map(|(_, c)| c.clone())
            .collect();
        let args = JobArgs {
            name: name.to_string(),
            job_id: job_id.clone(),
            graph,
            plan: plan.clone(),
            conf: self.conf.clone(),
            counters,
            channels: channels.clone(),
            restore,
            restored_from: restored_from.as_ref().map(|r| r.0.clone()),
            claimed,
            checkpoint,
            restart,
            restarts: restarts.clone(),
            region_restarts: region_restarts.clone(),
            last_failure: last_failure.clone(),
            io: io.clone(),
            lifecycle: lifecycle.clone(),
            done: tx,
            observers,
            cluster: cluster.clone(),
        };
        if let (Some(a), None) = (&acquired, &cluster) {
            announce_first_record(
                a.leadership.generation(),
                submitted,
                counters_for_announce.clone(),
            );
        }
        let (master, _) = self
            .runtime
            .block_on(<JobMaster as ractor::Actor>::spawn(None, JobMaster, args))
            .map_err(|e| Error::Internal(format!("cannot start the job supervisor: {e}")))?;
        let core = Arc::new(JobCore {
            job_id,
            name: name.to_string(),
            started,
            start_ms: crate::checkpoint::now_ms(),
            operators,
            plan,
            master,
            channels,
            io,
            restarts,
            region_restarts,
            last_failure,
            regions,
            checkpoints: stats,
            counts,
            checkpoint_cfg,
            conf: self.conf.clone(),
            restored_from,
            lifecycle,
            rates: Default::default(),
            operations: Default::default(),
            cluster,
        });
        crate::metrics::start_sampler(&core);
        if let Some(t) = &telemetry {
            let job = Arc::downgrade(&core);
            t.export_metrics(move || job.upgrade().map(|core| core.metrics()));
        }
        crate::registry::register(core.clone());
        if let Some(addr) = rest {
            tracing::info!(job = name, "web UI: http://{addr}/#/jobs/{}", core.job_id);
        }
        Ok(JobHandle {
            core,
            done: rx,
            outcome: None,
            runtime: self.runtime.clone(),
            telemetry,
            rest,
        })
    }
}

/// Where a job starts: from nothing, or restored from the checkpoint or
/// savepoint at `execution.state-recovery.path`.
struct RestoreStart {
    /// The subtasks' restore data, `[chain][subtask]`.
    restore: Option<Vec<Vec<crate::checkpoint::SubtaskRestore>>>,
    /// The directory restored from and its checkpoint id.
    restored_from: Option<(std::path::PathBuf, u64)>,
    /// The id of the job's first checkpoint.
    first_id: u64,
    /// A checkpoint restored in CLAIM mode: the job owns it now.
    claimed: Option<std::path::PathBuf>,
}

/// Reads and maps the checkpoint to restore from, if the configuration names one.
fn restore_start(
    conf: &Conf,
    plan: &JobPlan,
    recovery: Option<&std::path::Path>,
) -> Result<RestoreStart> {
    let claim = conf
        .get(&options::RECOVERY_CLAIM_MODE)
        .eq_ignore_ascii_case("CLAIM");
    let Some(recovery) = recovery else {
        return Ok(RestoreStart {
            restore: None,
            restored_from: None,
            first_id: 1,
            claimed: None,
        });
    };
    let loaded = storage::resolve_restore(recovery)?;
    let mut claimed = None;
    let id = loaded.metadata.checkpoint_id;
    let kind = if loaded.metadata.is_savepoint {
        "savepoint"
    } else {
        "checkpoint"
    };
    let old_parallelism: std::collections::BTreeMap<&str, usize> = loaded
        .states
        .iter()
        .map(|s| (s.chain.as_str(), s.parallelism))
        .collect();
    tracing::info!(
        path = %loaded.dir.display(),
        id,
        kind,
        job = %loaded.metadata.job_id,
        claim_mode = if claim { "CLAIM" } else { "NO_CLAIM" },
        ?old_parallelism,
        "restoring from a {kind}"
    );
    if claim && loaded.metadata.is_savepoint {
        tracing::warn!(path = %loaded.dir.display(), "CLAIM mode on a savepoint: savepoints are never deleted by weir, so it is left as it is");
    } else if claim {
        claimed = Some(loaded.dir.clone());
    }
    Ok(RestoreStart {
        restore: Some(restore::assign(
            &loaded,
            plan,
            conf.get(&options::MAX_PARALLELISM),
        )?),
        restored_from: Some((loaded.dir.clone(), id)),
        first_id: id + 1,
        claimed,
    })
}

/// The operators of `graph` as the metrics see them: name, parallelism,
/// chain and record counters.
fn operator_infos(
    graph: &StreamGraph,
    plan: &JobPlan,
    counters: &[Arc<OperatorCounters>],
) -> Vec<OperatorInfo> {
    let mut chain_of = vec![0; graph.nodes.len()];
    for c in &plan.chains {
        for &n in &c.nodes {
            chain_of[n] = c.id;
        }
    }
    graph
        .nodes
        .iter()
        .zip(counters)
        .zip(&plan.node_parallelism)
        .zip(&chain_of)
        .map(|(((n, c), p), chain)| OperatorInfo {
            name: n.name.clone(),
            parallelism: *p,
            chain: *chain,
            counters: c.clone(),
        })
        .collect()
}

/// The user's function object that every subtask gets a clone of. Kept
/// behind a mutex so the function needs to be `Send` but not `Sync`; it is
/// locked only when subtasks are created.
pub(crate) struct Prototype<F>(std::sync::Mutex<F>);

impl<F: Clone> Prototype<F> {
    pub(crate) fn new(f: F) -> Self {
        Prototype(std::sync::Mutex::new(f))
    }
    pub(crate) fn get(&self) -> F {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// High availability, one process: says on stderr when the first records of
/// this run went through every operator (`counters`: all but the sources;
/// keyed operators only process once their state is restored), in ms since `execute` was called and
/// since the epoch (progress for people; the clock of `benches/ha.rs`).
fn announce_first_record(generation: u64, since: Instant, counters: Vec<Arc<OperatorCounters>>) {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = std::thread::Builder::new()
        .name("weir-first-record".into())
        .spawn(move || {
            let deadline = Instant::now() + std::time::Duration::from_secs(600);
            while Instant::now() < deadline {
                let through = counters.iter().all(|c| {
                    c.subtasks()
                        .iter()
                        .map(|s| s.records_in.load(Relaxed))
                        .sum::<u64>()
                        > 0
                });
                if through {
                    eprintln!(
                        "generation {generation}: first record processed {} ms after the job was submitted (at {} ms since the epoch)",
                        since.elapsed().as_millis(),
                        crate::checkpoint::now_ms()
                    );
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
}

/// A new job id: 32 lowercase hex characters.
fn new_job_id() -> String {
    let mut s = String::with_capacity(32);
    for i in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s
}

/// Length, encoder and decoder of batches of an operator's input type.
type InputFns = (
    crate::record::LenFn,
    crate::record::EncodeFn,
    crate::record::DecodeFn,
    crate::record::ChunkFn,
);

fn input_fns<T: Data>() -> InputFns {
    (
        batch_len::<T>,
        crate::record::encode_batch::<T>,
        crate::record::decode_batch::<T>,
        crate::record::chunk_batch::<T>,
    )
}

fn push_node<O: Data>(
    graph: &Rc<RefCell<StreamGraph>>,
    default_name: &str,
    kind: NodeKind,
    inputs: Vec<Edge>,
    input: Option<InputFns>,
    is_sink: bool,
) -> usize {
    let mut g = graph.borrow_mut();
    let id = g.nodes.len();
    let name = if g.nodes.iter().any(|n| n.name == default_name) {
        format!("{default_name}-{id}")
    } else {
        default_name.to_string()
    };
    g.nodes.push(Node {
        name,
        parallelism: None,
        chainable: true,
        kind,
        inputs,
        is_sink,
        out_clone: serde_clone::<O>,
        out_len: batch_len::<O>,
        in_len: input.map(|i| i.0),
        in_codec: input.map(|i| (i.1, i.2)),
        in_chunk: input.map(|i| i.3),
    });
    id
}

/// A stream of records of type `T`.
pub struct DataStream<T> {
    graph: Rc<RefCell<StreamGraph>>,
    node: usize,
    ship: Ship,
    /// Where the records' event timestamps come from, when they have them
    /// (set by a watermark strategy; kept by `filter`, `key_by`, the
    /// partitioning calls and a `union` of streams with the same assigner).
    timestamps: Option<TimestampFn<T>>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for DataStream<T> {
    fn clone(&self) -> Self {
        DataStream {
            graph: self.graph.clone(),
            node: self.node,
            ship: self.ship.clone(),
            timestamps: self.timestamps.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Data> DataStream<T> {
    fn new(graph: Rc<RefCell<StreamGraph>>, node: usize) -> Self {
        DataStream {
            graph,
            node,
            ship: Ship::Auto,
            timestamps: None,
            _t: PhantomData,
        }
    }

    fn with_timestamps(mut self, timestamps: Option<TimestampFn<T>>) -> Self {
        self.timestamps = timestamps;
        self
    }

    /// The records' timestamp extractor, or a build error naming `what` needs it.
    pub(crate) fn timestamps_for(&self, what: &str) -> Option<TimestampFn<T>> {
        if self.timestamps.is_none() {
            self.graph.borrow_mut().errors.push(format!(
                "{what} needs event timestamps, and its input has none: call \
                 assign_timestamps_and_watermarks (or Env::from_source with a watermark strategy) \
                 with a timestamp assigner upstream (a map or flat_map drops them: assign after it)"
            ));
        }
        self.timestamps.clone()
    }

    /// Records a mistake found while building, reported when the job is planned.
    pub(crate) fn record_error(&self, e: String) {
        self.graph.borrow_mut().errors.push(e);
    }

    fn then<O: Data>(
        &self,
        default_name: &str,
        factory: Arc<dyn Fn() -> Box<dyn ChainOp> + Send + Sync>,
        ship: Ship,
    ) -> DataStream<O> {
        let edge = Edge {
            from: self.node,
            ship,
            side: None,
        };
        let id = push_node::<O>(
            &self.graph,
            default_name,
            NodeKind::Op(factory),
            vec![edge],
            Some(input_fns::<T>()),
            false,
        );
        DataStream::new(self.graph.clone(), id)
    }

    /// Names the operator that produces this stream (shown in plans, metrics
    /// and errors). Names are unique within a job.
    pub fn name(self, name: &str) -> Self {
        self.graph.borrow_mut().nodes[self.node].name = name.to_string();
        self
    }

    /// Sets the parallelism of the operator that produces this stream.
    pub fn set_parallelism(self, parallelism: usize) -> Self {
        self.graph.borrow_mut().nodes[self.node].parallelism = Some(parallelism.max(1));
        self
    }

    /// Keeps the operator that produces this stream out of any chain.
    pub fn disable_chaining(self) -> Self {
        self.graph.borrow_mut().nodes[self.node].chainable = false;
        self
    }

    /// The next operator gets this stream's records by round-robin batches.
    pub fn rebalance(&self) -> Self {
        let mut s = self.clone();
        s.ship = Ship::Rebalance;
        s
    }

    /// The next operator's every subtask gets every record.
    pub fn broadcast(&self) -> Self {
        let mut s = self.clone();
        s.ship = Ship::Broadcast;
        s
    }

    /// The next operator's subtask i gets the records of this stream's subtask i
    /// (parallelism must match).
    pub fn forward(&self) -> Self {
        let mut s = self.clone();
        s.ship = Ship::Forward;
        s
    }

    /// One record out per record in.
    pub fn map<O: Data, F: Fn(T) -> O + Send + Sync + 'static>(&self, f: F) -> DataStream<O> {
        let f = Arc::new(f);
        self.then(
            "Map",
            Arc::new(move || {
                Box::new(MapOp {
                    f: f.clone(),
                    _t: PhantomData,
                }) as Box<dyn ChainOp>
            }),
            self.ship.clone(),
        )
    }

    /// Zero or more records out per record in, through a [`Collector`].
    pub fn flat_map<O: Data, F: Fn(T, &mut Collector<'_, O>) + Send + Sync + 'static>(
        &self,
        f: F,
    ) -> DataStream<O> {
        let f = Arc::new(f);
        self.then(
            "FlatMap",
            Arc::new(move || {
                Box::new(FlatMapOp {
                    f: f.clone(),
                    fanout: 1,
                    _t: PhantomData,
                }) as Box<dyn ChainOp>
            }),
            self.ship.clone(),
        )
    }

    /// Keeps the records for which `f` is true.
    pub fn filter<F: Fn(&T) -> bool + Send + Sync + 'static>(&self, f: F) -> DataStream<T> {
        let f = Arc::new(f);
        self.then(
            "Filter",
            Arc::new(move || {
                Box::new(FilterOp {
                    f: f.clone(),
                    _t: PhantomData,
                }) as Box<dyn ChainOp>
            }),
            self.ship.clone(),
        )
        .with_timestamps(self.timestamps.clone())
    }

    /// Connects this stream with `other` for a two-input operator
    /// ([`crate::connect`]): `process` with a [`CoProcessFunction`](crate::connect::CoProcessFunction), or
    /// `key_by` both sides first for a [`KeyedCoProcessFunction`](crate::connect::KeyedCoProcessFunction).
    pub fn connect<B: Data>(&self, other: &DataStream<B>) -> ConnectedStreams<T, B> {
        ConnectedStreams {
            first: self.clone(),
            second: other.clone(),
        }
    }

    /// This stream's records wrapped as one input of a two-input operator.
    fn wrapped<A: Data, B: Data>(
        &self,
        name: &str,
        wrap: fn(T, Option<i64>) -> CoInput<A, B>,
    ) -> DataStream<CoInput<A, B>> {
        let timestamps = self.timestamps.clone();
        self.then(
            name,
            Arc::new(move || {
                Box::new(Wrap {
                    wrap,
                    timestamps: timestamps.clone(),
                    ts: Vec::new(),
                }) as Box<dyn ChainOp>
            }),
            self.ship.clone(),
        )
    }

    /// The stream of the records this stream's operator emitted to side
    /// output `tag` ([`crate::side_output`]): a window's late records, or
    /// what a process function passed to
    /// [`KeyedContext::output`](crate::state::KeyedContext::output).
    pub fn get_side_output<S: Data>(&self, tag: &OutputTag<S>) -> DataStream<S> {
        let edge = Edge {
            from: self.node,
            ship: Ship::Auto,
            side: Some((tag.name.clone(), serde_clone::<S>)),
        };
        let factory = Arc::new(|| {
            Box::new(FilterOp::<S, _> {
                f: Arc::new(|_: &S| true),
                _t: PhantomData,
            }) as Box<dyn ChainOp>
        });
        let id = push_node::<S>(
            &self.graph,
            &format!("SideOutput({})", tag.name),
            NodeKind::Op(factory),
            vec![edge],
            Some(input_fns::<S>()),
            false,
        );
        let parallelism = self.graph.borrow().nodes[self.node].parallelism;
        self.graph.borrow_mut().nodes[id].parallelism = parallelism;
        DataStream::new(self.graph.clone(), id)
    }

    /// Assigns event time with a [`WatermarkStrategy`] (Flink's
    /// `assignTimestampsAndWatermarks`): its timestamp assigner gives each
    /// record's timestamp (kept downstream through `filter`, `key_by` and
    /// partitioning, for windows and timers), and its generator makes
    /// watermarks, periodically (`pipeline.auto-watermark-interval`) or per
    /// record; the whole input of a subtask is one split
    /// ([`crate::watermarks`]). Watermarks travel in order with the
    /// records; an operator with several inputs uses the smallest of the
    /// active ones. Keyed functions read it with
    /// [`KeyedContext::current_watermark`](crate::state::KeyedContext::current_watermark).
    /// Watermarks from upstream are dropped here (only the end of input passes).
    pub fn assign_timestamps_and_watermarks<G: WatermarkGenerator<T>>(
        &self,
        strategy: WatermarkStrategy<T, G>,
    ) -> DataStream<T> {
        let timestamps = strategy.timestamps.clone();
        if timestamps.is_none() {
            self.graph.borrow_mut().errors.push(
                "assign_timestamps_and_watermarks: the watermark strategy has no timestamp \
                 assigner; add one with with_timestamp_assigner"
                    .into(),
            );
        }
        let strategy = Arc::new(strategy);
        self.then(
            "Timestamps/Watermarks",
            Arc::new(move || {
                Box::new(TimestampsAndWatermarksOp::new((*strategy).clone())) as Box<dyn ChainOp>
            }),
            self.ship.clone(),
        )
        .with_timestamps(timestamps)
    }

    /// Merges this stream with others of the same type.
    pub fn union(&self, others: &[DataStream<T>]) -> DataStream<T> {
        let mut inputs = vec![Edge {
            from: self.node,
            ship: self.ship.clone(),
            side: None,
        }];
        inputs.extend(others.iter().map(|o| Edge {
            from: o.node,
            ship: o.ship.clone(),
            side: None,
        }));
        // Records keep their timestamps when every input has the same assigner.
        let timestamps = match &self.timestamps {
            Some(t)
                if others
                    .iter()
                    .all(|o| o.timestamps.as_ref().is_some_and(|x| Arc::ptr_eq(x, t))) =>
            {
                Some(t.clone())
            }
            _ => None,
        };
        let factory = Arc::new(|| {
            Box::new(FilterOp::<T, _> {
                f: Arc::new(|_: &T| true),
                _t: PhantomData,
            }) as Box<dyn ChainOp>
        });
        let id = push_node::<T>(
            &self.graph,
            "Union",
            NodeKind::Op(factory),
            inputs,
            Some(input_fns::<T>()),
            false,
        );
        DataStream::new(self.graph.clone(), id).with_timestamps(timestamps)
    }

    /// Partitions by key: records with equal keys go to the same subtask (by
    /// key group, see [`crate::keygroup`]) and share keyed state.
    pub fn key_by<K: Key, F: Fn(&T) -> K + Send + Sync + 'static>(
        &self,
        selector: F,
    ) -> KeyedStream<T, K, F> {
        KeyedStream {
            stream: self.clone(),
            selector: Arc::new(selector),
            _k: PhantomData,
        }
    }

    /// Sends the stream to a sink; each sink subtask gets a clone of `sink`.
    pub fn add_sink<S: SinkFunction<T> + Clone>(&self, sink: S) -> DataStreamSink {
        let proto = Prototype::new(sink);
        let factory = Arc::new(move || {
            Box::new(SinkOp {
                sink: proto.get(),
                _t: PhantomData,
            }) as Box<dyn ChainOp>
        });
        let edge = Edge {
            from: self.node,
            ship: self.ship.clone(),
            side: None,
        };
        let id = push_node::<()>(
            &self.graph,
            "Sink",
            NodeKind::Op(factory),
            vec![edge],
            Some(input_fns::<T>()),
            true,
        );
        DataStreamSink {
            stream: DataStream::new(self.graph.clone(), id),
        }
    }
}

/// The end of a stream; set the sink's name and parallelism here.
pub struct DataStreamSink {
    stream: DataStream<()>,
}

impl DataStreamSink {
    /// Names the sink.
    pub fn name(self, name: &str) -> Self {
        DataStreamSink {
            stream: self.stream.name(name),
        }
    }
    /// Sets the sink's parallelism.
    pub fn set_parallelism(self, parallelism: usize) -> Self {
        DataStreamSink {
            stream: self.stream.set_parallelism(parallelism),
        }
    }
    /// Keeps the sink out of any chain.
    pub fn disable_chaining(self) -> Self {
        DataStreamSink {
            stream: self.stream.disable_chaining(),
        }
    }
}

/// A stream partitioned by key.
pub struct KeyedStream<T, K, F> {
    stream: DataStream<T>,
    selector: Arc<F>,
    _k: PhantomData<fn() -> K>,
}

impl<T, K, F> Clone for KeyedStream<T, K, F> {
    fn clone(&self) -> Self {
        KeyedStream {
            stream: self.stream.clone(),
            selector: self.selector.clone(),
            _k: PhantomData,
        }
    }
}

impl<T: Data, K: Key, F: Fn(&T) -> K + Send + Sync + 'static> KeyedStream<T, K, F> {
    /// Runs `function` per record with the record's key's state.
    pub fn process<O: Data, P: KeyedProcessFunction<K, T, O> + Clone>(
        &self,
        function: P,
    ) -> DataStream<O> {
        self.process_named("KeyedProcess", function)
    }

    /// Cuts the keyed stream into windows ([`crate::window`]).
    pub fn window(&self, assigner: WindowAssigner) -> WindowedStream<T, K, F> {
        WindowedStream::new(self.clone(), assigner)
    }

    pub(crate) fn stream(&self) -> &DataStream<T> {
        &self.stream
    }

    pub(crate) fn selector(&self) -> Arc<F> {
        self.selector.clone()
    }

    /// Adds a keyed operator (made by `factory`) fed by hash partitioning on the key.
    pub(crate) fn then_keyed<O: Data>(
        &self,
        name: &str,
        factory: Arc<dyn Fn() -> Box<dyn ChainOp> + Send + Sync>,
    ) -> DataStream<O> {
        let sel = self.selector.clone();
        let partition = Arc::new(move |setup: PartitionSetup| {
            Box::new(HashPartition::<T, K, F>::new(sel.clone(), setup))
                as Box<dyn crate::exchange::Partition>
        });
        self.stream.then(name, factory, Ship::Hash(partition))
    }

    fn process_named<O: Data, P: KeyedProcessFunction<K, T, O> + Clone>(
        &self,
        name: &str,
        function: P,
    ) -> DataStream<O> {
        let sel = self.selector.clone();
        let ts = self.stream.timestamps.clone();
        let proto = Prototype::new(function);
        let factory = Arc::new(move || {
            Box::new(KeyedProcessOp::new(proto.get(), sel.clone(), ts.clone())) as Box<dyn ChainOp>
        });
        self.then_keyed(name, factory)
    }

    /// Running reduction per key: emits the reduced value after every record.
    pub fn reduce<R: Fn(T, T) -> T + Send + Sync + 'static>(&self, f: R) -> DataStream<T>
    where
        T: Clone,
    {
        self.process_named("Reduce", Reduce::new(f))
    }

    /// Running count per key: emits `(key, count so far)` after every record.
    pub fn count(&self) -> DataStream<(K, u64)> {
        self.process_named(
            "Count",
            Aggregate::new(|_: &T| 1u64, |acc: &mut u64, v| *acc += v),
        )
    }

    /// Running sum of `field` per key: emits `(key, sum so far)`.
    pub fn sum<N, G>(&self, field: G) -> DataStream<(K, N)>
    where
        N: Data + Clone + AddAssign,
        G: Fn(&T) -> N + Send + Sync + 'static,
    {
        self.process_named("Sum", Aggregate::new(field, |acc: &mut N, v| *acc += v))
    }

    /// Running minimum of `field` per key: emits `(key, min so far)`.
    pub fn min<N, G>(&self, field: G) -> DataStream<(K, N)>
    where
        N: Data + Clone + Ord,
        G: Fn(&T) -> N + Send + Sync + 'static,
    {
        self.process_named(
            "Min",
            Aggregate::new(field, |acc: &mut N, v| {
                if v < *acc {
                    *acc = v
                }
            }),
        )
    }

    /// Running maximum of `field` per key: emits `(key, max so far)`.
    pub fn max<N, G>(&self, field: G) -> DataStream<(K, N)>
    where
        N: Data + Clone + Ord,
        G: Fn(&T) -> N + Send + Sync + 'static,
    {
        self.process_named(
            "Max",
            Aggregate::new(field, |acc: &mut N, v| {
                if v > *acc {
                    *acc = v
                }
            }),
        )
    }
}
