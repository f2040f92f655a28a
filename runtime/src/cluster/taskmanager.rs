//! The TaskManager: registers its slots with the JobManager, runs the
//! subtasks of the generation it is given, reports back.
//!
//! Three pieces, each one concept:
//! - the **session loop** (`run`): binds the data plane, dials the
//!   JobManager (retrying for `heartbeat.timeout`), registers, forwards
//!   commands to the executor actor, sends heartbeats with the record
//!   counts of its subtasks, and notices a lost JobManager (stream ended, or
//!   silent for `heartbeat.timeout`): then its subtasks are stopped and it
//!   registers again, or exits when it cannot within `heartbeat.timeout`;
//! - the **executor actor** (`TaskExecutorActor`, Flink's TaskExecutor):
//!   the subtasks' supervisor; on `Deploy` of generation g it stops what
//!   runs, waits for the old processing loops to end (invariant 1 of
//!   `super`), restores from the shared checkpoint storage, instantiates
//!   the plan with channels placed (in-process queues between its own
//!   subtasks, network channels to other TaskManagers) and deploys its
//!   subtasks with the in-process `LocalExecutor`; each subtask's end is
//!   reported with its generation;
//! - the **coordinator gateway** (`Gateway`): the checkpoint coordinator
//!   as the subtasks see it (an `ActorRef<CoordMsg>`): it sends their
//!   acknowledgements, declines and "finished" reports to the JobManager,
//!   tagged with the generation of the subtask that sent them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use super::rpc::{DeploySpec, Envelope, SubtaskCounts, ToJobManager, ToTaskManager, WirePhases};
use crate::checkpoint::CheckpointConfig;
use crate::config::{options, Conf};
use crate::coordinator::{CoordMsg, TaskRef};
use crate::deploy::{LocalExecutor, TaskExecutor};
use crate::exchange::net::NetworkEnv;
use crate::graph::{JobPlan, OperatorCounters, StreamGraph};
use crate::job_shared::JobShared;
use crate::task::CheckpointLink;
use crate::Error;

/// Where messages to the JobManager go (the current session's stream).
#[derive(Clone, Default)]
struct Uplink(Arc<Mutex<Option<UnboundedSender<Envelope<ToJobManager>>>>>);

impl Uplink {
    fn send(&self, job: &str, generation: u64, body: ToJobManager) {
        if let Some(tx) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(Envelope {
                job: job.to_string(),
                generation,
                body,
            });
        }
    }

    fn set(&self, tx: Option<UnboundedSender<Envelope<ToJobManager>>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = tx;
    }
}

/// Which subtask (and generation) each subtask actor is.
type ActorTasks = Arc<Mutex<HashMap<ActorId, (usize, u64)>>>;

/// Runs this process as a TaskManager of the job `name` until the job ends
/// or the JobManager is gone; returns the process's exit status.
pub(crate) async fn run(graph: StreamGraph, plan: JobPlan, conf: Conf, name: String) -> i32 {
    match serve(graph, plan, conf, name).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            tracing::error!(error = %e, "TaskManager stops");
            1
        }
    }
}

async fn serve(graph: StreamGraph, plan: JobPlan, conf: Conf, name: String) -> crate::Result<i32> {
    let host = conf.get(&options::TASKMANAGER_HOST);
    let port = conf.get(&options::TASKMANAGER_DATA_PORT);
    let bind = format!("{host}:{port}");
    let addr = tokio::net::lookup_host(&bind)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Cluster(format!("taskmanager.host '{host}' does not resolve")))?;
    let net = NetworkEnv::bind(addr).await.map_err(|e| {
        Error::Cluster(format!(
            "the TaskManager cannot listen on {bind} (taskmanager.host, taskmanager.data.port): {e}"
        ))
    })?;
    let data_address = net.local_addr().to_string();
    let slots = conf.get(&options::TASKMANAGER_SLOTS);
    let interval = conf.get(&options::HEARTBEAT_INTERVAL);
    let timeout = conf.get(&options::HEARTBEAT_TIMEOUT);
    let endpoint = super::jobmanager_endpoint(&conf);
    let pid = std::process::id();
    let id = format!("{data_address}-{pid}");
    let plan_hash = super::plan_fingerprint(&plan);
    let counters: Vec<Arc<OperatorCounters>> = plan
        .node_parallelism
        .iter()
        .map(|p| Arc::new(OperatorCounters::new(*p)))
        .collect();
    let uplink = Uplink::default();
    let job_id: Arc<Mutex<String>> = Arc::default();
    let actor_tasks: ActorTasks = Arc::default();
    let mine: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let (gateway, _) = Actor::spawn(
        None,
        Gateway,
        GatewayArgs {
            uplink: uplink.clone(),
            job_id: job_id.clone(),
            tasks: actor_tasks.clone(),
        },
    )
    .await
    .map_err(|e| Error::Internal(format!("cannot start the coordinator gateway: {e}")))?;
    let (executor, _) = Actor::spawn(
        None,
        TaskExecutorActor,
        ExecutorArgs {
            graph,
            plan,
            conf: conf.clone(),
            net,
            data_address: data_address.clone(),
            uplink: uplink.clone(),
            job_id: job_id.clone(),
            tasks: actor_tasks,
            gateway,
            counters: counters.clone(),
            mine: mine.clone(),
        },
    )
    .await
    .map_err(|e| Error::Internal(format!("cannot start the task executor: {e}")))?;
    eprintln!(
        "TaskManager {id} of job '{name}': {slots} slot(s), data port {data_address}, JobManager {endpoint}"
    );
    // SIGTERM / SIGINT stop the TaskManager: its subtasks are stopped and
    // the JobManager sees the session end (and fails over what ran here).
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Internal(format!("cannot watch SIGTERM: {e}")))?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Error::Internal(format!("cannot watch SIGINT: {e}")))?;
    let mut registered_once = false;
    let mut lost_since = Instant::now();
    loop {
        // Dial and register, for up to heartbeat.timeout since the
        // JobManager was last seen (or since start).
        let (tx, rx) = unbounded_channel::<Envelope<ToJobManager>>();
        tx.send(Envelope {
            job: String::new(),
            generation: 0,
            body: ToJobManager::Register {
                id: id.clone(),
                data_address: data_address.clone(),
                slots,
                plan: plan_hash,
                pid,
            },
        })
        .ok();
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let attempt = tokio::select! {
            a = super::rpc::connect(endpoint.clone(), Duration::from_secs(1), out) => a,
            _ = sigterm.recv() => return Ok(shut_down(&executor, &uplink, "SIGTERM").await),
            _ = sigint.recv() => return Ok(shut_down(&executor, &uplink, "SIGINT").await),
        };
        let mut inbound = match attempt {
            Ok(s) => s,
            Err(e) => {
                if lost_since.elapsed() >= timeout {
                    executor.stop(None);
                    let what = if registered_once {
                        "lost the JobManager"
                    } else {
                        "found no JobManager"
                    };
                    return Err(Error::Cluster(format!(
                        "{what} at {endpoint} for heartbeat.timeout ({timeout:?}): {e}. Is the JobManager running (jobmanager.rpc.address, jobmanager.rpc.port)?"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The answer to the registration.
        let answer = tokio::select! {
            a = tokio::time::timeout(timeout, inbound.next()) => a,
            _ = sigterm.recv() => return Ok(shut_down(&executor, &uplink, "SIGTERM").await),
            _ = sigint.recv() => return Ok(shut_down(&executor, &uplink, "SIGINT").await),
        };
        match answer {
            Ok(Some(Ok(env))) => match env.body {
                ToTaskManager::Registered { job_name } => {
                    *job_id.lock().unwrap_or_else(|p| p.into_inner()) = env.job.clone();
                    if !registered_once {
                        eprintln!(
                            "registered with the JobManager of job '{job_name}' ({})",
                            env.job
                        );
                    }
                    registered_once = true;
                }
                ToTaskManager::Refused { reason } => {
                    executor.stop(None);
                    return Err(Error::Cluster(format!(
                        "the JobManager refused this TaskManager: {reason}"
                    )));
                }
                other => {
                    tracing::warn!(?other, "unexpected first message from the JobManager");
                    continue;
                }
            },
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        uplink.set(Some(tx.clone()));
        // The session: commands in, heartbeats out.
        let mut beat = tokio::time::interval(interval);
        let mut last_heard = Instant::now();
        let why = loop {
            tokio::select! {
                m = inbound.next() => match m {
                    Some(Ok(env)) => {
                        last_heard = Instant::now();
                        if let ToTaskManager::JobEnded { exit_code, message } = &env.body {
                            uplink.set(None);
                            let _ = executor.cast(ExecutorMsg::FromJobManager(Envelope { job: env.job.clone(), generation: u64::MAX, body: ToTaskManager::Cancel }));
                            executor.stop(None);
                            eprintln!("the job ended ({message}); TaskManager exits");
                            // Let the stops reach the subtasks.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            return Ok(*exit_code);
                        }
                        let _ = executor.cast(ExecutorMsg::FromJobManager(env));
                    }
                    Some(Err(status)) => break format!("connection broken: {}", status.message()),
                    None => break "the JobManager closed the session".to_string(),
                },
                _ = sigterm.recv() => return Ok(shut_down(&executor, &uplink, "SIGTERM").await),
                _ = sigint.recv() => return Ok(shut_down(&executor, &uplink, "SIGINT").await),
                _ = beat.tick() => {
                    if last_heard.elapsed() > timeout {
                        break format!("no message for {timeout:?} (heartbeat.timeout)");
                    }
                    let counts = counts_of(&counters, &mine);
                    let generation = ractor::call_t!(executor, ExecutorMsg::Generation, 5_000).unwrap_or(0);
                    let job = job_id.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let _ = tx.send(Envelope { job, generation, body: ToJobManager::Heartbeat { counts } });
                }
            }
        };
        uplink.set(None);
        tracing::warn!("JobManager session lost: {why}; stopping subtasks and registering again");
        eprintln!("JobManager session lost: {why}; stopping subtasks and registering again");
        let _ = executor.cast(ExecutorMsg::SessionLost);
        lost_since = last_heard;
    }
}

/// A signal asked the TaskManager to stop: its subtasks stop, the session
/// ends; the exit status (0: a requested stop).
async fn shut_down(executor: &ActorRef<ExecutorMsg>, uplink: &Uplink, signal: &str) -> i32 {
    eprintln!(
        "received {signal}: stopping the TaskManager (the JobManager fails over its subtasks)"
    );
    let _ = executor.cast(ExecutorMsg::SessionLost);
    // Let the stops reach the subtasks before the process goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    uplink.set(None);
    executor.stop(None);
    0
}

/// Records that entered the operators `of` (their `numRecordsIn`).
fn processed(counters: &[Arc<OperatorCounters>], of: &[(usize, usize)]) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    of.iter()
        .filter_map(|&(node, subtask)| counters.get(node)?.subtasks().get(subtask))
        .map(|s| s.records_in.load(Relaxed))
        .sum()
}

/// The record counts of this TaskManager's subtasks.
fn counts_of(
    counters: &[Arc<OperatorCounters>],
    mine: &Mutex<Vec<(usize, usize)>>,
) -> Vec<SubtaskCounts> {
    use std::sync::atomic::Ordering::Relaxed;
    mine.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|&(node, subtask)| {
            let s = counters.get(node)?.subtasks().get(subtask)?;
            Some(SubtaskCounts {
                node,
                subtask,
                records_in: s.records_in.load(Relaxed),
                records_out: s.records_out.load(Relaxed),
            })
        })
        .collect()
}

pub(crate) enum ExecutorMsg {
    FromJobManager(Envelope<ToTaskManager>),
    /// The JobManager session broke: stop every subtask.
    SessionLost,
    /// Deploy the pending generation once the old subtasks are gone.
    TryDeploy,
    /// The generation this TaskManager runs.
    Generation(ractor::RpcReplyPort<u64>),
}

struct TaskExecutorActor;

struct ExecutorArgs {
    graph: StreamGraph,
    plan: JobPlan,
    conf: Conf,
    net: NetworkEnv,
    data_address: String,
    uplink: Uplink,
    job_id: Arc<Mutex<String>>,
    tasks: ActorTasks,
    gateway: ActorRef<CoordMsg>,
    counters: Vec<Arc<OperatorCounters>>,
    mine: Arc<Mutex<Vec<(usize, usize)>>>,
}

struct ExecutorState {
    args: ExecutorArgs,
    executor: LocalExecutor,
    shared: Arc<JobShared>,
    generation: u64,
    /// The job id of the generation it runs.
    job: String,
    refs: HashMap<usize, TaskRef>,
    pending: Option<DeploySpec>,
    /// The subtasks of the generation being deployed.
    pending_tasks: Vec<usize>,
    io: Vec<Arc<crate::metrics::SubtaskIo>>,
    storage: Option<crate::checkpoint::storage::CheckpointStorage>,
    /// The generation deployed last (its progress watcher stops when it changes).
    current: Arc<std::sync::atomic::AtomicU64>,
}

impl ExecutorState {
    fn job(&self) -> String {
        self.args
            .job_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn stop_all(&mut self, reason: &str) {
        self.current.store(0, std::sync::atomic::Ordering::SeqCst);
        self.executor.stop_all(reason);
        self.refs.clear();
    }

    /// Instantiates and deploys the pending generation.
    async fn deploy(
        &mut self,
        myself: &ActorRef<ExecutorMsg>,
        spec: DeploySpec,
    ) -> crate::Result<()> {
        let generation = self.generation;
        let job_id = self.job();
        self.args.net.retire(generation);
        let max_p = self.args.conf.get(&options::MAX_PARALLELISM);
        let restore = match &spec.restore {
            Some(dir) => {
                let loaded =
                    crate::checkpoint::storage::load_checkpoint(std::path::Path::new(dir))?;
                Some(crate::restore::assign(&loaded, &self.args.plan, max_p)?)
            }
            None => None,
        };
        let cfg = CheckpointConfig::from_conf(&self.args.conf);
        let link = if cfg.enabled() {
            if self.storage.is_none() {
                self.storage = Some(crate::checkpoint::storage::CheckpointStorage::attach(
                    &cfg.dir, &job_id,
                )?);
            }
            self.storage.clone().map(|storage| CheckpointLink {
                coordinator: self.args.gateway.clone(),
                storage,
                mode: cfg.barrier_mode(),
            })
        } else {
            None
        };
        let mut watches = Vec::new();
        let wiring = crate::exchange::ClusterWiring {
            here: &self.args.data_address,
            placement: &spec.placement,
            net: &self.args.net,
            generation,
        };
        let specs = crate::graph::instantiate(
            &self.args.graph,
            &self.args.plan,
            &self.args.conf,
            &job_id,
            // The JobManager's deployments count from `leader generation << 32`.
            &crate::ha::run_id(&job_id, generation >> 32),
            crate::graph::Instruments {
                counters: &self.args.counters,
                io: &self.io,
            },
            &mut watches,
            restore,
            Some(&wiring),
        )?;
        let mut mine = Vec::new();
        for spec in specs {
            if !self.pending_tasks.contains(&spec.task_index) {
                continue;
            }
            let index = spec.task_index;
            let chain = &self.args.plan.chains[spec.chain_index];
            for &n in &chain.nodes {
                mine.push((n, spec.subtask));
            }
            let (i, task) = self
                .executor
                .deploy(&myself.get_cell(), spec, &self.shared, &link)
                .await
                .map_err(|e| Error::Internal(format!("cannot start subtask {index}: {e}")))?;
            self.args
                .tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(task.actor.get_id(), (i, generation));
            self.refs.insert(i, task);
        }
        // Progress for people and the recovery benchmark: when the first
        // record of this generation went through one of its operators.
        let before = processed(&self.args.counters, &mine);
        let (counters, watched) = (self.args.counters.clone(), mine.clone());
        let deployed = Instant::now();
        let current = self.current.clone();
        current.store(generation, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if current.load(std::sync::atomic::Ordering::SeqCst) != generation {
                    return;
                }
                if processed(&counters, &watched) > before {
                    eprintln!(
                        "generation {generation}: first record processed {} ms after the deployment (at {} ms since the epoch)",
                        deployed.elapsed().as_millis(),
                        crate::checkpoint::now_ms()
                    );
                    return;
                }
            }
        });
        *self.args.mine.lock().unwrap_or_else(|p| p.into_inner()) = mine;
        self.args
            .uplink
            .send(&job_id, generation, ToJobManager::Deployed);
        Ok(())
    }
}

impl Actor for TaskExecutorActor {
    type Msg = ExecutorMsg;
    type State = ExecutorState;
    type Arguments = ExecutorArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ExecutorMsg>,
        args: ExecutorArgs,
    ) -> Result<ExecutorState, ActorProcessingErr> {
        let io = (0..args.plan.num_subtasks())
            .map(|_| Arc::default())
            .collect();
        Ok(ExecutorState {
            args,
            executor: LocalExecutor::default(),
            shared: Arc::new(JobShared::default()),
            generation: 0,
            job: String::new(),
            refs: HashMap::new(),
            pending: None,
            pending_tasks: Vec::new(),
            io,
            storage: None,
            current: Arc::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ExecutorMsg>,
        msg: ExecutorMsg,
        st: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ExecutorMsg::Generation(reply) => {
                let _ = reply.send(st.generation);
            }
            ExecutorMsg::SessionLost => {
                st.pending = None;
                st.stop_all("the JobManager was lost");
            }
            ExecutorMsg::TryDeploy => try_deploy(&myself, st).await,
            ExecutorMsg::FromJobManager(env) => {
                // Generations are ordered within one job id; a JobManager of
                // another job (a non-HA restart) starts its own count.
                if env.job == st.job && env.generation < st.generation {
                    tracing::debug!(
                        generation = env.generation,
                        current = st.generation,
                        "command of an older generation ignored"
                    );
                    return Ok(());
                }
                match env.body {
                    ToTaskManager::Deploy(spec) => {
                        st.generation = env.generation;
                        st.job = env.job.clone();
                        st.stop_all("a new generation is deployed");
                        st.pending = Some(spec);
                        try_deploy(&myself, st).await;
                    }
                    ToTaskManager::Control { task, control } => {
                        if env.generation == st.generation {
                            if let Some(r) = st.refs.get(&task) {
                                let _ = r.actor.send_message(control);
                            }
                        }
                    }
                    ToTaskManager::Stop { task } => {
                        if env.generation == st.generation {
                            st.executor.stop(task, "stopped by the JobManager");
                        }
                    }
                    ToTaskManager::Kill { task } => {
                        if env.generation == st.generation {
                            st.executor.kill(task);
                        }
                    }
                    ToTaskManager::Cancel => {
                        st.generation = st.generation.max(env.generation);
                        st.pending = None;
                        st.stop_all("cancelled by the JobManager");
                    }
                    ToTaskManager::Heartbeat
                    | ToTaskManager::Registered { .. }
                    | ToTaskManager::Refused { .. }
                    | ToTaskManager::JobEnded { .. } => {}
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<ExecutorMsg>,
        evt: SupervisionEvent,
        st: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        let id = match &evt {
            SupervisionEvent::ActorTerminated(c, ..) | SupervisionEvent::ActorFailed(c, _) => {
                c.get_id()
            }
            _ => return Ok(()),
        };
        let Some(end) = st.executor.ended(&evt) else {
            return Ok(());
        };
        let known = st
            .args
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let (Some(task), Some((_, generation))) = (end.task, known) {
            if st.refs.get(&task).is_some_and(|r| r.actor.get_id() == id) {
                st.refs.remove(&task);
            }
            let job = st.job();
            // The subtask's final counts reach the JobManager before its end.
            let counts = counts_of(&st.args.counters, &st.args.mine);
            st.args
                .uplink
                .send(&job, generation, ToJobManager::Heartbeat { counts });
            st.args.uplink.send(
                &job,
                generation,
                ToJobManager::Ended {
                    task,
                    failure: end.failure,
                    killed: end.killed,
                },
            );
        }
        Ok(())
    }
}

/// Deploys the pending generation once every older subtask has ended and
/// its processing loop is gone; else looks again in 2 ms.
async fn try_deploy(myself: &ActorRef<ExecutorMsg>, st: &mut ExecutorState) {
    if st.pending.is_none() {
        return;
    }
    if st.executor.running() > 0 || st.shared.live_loops() > 0 {
        myself.send_after(Duration::from_millis(2), || ExecutorMsg::TryDeploy);
        return;
    }
    let Some(spec) = st.pending.take() else {
        return;
    };
    st.pending_tasks = spec.tasks.clone();
    if let Err(e) = st.deploy(myself, spec).await {
        tracing::error!(error = %e, "deployment failed");
        st.stop_all("deployment failed");
        let job = st.job();
        st.args.uplink.send(
            &job,
            st.generation,
            ToJobManager::DeployFailed {
                reason: e.to_string(),
            },
        );
    }
}

/// The checkpoint coordinator as this TaskManager's subtasks see it.
struct Gateway;

struct GatewayArgs {
    uplink: Uplink,
    job_id: Arc<Mutex<String>>,
    tasks: ActorTasks,
}

impl Actor for Gateway {
    type Msg = CoordMsg;
    type State = GatewayArgs;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        _: ActorRef<CoordMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<CoordMsg>,
        msg: CoordMsg,
        st: &mut GatewayArgs,
    ) -> Result<(), ActorProcessingErr> {
        let from = match &msg {
            CoordMsg::Ack(a) => a.from,
            CoordMsg::Decline { from, .. } => *from,
            CoordMsg::TaskFinished(_, from) => *from,
            _ => return Ok(()),
        };
        let Some((task, generation)) = st
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&from)
            .copied()
        else {
            return Ok(()); // a subtask already gone
        };
        let body = match msg {
            CoordMsg::Ack(a) => ToJobManager::Ack {
                task,
                id: a.id,
                handle: a.handle,
                stats: a.stats,
                phases: WirePhases::from_phases(&a.phases),
            },
            CoordMsg::Decline {
                id,
                reason,
                finished,
                ..
            } => ToJobManager::Decline {
                task,
                id,
                reason,
                finished,
            },
            CoordMsg::TaskFinished(..) => ToJobManager::Finished { task },
            _ => return Ok(()),
        };
        let job = st.job_id.lock().unwrap_or_else(|p| p.into_inner()).clone();
        st.uplink.send(&job, generation, body);
        Ok(())
    }
}
