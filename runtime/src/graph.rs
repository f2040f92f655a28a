//! The job graph: the logical graph the DataStream API builds, the physical
//! plan (operator chains and the channels between them), and its expansion
//! into one `SubtaskSpec` per parallel subtask.
//!
//! # Chaining
//! An edge `u -> d` is **chained** (both operators run in one subtask actor,
//! records handed over in memory with no channel) when it is a forward edge
//! (no `key_by`, `rebalance` or `broadcast` in between), both have the same
//! parallelism, `u` has no other consumer, `d` has no other input, and
//! neither called `disable_chaining()`. This is Flink's rule.
//!
//! # Partitioning
//! An edge without an explicit partitioner is forward when the parallelisms
//! match and rebalance otherwise (as in Flink). An explicit `forward()` between
//! different parallelisms is rejected.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::checkpoint::SubtaskRestore;
use crate::config::{options, Conf};
use crate::counter::Counter;
use crate::exchange::{
    connect_placed, Broadcast, ChannelReceiver, ChannelWatch, Forward, InputGate, OutputEdge,
    PartitionFactory, PartitionSetup, Rebalance, TaskSignals,
};
use crate::operator::{ChainOp, OpFactory, RuntimeContext, SourceFactory, SourceOp};
use crate::record::{ChunkFn, CloneFn, DecodeFn, EncodeFn, LenFn};
use crate::{Error, KillError, Result};

/// How records leave a node on an edge, as the user asked for it.
#[derive(Clone)]
pub(crate) enum Ship {
    Auto,
    Forward,
    Rebalance,
    Broadcast,
    Hash(PartitionFactory),
}

pub(crate) struct Edge {
    pub from: usize,
    pub ship: Ship,
    /// A side output's edge: its tag and the copy function of its record
    /// type (`None`: the main output). Never chained.
    pub side: Option<(Arc<str>, CloneFn)>,
}

pub(crate) enum NodeKind {
    Source(SourceFactory),
    Op(OpFactory),
}

pub(crate) struct Node {
    pub name: String,
    pub parallelism: Option<usize>,
    pub chainable: bool,
    pub kind: NodeKind,
    pub inputs: Vec<Edge>,
    pub is_sink: bool,
    /// Copies a batch of this node's output type (fan-out, broadcast).
    pub out_clone: CloneFn,
    /// Length of a batch of this node's output type.
    pub out_len: LenFn,
    /// Length of a batch of this node's input type (operators only).
    pub in_len: Option<LenFn>,
    /// (De)serializes batches of this node's input type (channel state).
    pub in_codec: Option<(EncodeFn, DecodeFn)>,
    /// Splits batches of this node's input type.
    pub in_chunk: Option<ChunkFn>,
}

/// The logical graph, built by [`crate::stream::DataStream`] calls.
#[derive(Default)]
pub(crate) struct StreamGraph {
    pub nodes: Vec<Node>,
    /// Mistakes found while the graph was built (reported by `plan`).
    pub errors: Vec<String>,
}

/// How a channel edge distributes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipStrategy {
    /// Subtask i to subtask i.
    Forward,
    /// Whole batches round-robin.
    Rebalance,
    /// Every batch to every subtask.
    Broadcast,
    /// Per record by key group.
    Hash,
}

impl fmt::Display for ShipStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShipStrategy::Forward => "FORWARD",
            ShipStrategy::Rebalance => "REBALANCE",
            ShipStrategy::Broadcast => "BROADCAST",
            ShipStrategy::Hash => "HASH",
        })
    }
}

/// One operator chain: the operators that run together in one subtask actor.
#[derive(Debug, Clone)]
pub struct ChainPlan {
    /// Index of the chain in [`JobPlan::chains`].
    pub id: usize,
    /// The names of its operators, head first.
    pub operators: Vec<String>,
    /// Its parallelism (number of subtask actors).
    pub parallelism: usize,
    pub(crate) nodes: Vec<usize>,
}

impl ChainPlan {
    /// The chain's display name, Flink-style: `Source -> Map -> Sink`.
    pub fn name(&self) -> String {
        self.operators.join(" -> ")
    }
}

/// A channel edge between two chains (one channel per connected subtask pair).
#[derive(Debug, Clone)]
pub struct ChannelPlan {
    /// The upstream chain.
    pub from_chain: usize,
    /// The downstream chain.
    pub to_chain: usize,
    /// How records are distributed.
    pub ship: ShipStrategy,
    pub(crate) from_node: usize,
    pub(crate) to_node: usize,
    /// The index of the logical edge among `to_node`'s inputs.
    pub(crate) to_edge: usize,
}

/// The physical plan: chains and the channel edges between them.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Operator chains in topological order.
    pub chains: Vec<ChainPlan>,
    /// Channel edges.
    pub channels: Vec<ChannelPlan>,
    pub(crate) node_parallelism: Vec<usize>,
}

impl JobPlan {
    /// Number of subtask actors the job runs.
    pub fn num_subtasks(&self) -> usize {
        self.chains.iter().map(|c| c.parallelism).sum()
    }

    /// The chain that contains the operator called `name`.
    pub fn chain_of(&self, name: &str) -> Option<&ChainPlan> {
        self.chains
            .iter()
            .find(|c| c.operators.iter().any(|o| o == name))
    }

    /// The index of the chain a user means by `name`: the name of one of its
    /// operators (`count`) or its display name as the web UI and the REST API
    /// show it (`count -> sink`). When nothing matches, the error lists every
    /// name that would have.
    pub fn chain_named(&self, name: &str) -> Result<usize, KillError> {
        let chain = self
            .chain_of(name)
            .or_else(|| self.chains.iter().find(|c| c.name() == name));
        if let Some(c) = chain {
            return Ok(c.id);
        }
        let mut known = Vec::new();
        for c in &self.chains {
            if c.operators.len() > 1 {
                known.push(format!("'{}'", c.name()));
            }
            known.extend(c.operators.iter().map(|o| format!("'{o}'")));
        }
        Err(KillError::NoOperator {
            name: name.to_string(),
            known: known.join(", "),
        })
    }

    /// The subtask (its index among all of the job's subtasks) a user means
    /// by subtask `index` of `name` ([`JobPlan::chain_named`]).
    pub fn subtask_named(&self, name: &str, index: usize) -> Result<usize, KillError> {
        let c = self.chain_named(name)?;
        let parallelism = self.chains[c].parallelism;
        if index >= parallelism {
            return Err(KillError::NoSubtask {
                name: name.to_string(),
                parallelism,
                index,
            });
        }
        Ok(self.chains[..c]
            .iter()
            .map(|c| c.parallelism)
            .sum::<usize>()
            + index)
    }
}

impl JobPlan {
    /// Flink's pipelined regions: the connected components of the subtask
    /// graph over its channels (all of weir's channels are pipelined). A
    /// forward-only job has one region per parallel slice; a job with
    /// `key_by`, `rebalance` or `broadcast` between all its operators is one
    /// region. Returns the subtask indices (chain by chain, then subtask) of
    /// each region, in order of their smallest subtask.
    pub fn regions(&self) -> Vec<Vec<usize>> {
        let offsets: Vec<usize> = self
            .chains
            .iter()
            .scan(0, |acc, c| {
                let o = *acc;
                *acc += c.parallelism;
                Some(o)
            })
            .collect();
        let n = self.num_subtasks();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(p: &mut [usize], x: usize) -> usize {
            let mut r = x;
            while p[r] != r {
                r = p[r];
            }
            let mut y = x;
            while p[y] != r {
                let next = p[y];
                p[y] = r;
                y = next;
            }
            r
        }
        let union = |p: &mut Vec<usize>, a: usize, b: usize| {
            let (ra, rb) = (find(p, a), find(p, b));
            if ra != rb {
                p[ra.max(rb)] = ra.min(rb);
            }
        };
        for ch in &self.channels {
            let (oa, ob) = (offsets[ch.from_chain], offsets[ch.to_chain]);
            let (pa, pb) = (
                self.chains[ch.from_chain].parallelism,
                self.chains[ch.to_chain].parallelism,
            );
            if ch.ship == ShipStrategy::Forward {
                for i in 0..pa {
                    union(&mut parent, oa + i, ob + i);
                }
            } else {
                for i in 0..pa {
                    union(&mut parent, oa + i, ob);
                }
                for j in 0..pb {
                    union(&mut parent, ob + j, ob);
                }
            }
        }
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> =
            std::collections::BTreeMap::new();
        for t in 0..n {
            let r = find(&mut parent, t);
            groups.entry(r).or_default().push(t);
        }
        groups.into_values().collect()
    }

    /// The display name of subtask `task` (`chain name (index)`).
    pub fn subtask_name(&self, task: usize) -> String {
        let mut t = task;
        for c in &self.chains {
            if t < c.parallelism {
                return format!("{} ({t})", c.name());
            }
            t -= c.parallelism;
        }
        format!("subtask {task}")
    }
}

impl fmt::Display for JobPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.chains {
            writeln!(
                f,
                "chain {}: {} (parallelism {})",
                c.id,
                c.name(),
                c.parallelism
            )?;
        }
        for e in &self.channels {
            writeln!(
                f,
                "channel: chain {} -> chain {} [{}]",
                e.from_chain, e.to_chain, e.ship
            )?;
        }
        Ok(())
    }
}

impl StreamGraph {
    /// Computes parallelism, partitioning and chains.
    pub(crate) fn plan(&self, conf: &Conf) -> Result<JobPlan> {
        if let Some(e) = self.errors.first() {
            return Err(Error::Graph(e.clone()));
        }
        if self.nodes.is_empty() {
            return Err(Error::Graph(
                "the job has no operators: add a source and a sink".into(),
            ));
        }
        if !self.nodes.iter().any(|n| n.is_sink) {
            return Err(Error::Graph(
                "the job has no sink: add one with add_sink".into(),
            ));
        }
        let default_p = conf.get(&options::PARALLELISM_DEFAULT);
        let max_p = conf.get(&options::MAX_PARALLELISM);
        let par: Vec<usize> = self
            .nodes
            .iter()
            .map(|n| n.parallelism.unwrap_or(default_p))
            .collect();
        let mut consumers = vec![0usize; self.nodes.len()];
        let mut ships = BTreeMap::new();
        for (d, node) in self.nodes.iter().enumerate() {
            for (ei, e) in node.inputs.iter().enumerate() {
                consumers[e.from] += 1;
                let ship = match &e.ship {
                    Ship::Auto if par[e.from] == par[d] => ShipStrategy::Forward,
                    Ship::Auto | Ship::Rebalance => ShipStrategy::Rebalance,
                    Ship::Forward if par[e.from] != par[d] => {
                        return Err(Error::Graph(format!(
                            "forward() from '{}' (parallelism {}) to '{}' (parallelism {}) needs equal parallelism",
                            self.nodes[e.from].name, par[e.from], node.name, par[d]
                        )))
                    }
                    Ship::Forward => ShipStrategy::Forward,
                    Ship::Broadcast => ShipStrategy::Broadcast,
                    Ship::Hash(_) => {
                        if par[d] > max_p {
                            return Err(Error::Graph(format!(
                                "keyed operator '{}' has parallelism {} above pipeline.max-parallelism {}",
                                node.name, par[d], max_p
                            )));
                        }
                        ShipStrategy::Hash
                    }
                };
                ships.insert((d, ei), ship);
            }
        }
        let mut chain_of = vec![usize::MAX; self.nodes.len()];
        let mut chains: Vec<ChainPlan> = Vec::new();
        let mut channels = Vec::new();
        for (d, node) in self.nodes.iter().enumerate() {
            let chained_from = match node.inputs.as_slice() {
                [e] if ships[&(d, 0)] == ShipStrategy::Forward
                    && e.side.is_none()
                    && consumers[e.from] == 1
                    && self.nodes[e.from].chainable
                    && node.chainable =>
                {
                    Some(e.from)
                }
                _ => None,
            };
            match chained_from {
                Some(u) => {
                    let c = chain_of[u];
                    chains[c].operators.push(node.name.clone());
                    chains[c].nodes.push(d);
                    chain_of[d] = c;
                }
                None => {
                    let c = chains.len();
                    chains.push(ChainPlan {
                        id: c,
                        operators: vec![node.name.clone()],
                        parallelism: par[d],
                        nodes: vec![d],
                    });
                    chain_of[d] = c;
                    for (ei, e) in node.inputs.iter().enumerate() {
                        channels.push(ChannelPlan {
                            from_chain: chain_of[e.from],
                            to_chain: c,
                            ship: ships[&(d, ei)],
                            from_node: e.from,
                            to_node: d,
                            to_edge: ei,
                        });
                    }
                }
            }
        }
        Ok(JobPlan {
            chains,
            channels,
            node_parallelism: par,
        })
    }
}

/// Record counters of one operator: one slot per subtask, each on a cache
/// line of its own, so parallel subtasks never contend on a counter. Updated
/// with one relaxed atomic add per batch (never per record).
#[derive(Debug)]
pub struct OperatorCounters {
    subtasks: Box<[SubtaskCounts]>,
}

/// The record counters of one subtask of an operator.
#[derive(Debug)]
#[repr(align(64))]
pub struct SubtaskCounts {
    /// Records that entered the operator (Flink's `numRecordsIn`).
    pub records_in: AtomicU64,
    /// Records the operator emitted (Flink's `numRecordsOut`).
    pub records_out: AtomicU64,
    /// The last watermark the operator received (Flink's
    /// `currentInputWatermark`; `i64::MIN` before the first).
    pub input_watermark: std::sync::atomic::AtomicI64,
    /// Records the function received but could not use (Flink's
    /// `numRecordsInErrors`): counted by the function itself through
    /// [`RuntimeContext::num_records_in_errors`], which is this counter.
    pub records_in_errors: Counter,
}

impl Default for SubtaskCounts {
    fn default() -> Self {
        SubtaskCounts {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            input_watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            records_in_errors: Counter::default(),
        }
    }
}

impl OperatorCounters {
    /// Counters for an operator of `parallelism` subtasks.
    pub fn new(parallelism: usize) -> Self {
        OperatorCounters {
            subtasks: (0..parallelism.max(1))
                .map(|_| SubtaskCounts::default())
                .collect(),
        }
    }

    /// The counters of every subtask, by subtask index.
    pub fn subtasks(&self) -> &[SubtaskCounts] {
        &self.subtasks
    }

    /// Records in, over all subtasks.
    pub fn records_in(&self) -> u64 {
        self.subtasks
            .iter()
            .map(|s| s.records_in.load(Ordering::Relaxed))
            .sum()
    }

    /// Records out, over all subtasks.
    pub fn records_out(&self) -> u64 {
        self.subtasks
            .iter()
            .map(|s| s.records_out.load(Ordering::Relaxed))
            .sum()
    }

    /// Records in errors (Flink's `numRecordsInErrors`), over all subtasks.
    pub fn records_in_errors(&self) -> u64 {
        self.subtasks
            .iter()
            .map(|s| s.records_in_errors.count())
            .sum()
    }

    /// The smallest input watermark over the subtasks (`i64::MIN`: not every subtask has one).
    pub fn input_watermark(&self) -> i64 {
        self.subtasks
            .iter()
            .map(|s| s.input_watermark.load(Ordering::Relaxed))
            .min()
            .unwrap_or(i64::MIN)
    }
}

/// One subtask's handle on its operator's counters.
#[derive(Clone)]
pub(crate) struct SubtaskCounter {
    op: Arc<OperatorCounters>,
    index: usize,
}

impl SubtaskCounter {
    pub(crate) fn new(op: Arc<OperatorCounters>, index: usize) -> Self {
        let index = index.min(op.subtasks.len() - 1);
        SubtaskCounter { op, index }
    }

    #[inline]
    pub(crate) fn add_in(&self, n: usize) {
        self.op.subtasks[self.index]
            .records_in
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn add_out(&self, n: usize) {
        self.op.subtasks[self.index]
            .records_out
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The subtask's `numRecordsInErrors`, for its [`RuntimeContext`].
    pub(crate) fn records_in_errors(&self) -> Counter {
        self.op.subtasks[self.index].records_in_errors.clone()
    }

    /// The operator received watermark `w` (once per watermark, not per record).
    pub(crate) fn set_input_watermark(&self, w: i64) {
        self.op.subtasks[self.index]
            .input_watermark
            .store(w, Ordering::Relaxed);
    }
}

/// One operator of a chain, instantiated for one subtask.
pub(crate) struct ChainedOp {
    pub op: Box<dyn ChainOp>,
    pub ctx: RuntimeContext,
    pub counters: SubtaskCounter,
    pub in_len: LenFn,
    pub out_len: LenFn,
}

/// Where a subtask's records come from.
pub(crate) enum Head {
    Source {
        op: Box<dyn SourceOp>,
        ctx: RuntimeContext,
        counters: SubtaskCounter,
        out_len: LenFn,
    },
    Input(InputGate),
}

/// Everything one subtask actor needs to run.
pub(crate) struct SubtaskSpec {
    pub chain: String,
    pub chain_index: usize,
    /// Index among all subtasks of the job.
    pub task_index: usize,
    pub subtask: usize,
    pub parallelism: usize,
    /// `pipeline.max-parallelism` (recorded in each checkpoint's state files).
    pub max_parallelism: usize,
    pub input_codec: Option<(EncodeFn, DecodeFn)>,
    pub input_chunk: Option<ChunkFn>,
    pub signals: Arc<TaskSignals>,
    pub restore: Option<SubtaskRestore>,
    pub head: Head,
    pub ops: Vec<ChainedOp>,
    pub outputs: Vec<OutputEdge>,
    pub fanout_clone: CloneFn,
    pub source_batch_size: usize,
}

/// Where subtasks count their records (per operator) and account their
/// waits (per subtask, by index among all of the job's subtasks).
#[derive(Clone, Copy)]
pub(crate) struct Instruments<'a> {
    pub counters: &'a [Arc<OperatorCounters>],
    pub io: &'a [Arc<crate::waits::SubtaskIo>],
}

/// What a partitioner of an edge to `targets` subtasks needs from `conf`.
fn partition_setup(conf: &Conf, targets: usize) -> PartitionSetup {
    PartitionSetup {
        targets,
        max_parallelism: conf.get(&options::MAX_PARALLELISM),
        batch_size: conf.get(&options::BATCH_SIZE),
        segment_bytes: usize::try_from(conf.get(&options::SEGMENT_SIZE).0).unwrap_or(usize::MAX),
    }
}

/// The in-flight data of chains whose parallelism changed
/// (`SubtaskRestore::rescaled` of their subtask 0) spread over their new
/// subtasks by their input edges ([`crate::rescale`]).
fn spread_rescaled_channel_state(
    graph: &StreamGraph,
    plan: &JobPlan,
    conf: &Conf,
    restore: &mut [Vec<SubtaskRestore>],
) -> Result<()> {
    for (c, chain) in plan.chains.iter().enumerate() {
        let Some(first) = restore.get_mut(c).and_then(|r| r.first_mut()) else {
            continue;
        };
        if first.rescaled.is_empty() {
            continue;
        }
        let old = std::mem::take(&mut first.rescaled);
        let head = &graph.nodes[chain.nodes[0]];
        let codec = head.in_codec.ok_or_else(|| {
            Error::Restore(format!(
                "in-flight data for '{}', which has no input",
                chain.name()
            ))
        })?;
        let hash: Vec<&PartitionFactory> = head
            .inputs
            .iter()
            .filter_map(|e| match &e.ship {
                Ship::Hash(f) => Some(f),
                _ => None,
            })
            .collect();
        let broadcast = head
            .inputs
            .iter()
            .any(|e| matches!(e.ship, Ship::Broadcast));
        let spread = if broadcast || (!hash.is_empty() && hash.len() != head.inputs.len()) {
            crate::rescale::Spread::Refused(format!(
                "the checkpoint holds in-flight data of '{}' at another parallelism, and its \
                 inputs include a broadcast edge or mix keyed and unkeyed edges: that data cannot \
                 be spread over {} subtasks; restore at the old parallelism, or from an aligned \
                 checkpoint or a savepoint",
                chain.name(),
                chain.parallelism
            ))
        } else if let Some(f) = hash.first() {
            crate::rescale::Spread::ByKey((*f).clone(), partition_setup(conf, chain.parallelism))
        } else {
            crate::rescale::Spread::RoundRobin
        };
        let spread = crate::rescale::redistribute(old, chain.parallelism, codec, &spread)?;
        for (r, entries) in restore[c].iter_mut().zip(spread) {
            r.channel_state.extend(entries);
        }
    }
    Ok(())
}

/// Builds every subtask of `plan` with its channels.
#[allow(clippy::too_many_arguments)]
pub(crate) fn instantiate(
    graph: &StreamGraph,
    plan: &JobPlan,
    conf: &Conf,
    job_id: &str,
    run_id: &str,
    metrics: Instruments<'_>,
    watch: &mut Vec<ChannelWatch>,
    mut restore: Option<Vec<Vec<SubtaskRestore>>>,
    cluster: Option<&crate::exchange::ClusterWiring<'_>>,
) -> Result<Vec<SubtaskSpec>> {
    let Instruments { counters, io } = metrics;
    let checkpointing = crate::checkpoint::CheckpointConfig::from_conf(conf).enabled();
    let state_backend = crate::state::StateBackendConfig::from_conf(conf);
    let max_p = conf.get(&options::MAX_PARALLELISM);
    let auto_watermark_interval = conf.get(&options::AUTO_WATERMARK_INTERVAL);
    // The context shares the subtask's `numRecordsInErrors` with the
    // metrics; like every counter of `counters`, it outlives restarts.
    let ctx_for = |node: usize, subtask: usize, counter: &SubtaskCounter| RuntimeContext {
        job_id: job_id.to_string(),
        run_id: run_id.to_string(),
        operator: graph.nodes[node].name.clone(),
        subtask,
        parallelism: plan.node_parallelism[node],
        max_parallelism: max_p,
        checkpointing,
        state_backend: state_backend.clone(),
        auto_watermark_interval,
        num_records_in_errors: counter.records_in_errors(),
    };
    let Wiring {
        mut inputs,
        mut outputs,
        signals: gates,
    } = wire(graph, plan, conf, io, watch, cluster)?;
    if let Some(r) = restore.as_mut() {
        spread_rescaled_channel_state(graph, plan, conf, r)?;
    }
    let mut specs = Vec::with_capacity(plan.num_subtasks());
    for (c, chain) in plan.chains.iter().enumerate() {
        let tail = *chain
            .nodes
            .last()
            .ok_or_else(|| Error::Internal("empty chain".into()))?;
        for i in 0..chain.parallelism {
            let mut ops = Vec::new();
            let mut head = None;
            for &n in &chain.nodes {
                let node = &graph.nodes[n];
                match &node.kind {
                    NodeKind::Source(f) => {
                        let counters = SubtaskCounter::new(counters[n].clone(), i);
                        head = Some(Head::Source {
                            op: f(),
                            ctx: ctx_for(n, i, &counters),
                            counters,
                            out_len: node.out_len,
                        })
                    }
                    NodeKind::Op(f) => {
                        let counters = SubtaskCounter::new(counters[n].clone(), i);
                        ops.push(ChainedOp {
                            op: f(),
                            ctx: ctx_for(n, i, &counters),
                            counters,
                            in_len: node.in_len.ok_or_else(|| {
                                Error::Internal("operator without input type".into())
                            })?,
                            out_len: node.out_len,
                        })
                    }
                }
            }
            let head = match head {
                Some(h) => h,
                None => Head::Input(InputGate::new(
                    std::mem::take(&mut inputs[c][i]),
                    gates[c][i].clone(),
                )),
            };
            let head_node = &graph.nodes[chain.nodes[0]];
            let task_index = specs.len();
            specs.push(SubtaskSpec {
                chain: chain.name(),
                chain_index: c,
                task_index,
                subtask: i,
                parallelism: chain.parallelism,
                max_parallelism: max_p,
                input_codec: head_node.in_codec,
                input_chunk: head_node.in_chunk,
                signals: gates[c][i].clone(),
                restore: restore.as_mut().map(|r| std::mem::take(&mut r[c][i])),
                head,
                ops,
                outputs: std::mem::take(&mut outputs[c][i]),
                fanout_clone: graph.nodes[tail].out_clone,
                source_batch_size: conf.get(&options::SOURCE_BATCH_SIZE),
            });
        }
    }
    Ok(specs)
}

/// The channels of every subtask, indexed `[chain][subtask]`.
struct Wiring {
    /// Input channels, in the order of the plan's channels.
    inputs: Vec<Vec<Vec<ChannelReceiver>>>,
    /// Output edges (a partitioner and its senders each).
    outputs: Vec<Vec<Vec<OutputEdge>>>,
    /// Wake-up signals, shared with the channels around the subtask.
    signals: Vec<Vec<Arc<TaskSignals>>>,
}

/// Connects every pair of subtasks the plan's channels link
/// ([`crate::exchange`]), with their partitioners; `watch` gets a watch on
/// each channel.
fn wire(
    graph: &StreamGraph,
    plan: &JobPlan,
    conf: &Conf,
    io: &[Arc<crate::waits::SubtaskIo>],
    watch: &mut Vec<ChannelWatch>,
    cluster: Option<&crate::exchange::ClusterWiring<'_>>,
) -> Result<Wiring> {
    let capacity = conf.get(&options::BUFFERS_PER_CHANNEL);
    let mut inputs: Vec<Vec<Vec<ChannelReceiver>>> = plan
        .chains
        .iter()
        .map(|c| (0..c.parallelism).map(|_| Vec::new()).collect())
        .collect();
    // Wake-up signals per subtask, shared with the channels around it.
    let offsets: Vec<usize> = plan
        .chains
        .iter()
        .scan(0, |acc, c| {
            let o = *acc;
            *acc += c.parallelism;
            Some(o)
        })
        .collect();
    let gates: Vec<Vec<Arc<TaskSignals>>> = plan
        .chains
        .iter()
        .zip(&offsets)
        .map(|(c, o)| {
            (0..c.parallelism)
                .map(|i| {
                    Arc::new(match io.get(o + i) {
                        Some(io) => TaskSignals::with_io(io.clone()),
                        None => TaskSignals::default(),
                    })
                })
                .collect()
        })
        .collect();
    let mut outputs: Vec<Vec<Vec<OutputEdge>>> = plan
        .chains
        .iter()
        .map(|c| (0..c.parallelism).map(|_| Vec::new()).collect())
        .collect();
    for (ci, ch) in plan.channels.iter().enumerate() {
        let codec = graph.nodes[ch.to_node].in_codec;
        let (pa, pb) = (
            plan.chains[ch.from_chain].parallelism,
            plan.chains[ch.to_chain].parallelism,
        );
        let edge = graph.nodes[ch.to_node]
            .inputs
            .get(ch.to_edge)
            .ok_or_else(|| Error::Internal("channel without a logical edge".into()))?;
        let side = edge.side.as_ref().map(|s| s.0.clone());
        let side_clone = edge.side.as_ref().map(|s| s.1);
        if ch.ship == ShipStrategy::Forward {
            for i in 0..pa {
                let (tx, rx, w) = connect_placed(
                    cluster,
                    ci,
                    capacity,
                    (offsets[ch.from_chain] + i, &gates[ch.from_chain][i]),
                    (offsets[ch.to_chain] + i, &gates[ch.to_chain][i]),
                    codec,
                )?;
                watch.push(w);
                inputs[ch.to_chain][i].push(rx);
                outputs[ch.from_chain][i].push(
                    OutputEdge::new(Box::new(Forward), vec![tx]).for_side(side.clone(), side_clone),
                );
            }
            continue;
        }
        for (i, outs) in outputs[ch.from_chain].iter_mut().enumerate() {
            let mut senders = Vec::with_capacity(pb);
            for (j, ins) in inputs[ch.to_chain].iter_mut().enumerate() {
                let (tx, rx, w) = connect_placed(
                    cluster,
                    ci,
                    capacity,
                    (offsets[ch.from_chain] + i, &gates[ch.from_chain][i]),
                    (offsets[ch.to_chain] + j, &gates[ch.to_chain][j]),
                    codec,
                )?;
                watch.push(w);
                senders.push(tx);
                ins.push(rx);
            }
            let setup = partition_setup(conf, pb);
            let partition: Box<dyn crate::exchange::Partition> = match (&edge.ship, ch.ship) {
                (Ship::Hash(f), _) => f(setup),
                (_, ShipStrategy::Broadcast) => Box::new(Broadcast {
                    targets: pb,
                    clone: side_clone.unwrap_or(graph.nodes[ch.from_node].out_clone),
                }),
                _ => Box::new(Rebalance {
                    next: i % pb,
                    targets: pb,
                }),
            };
            outs.push(OutputEdge::new(partition, senders).for_side(side.clone(), side_clone));
        }
    }
    Ok(Wiring {
        inputs,
        outputs,
        signals: gates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(id: usize, operators: &[&str], parallelism: usize) -> ChainPlan {
        ChainPlan {
            id,
            operators: operators.iter().map(|o| o.to_string()).collect(),
            parallelism,
            nodes: Vec::new(),
        }
    }

    fn plan() -> JobPlan {
        JobPlan {
            chains: vec![
                chain(0, &["Source", "Tokenize"], 2),
                chain(1, &["Count", "Sink"], 2),
            ],
            channels: Vec::new(),
            node_parallelism: Vec::new(),
        }
    }

    #[test]
    fn chain_named_accepts_operator_and_chain_names() {
        let p = plan();
        assert_eq!(p.chain_named("Tokenize"), Ok(0));
        assert_eq!(p.chain_named("Count"), Ok(1));
        assert_eq!(p.chain_named("Sink"), Ok(1));
        assert_eq!(p.chain_named("Count -> Sink"), Ok(1));
        assert_eq!(p.chain_named("Source -> Tokenize"), Ok(0));
    }

    #[test]
    fn chain_named_lists_the_names_that_would_match() {
        let e = plan().chain_named("Count -> Sinks").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no operator named 'Count -> Sinks' (operators and chains: \
             'Source -> Tokenize', 'Source', 'Tokenize', 'Count -> Sink', 'Count', 'Sink')"
        );
        assert!(e.is_not_found());
        // Part of a chain's name is not a name.
        assert!(plan().chain_named("Count ->").is_err());
        assert!(plan().chain_named("").is_err());
    }

    #[test]
    fn subtask_named_counts_the_subtasks_of_the_chains_before() {
        let p = plan();
        let (p0, p1) = (p.chains[0].parallelism, p.chains[1].parallelism);
        assert_eq!(p.subtask_named("Tokenize", 0), Ok(0));
        assert_eq!(p.subtask_named("Count -> Sink", 0), Ok(p0));
        assert_eq!(p.subtask_named("Sink", p1 - 1), Ok(p0 + p1 - 1));
        let e = p.subtask_named("Count", p1).unwrap_err();
        assert_eq!(
            e,
            KillError::NoSubtask {
                name: "Count".into(),
                parallelism: p1,
                index: p1
            }
        );
        assert!(e.is_not_found());
        assert!(!KillError::Restarting.is_not_found());
    }
}
