//! The JobManager's side of cluster mode: the TaskManager sessions, the
//! placement of each generation, and the task executor that stands a proxy
//! actor in for every remote subtask.
//!
//! One record's path does not come here (records go TaskManager to
//! TaskManager); one barrier's does only as control: the coordinator casts
//! `Trigger` to a source's proxy, the proxy sends it to the source's
//! TaskManager, and the subtasks' acknowledgements come back on their
//! sessions and are cast to the coordinator with the proxy's actor id, as if
//! the proxy had acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tonic::Status;

use super::placement::{place, Offer};
use super::rpc::{
    DeploySpec, Envelope, InboundStream, OutboundStream, SessionHandler, SubtaskCounts,
    ToJobManager, ToTaskManager,
};
use crate::config::{options, Conf};
use crate::coordinator::{Ack, CheckpointControl, CoordMsg, TaskRef};
use crate::deploy::{LocalExecutor, TaskExecutor};
use crate::graph::{Head, OperatorCounters, SubtaskSpec};
use crate::job_shared::JobShared;
use crate::task::CheckpointLink;
use crate::{Error, Result};

/// A TaskManager as the JobManager knows it (the REST API's `/taskmanagers`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskManagerInfo {
    /// Its id (`host:data-port`, pid).
    pub id: String,
    /// Where other TaskManagers reach its data plane.
    pub data_address: String,
    /// Its process id.
    pub pid: u32,
    /// Slots it offers.
    pub slots: usize,
    /// Slots the current generation uses.
    pub slots_used: usize,
    /// When it registered (ms since the epoch).
    pub registered_ms: u64,
    /// Milliseconds since its last heartbeat or message.
    pub last_heartbeat_age_ms: u64,
    /// The subtasks of the current generation it runs (`chain (i/p)` names).
    pub subtasks: Vec<usize>,
}

struct Session {
    session: u64,
    id: String,
    data_address: String,
    slots: usize,
    pid: u32,
    tx: UnboundedSender<std::result::Result<Envelope<ToTaskManager>, Status>>,
    last_seen: Instant,
    registered_ms: u64,
}

#[derive(Default)]
struct State {
    sessions: Vec<Session>,
    next_session: u64,
    generation: u64,
    /// Data address of the TaskManager of each subtask, current generation.
    placement: Vec<String>,
    proxies: HashMap<usize, ActorRef<ProxyMsg>>,
    coordinator: Option<ActorRef<CoordMsg>>,
    /// The job ended: its exit status, told to every TaskManager.
    ended: Option<(i32, String)>,
    /// TaskManagers lost so far (for the REST API and the logs).
    lost: Vec<(u64, String)>,
}

/// The JobManager's cluster state; shared by the gRPC sessions, the
/// heartbeat task and the job supervisor's executor.
pub(crate) struct ClusterManager {
    job_id: String,
    job_name: String,
    plan_hash: u64,
    parallelism: Vec<usize>,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    slot_timeout: Duration,
    counters: Vec<Arc<OperatorCounters>>,
    state: Mutex<State>,
    /// A TaskManager registered or was lost, or the job was cancelled.
    changed: tokio::sync::Notify,
    /// The job was cancelled: a wait for slots ends at once.
    cancelled: std::sync::atomic::AtomicBool,
    /// The RPC endpoint's address.
    pub(crate) address: std::net::SocketAddr,
}

fn now_ms() -> u64 {
    crate::checkpoint::now_ms()
}

impl ClusterManager {
    /// Binds the RPC endpoint (`jobmanager.rpc.address:port`) and starts
    /// serving sessions and heartbeats on `runtime`.
    pub(crate) fn start(
        runtime: &tokio::runtime::Handle,
        conf: &Conf,
        job_id: &str,
        job_name: &str,
        plan: &crate::graph::JobPlan,
        counters: Vec<Arc<OperatorCounters>>,
        generation_base: u64,
    ) -> Result<Arc<ClusterManager>> {
        let host = conf.get(&options::JOBMANAGER_RPC_ADDRESS);
        let port = conf.get(&options::JOBMANAGER_RPC_PORT);
        let bind = format!("{host}:{port}");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&bind))
            .map_err(|e| {
                Error::Cluster(format!(
                    "the JobManager cannot listen on {bind} (jobmanager.rpc.address, jobmanager.rpc.port): {e}"
                ))
            })?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::Cluster(format!("JobManager RPC address: {e}")))?;
        let cm = Arc::new(ClusterManager {
            job_id: job_id.to_string(),
            job_name: job_name.to_string(),
            plan_hash: super::plan_fingerprint(plan),
            parallelism: plan.chains.iter().map(|c| c.parallelism).collect(),
            heartbeat_interval: conf.get(&options::HEARTBEAT_INTERVAL),
            heartbeat_timeout: conf.get(&options::HEARTBEAT_TIMEOUT),
            slot_timeout: conf.get(&options::SLOT_REQUEST_TIMEOUT),
            counters,
            // Deployments count up from the base: with high availability
            // `leader generation << 32`, so a new JobManager's deployments
            // are newer, for its TaskManagers, than any of an old one's.
            state: Mutex::new(State {
                generation: generation_base,
                ..State::default()
            }),
            changed: tokio::sync::Notify::new(),
            cancelled: Default::default(),
            address,
        });
        let service = super::rpc::JobManagerService(Arc::new(Handler(Arc::downgrade(&cm))));
        runtime.spawn(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
            {
                tracing::error!(error = %e, "the JobManager's RPC server stopped");
            }
        });
        let weak = Arc::downgrade(&cm);
        let every = cm.heartbeat_interval;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(cm) = weak.upgrade() else { return };
                cm.heartbeat();
            }
        });
        tracing::info!(%address, "JobManager RPC endpoint up");
        Ok(cm)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn envelope(&self, generation: u64, body: ToTaskManager) -> Envelope<ToTaskManager> {
        Envelope {
            job: self.job_id.clone(),
            generation,
            body,
        }
    }

    /// Sends a heartbeat to every TaskManager; loses those silent for
    /// `heartbeat.timeout`.
    fn heartbeat(&self) {
        let mut silent = Vec::new();
        {
            let st = self.lock();
            for s in &st.sessions {
                if s.last_seen.elapsed() > self.heartbeat_timeout {
                    silent.push(s.session);
                } else {
                    let _ =
                        s.tx.send(Ok(self.envelope(st.generation, ToTaskManager::Heartbeat)));
                }
            }
        }
        for s in silent {
            self.lose(
                s,
                &format!(
                    "no heartbeat for {:?} (heartbeat.timeout)",
                    self.heartbeat_timeout
                ),
            );
        }
    }

    /// Session `session` is gone: its subtasks of the current generation fail.
    fn lose(&self, session: u64, why: &str) {
        let (failed, name) = {
            let mut st = self.lock();
            let Some(pos) = st.sessions.iter().position(|s| s.session == session) else {
                return;
            };
            let s = st.sessions.remove(pos);
            let name = format!("TaskManager {} (pid {})", s.id, s.pid);
            st.lost.push((now_ms(), format!("{name} lost: {why}")));
            let failed: Vec<ActorRef<ProxyMsg>> = st
                .placement
                .iter()
                .enumerate()
                .filter(|(_, a)| **a == s.data_address)
                .filter_map(|(t, _)| st.proxies.get(&t).cloned())
                .collect();
            (failed, name)
            // `s.tx` drops here: the TaskManager's stream ends.
        };
        tracing::warn!("{name} lost: {why}");
        for p in failed {
            let _ = p.cast(ProxyMsg::Ended {
                failure: Some(format!("{name} lost: {why}")),
            });
        }
        self.changed.notify_waiters();
    }

    /// Starts generation n+1: waits up to `slot.request.timeout` for enough
    /// slots, places the slices, and sends each TaskManager its part.
    /// `restore`: the checkpoint directory the attempt restores.
    pub(crate) async fn deploy_generation(
        &self,
        restore: Option<std::path::PathBuf>,
    ) -> Result<u64> {
        let deadline = Instant::now() + self.slot_timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_cancelled() {
                return Err(Error::Cancelled(self.job_name.clone()));
            }
            {
                let mut st = self.lock();
                let offers: Vec<Offer> = st
                    .sessions
                    .iter()
                    .map(|s| Offer {
                        data_address: s.data_address.clone(),
                        slots: s.slots,
                    })
                    .collect();
                if let Some(placement) = place(&self.parallelism, &offers) {
                    st.generation += 1;
                    let generation = st.generation;
                    st.placement = placement.clone();
                    st.proxies.clear();
                    for s in &st.sessions {
                        let tasks: Vec<usize> = placement
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| **a == s.data_address)
                            .map(|(t, _)| t)
                            .collect();
                        let body = if tasks.is_empty() {
                            ToTaskManager::Cancel
                        } else {
                            ToTaskManager::Deploy(DeploySpec {
                                placement: placement.clone(),
                                tasks,
                                restore: restore.as_ref().map(|p| p.display().to_string()),
                            })
                        };
                        let _ = s.tx.send(Ok(self.envelope(generation, body)));
                    }
                    tracing::info!(generation, ?placement, "deployed");
                    return Ok(generation);
                }
            }
            let now = Instant::now();
            if now >= deadline || tokio::time::timeout(deadline - now, changed).await.is_err() {
                let st = self.lock();
                let needed = self.parallelism.iter().copied().max().unwrap_or(0);
                let have: usize = st.sessions.iter().map(|s| s.slots).sum();
                return Err(Error::Cluster(format!(
                    "not enough task slots: the job needs {needed} (its parallelism), the {} TaskManager(s) registered offer {have}; waited slot.request.timeout ({:?}). Start more TaskManagers or give them more slots (taskmanager.numberOfTaskSlots)",
                    st.sessions.len(),
                    self.slot_timeout
                )));
            }
        }
    }

    /// The job is being cancelled: a deployment waiting for slots gives up.
    pub(crate) fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Whether `ClusterManager::cancel` was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The coordinator of the current attempt (acknowledgements go there).
    pub(crate) fn set_coordinator(&self, c: Option<ActorRef<CoordMsg>>) {
        self.lock().coordinator = c;
    }

    fn send_to_task(&self, task: usize, body: impl FnOnce(usize) -> ToTaskManager) {
        let st = self.lock();
        let Some(addr) = st.placement.get(task) else {
            return;
        };
        if let Some(s) = st.sessions.iter().find(|s| &s.data_address == addr) {
            let _ = s.tx.send(Ok(self.envelope(st.generation, body(task))));
        }
    }

    fn cancel_all(&self) {
        let st = self.lock();
        for s in &st.sessions {
            let _ =
                s.tx.send(Ok(self.envelope(st.generation, ToTaskManager::Cancel)));
        }
    }

    /// The job ended: every TaskManager is told to exit with `exit_code`.
    pub(crate) fn job_ended(&self, exit_code: i32, message: &str) {
        let mut st = self.lock();
        st.ended = Some((exit_code, message.to_string()));
        for s in &st.sessions {
            let _ = s.tx.send(Ok(self.envelope(
                st.generation,
                ToTaskManager::JobEnded {
                    exit_code,
                    message: message.to_string(),
                },
            )));
        }
    }

    /// The registered TaskManagers.
    pub(crate) fn taskmanagers(&self) -> Vec<TaskManagerInfo> {
        let st = self.lock();
        st.sessions
            .iter()
            .map(|s| {
                let subtasks: Vec<usize> = st
                    .placement
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| **a == s.data_address)
                    .map(|(t, _)| t)
                    .collect();
                let slots_used = self.slices_of(&subtasks);
                TaskManagerInfo {
                    id: s.id.clone(),
                    data_address: s.data_address.clone(),
                    pid: s.pid,
                    slots: s.slots,
                    slots_used,
                    registered_ms: s.registered_ms,
                    last_heartbeat_age_ms: s.last_seen.elapsed().as_millis() as u64,
                    subtasks,
                }
            })
            .collect()
    }

    /// Slots (slices) the subtasks `tasks` occupy.
    fn slices_of(&self, tasks: &[usize]) -> usize {
        let slices = super::placement::slices(&self.parallelism);
        let mut s: Vec<usize> = tasks
            .iter()
            .filter_map(|t| slices.get(*t).copied())
            .collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    }

    /// TaskManagers lost so far: when, and which and why
    /// (`TaskManager <id> (pid <pid>) lost: <why>`).
    pub(crate) fn lost(&self) -> Vec<(u64, String)> {
        self.lock().lost.clone()
    }

    /// The data address of each subtask's TaskManager (current generation).
    pub(crate) fn placement(&self) -> Vec<String> {
        self.lock().placement.clone()
    }

    /// The current generation.
    pub(crate) fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn apply_counts(&self, counts: &[SubtaskCounts]) {
        use std::sync::atomic::Ordering::Relaxed;
        for c in counts {
            if let Some(s) = self
                .counters
                .get(c.node)
                .and_then(|n| n.subtasks().get(c.subtask))
            {
                s.records_in.store(c.records_in, Relaxed);
                s.records_out.store(c.records_out, Relaxed);
            }
        }
    }

    /// A message of session `session` (registered with `data_address`).
    fn on_message(&self, session: u64, data_address: &str, env: Envelope<ToJobManager>) {
        let (proxy, coordinator) = {
            let mut st = self.lock();
            if let Some(s) = st.sessions.iter_mut().find(|s| s.session == session) {
                s.last_seen = Instant::now();
            } else {
                return; // lost already: fenced
            }
            let task = match &env.body {
                ToJobManager::Ended { task, .. }
                | ToJobManager::Ack { task, .. }
                | ToJobManager::Decline { task, .. }
                | ToJobManager::Finished { task } => Some(*task),
                _ => None,
            };
            // Reports of another generation, or about a subtask this
            // TaskManager does not run in it, change nothing.
            let current = env.job == self.job_id
                && env.generation == st.generation
                && task.is_none_or(|t| st.placement.get(t).is_some_and(|a| a == data_address));
            if !current {
                if task.is_some() {
                    tracing::debug!(generation = env.generation, "stale report ignored");
                }
                if let ToJobManager::Heartbeat { counts } = &env.body {
                    if env.job == self.job_id && env.generation == st.generation {
                        drop(st);
                        self.apply_counts(counts);
                    }
                }
                return;
            }
            (
                task.and_then(|t| st.proxies.get(&t).cloned()),
                st.coordinator.clone(),
            )
        };
        match env.body {
            ToJobManager::Heartbeat { counts } => self.apply_counts(&counts),
            ToJobManager::Deployed => {
                tracing::info!(generation = env.generation, tm = data_address, "deployed")
            }
            ToJobManager::DeployFailed { reason } => {
                let proxies: Vec<ActorRef<ProxyMsg>> = {
                    let st = self.lock();
                    st.placement
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| *a == data_address)
                        .filter_map(|(t, _)| st.proxies.get(&t).cloned())
                        .collect()
                };
                for p in proxies {
                    let _ = p.cast(ProxyMsg::Ended {
                        failure: Some(format!(
                            "TaskManager {data_address} could not deploy: {reason}"
                        )),
                    });
                }
            }
            ToJobManager::Ended { failure, .. } => {
                if let Some(p) = proxy {
                    let _ = p.cast(ProxyMsg::Ended { failure });
                }
            }
            ToJobManager::Ack {
                task,
                id,
                handle,
                stats,
                phases,
            } => {
                if let (Some(p), Some(c)) = (proxy, coordinator) {
                    let _ = c.cast(CoordMsg::Ack(Box::new(Ack {
                        id,
                        task,
                        from: p.get_id(),
                        handle,
                        stats,
                        phases: phases.to_phases(),
                    })));
                }
            }
            ToJobManager::Decline {
                task,
                id,
                reason,
                finished,
            } => {
                if let (Some(p), Some(c)) = (proxy, coordinator) {
                    let _ = c.cast(CoordMsg::Decline {
                        id,
                        task,
                        from: p.get_id(),
                        reason,
                        finished,
                    });
                }
            }
            ToJobManager::Finished { task } => {
                if let (Some(p), Some(c)) = (proxy, coordinator) {
                    let _ = c.cast(CoordMsg::TaskFinished(task, p.get_id()));
                }
            }
            ToJobManager::Register { .. } => {}
        }
    }

    /// Serves one session: registration, then its messages until it ends.
    async fn serve(
        self: Arc<Self>,
        mut inbound: InboundStream,
        tx: UnboundedSender<std::result::Result<Envelope<ToTaskManager>, Status>>,
        peer: Option<std::net::SocketAddr>,
    ) {
        let first = tokio::time::timeout(self.heartbeat_timeout, inbound.next()).await;
        let Ok(Some(Ok(Envelope {
            body:
                ToJobManager::Register {
                    id,
                    data_address,
                    slots,
                    plan,
                    pid,
                },
            ..
        }))) = first
        else {
            tracing::warn!(?peer, "a session without registration closed");
            return;
        };
        if plan != self.plan_hash {
            let reason = format!(
                "TaskManager {id} runs another job plan than this JobManager's '{}' (a different program, arguments or parallelism): start every process of a cluster with the same program arguments",
                self.job_name
            );
            tracing::warn!("{reason}");
            let _ = tx.send(Ok(self.envelope(0, ToTaskManager::Refused { reason })));
            return;
        }
        let session = {
            let mut st = self.lock();
            // A TaskManager that registers again on the same data address
            // (a restart of the same process slot) replaces its old session.
            let old: Vec<u64> = st
                .sessions
                .iter()
                .filter(|s| s.data_address == data_address)
                .map(|s| s.session)
                .collect();
            drop(st);
            for o in old {
                self.lose(o, "registered again");
            }
            st = self.lock();
            st.next_session += 1;
            let session = st.next_session;
            let generation = st.generation;
            let _ = tx.send(Ok(self.envelope(
                generation,
                ToTaskManager::Registered {
                    job_name: self.job_name.clone(),
                },
            )));
            if let Some((exit_code, message)) = st.ended.clone() {
                let _ = tx.send(Ok(
                    self.envelope(generation, ToTaskManager::JobEnded { exit_code, message })
                ));
            }
            st.sessions.push(Session {
                session,
                id: id.clone(),
                data_address: data_address.clone(),
                slots,
                pid,
                tx,
                last_seen: Instant::now(),
                registered_ms: now_ms(),
            });
            session
        };
        tracing::info!(tm = %id, %data_address, slots, pid, "TaskManager registered");
        self.changed.notify_waiters();
        loop {
            match inbound.next().await {
                Some(Ok(env)) => self.on_message(session, &data_address, env),
                Some(Err(status)) => {
                    self.lose(session, &format!("connection broken: {}", status.message()));
                    return;
                }
                None => {
                    self.lose(session, "it closed its connection");
                    return;
                }
            }
        }
    }
}

/// The gRPC session handler (holds the manager weakly: the server outlives nothing).
struct Handler(std::sync::Weak<ClusterManager>);

impl SessionHandler for Handler {
    fn connect(
        &self,
        inbound: InboundStream,
        peer: Option<std::net::SocketAddr>,
    ) -> OutboundStream {
        let (tx, rx) = unbounded_channel();
        if let Some(cm) = self.0.upgrade() {
            tokio::spawn(cm.serve(inbound, tx, peer));
        }
        Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
    }
}

/// Messages to a remote subtask's proxy.
pub(crate) enum ProxyMsg {
    /// From the coordinator: forwarded to the TaskManager.
    Control(CheckpointControl),
    /// The remote subtask ended (or its TaskManager was lost); a kill is
    /// known to the executor that asked for it.
    Ended { failure: Option<String> },
}

impl From<CheckpointControl> for ProxyMsg {
    fn from(c: CheckpointControl) -> Self {
        ProxyMsg::Control(c)
    }
}

impl TryFrom<ProxyMsg> for CheckpointControl {
    type Error = ();
    fn try_from(m: ProxyMsg) -> std::result::Result<Self, ()> {
        match m {
            ProxyMsg::Control(c) => Ok(c),
            ProxyMsg::Ended { .. } => Err(()),
        }
    }
}

/// A remote subtask as the job supervisor and the coordinator see it.
struct RemoteSubtask;

struct ProxyArgs {
    cm: Arc<ClusterManager>,
    task: usize,
}

impl Actor for RemoteSubtask {
    type Msg = ProxyMsg;
    type State = ProxyArgs;
    type Arguments = ProxyArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ProxyMsg>,
        args: ProxyArgs,
    ) -> std::result::Result<ProxyArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<ProxyMsg>,
        msg: ProxyMsg,
        st: &mut ProxyArgs,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            ProxyMsg::Control(control) => st
                .cm
                .send_to_task(st.task, |task| ToTaskManager::Control { task, control }),
            ProxyMsg::Ended { failure: None } => myself.stop(None),
            ProxyMsg::Ended { failure: Some(f) } => return Err(f.into()),
        }
        Ok(())
    }
}

/// The job supervisor's task executor in cluster mode (`crate::deploy`).
pub(crate) struct ClusterExecutor {
    pub(crate) cm: Arc<ClusterManager>,
    proxies: LocalExecutor,
}

impl ClusterExecutor {
    pub(crate) fn new(cm: Arc<ClusterManager>) -> Self {
        ClusterExecutor {
            cm,
            proxies: LocalExecutor::default(),
        }
    }

    /// The end of a proxy, from a supervision event.
    pub(crate) fn ended(
        &mut self,
        evt: &ractor::SupervisionEvent,
    ) -> Option<crate::deploy::SubtaskEnded> {
        self.proxies.ended(evt)
    }
}

impl TaskExecutor for ClusterExecutor {
    async fn deploy(
        &mut self,
        supervisor: &ActorCell,
        spec: SubtaskSpec,
        _shared: &Arc<JobShared>,
        _checkpoint: &Option<CheckpointLink>,
    ) -> std::result::Result<(usize, TaskRef), ActorProcessingErr> {
        let index = spec.task_index;
        let (actor, _) = RemoteSubtask::spawn_linked(
            None,
            RemoteSubtask,
            ProxyArgs {
                cm: self.cm.clone(),
                task: index,
            },
            supervisor.clone(),
        )
        .await?;
        self.cm.lock().proxies.insert(index, actor.clone());
        self.proxies.track(index, actor.get_cell());
        Ok((
            index,
            TaskRef {
                chain: spec.chain.clone(),
                is_source: matches!(spec.head, Head::Source { .. }),
                actor: actor.get_derived(),
            },
        ))
    }

    fn stop(&mut self, task: usize, reason: &str) {
        self.cm
            .send_to_task(task, |task| ToTaskManager::Stop { task });
        self.proxies.stop(task, reason);
    }

    fn stop_all(&mut self, reason: &str) {
        self.cm.cancel_all();
        self.proxies.stop_all(reason);
    }

    fn kill(&mut self, task: usize) -> bool {
        self.cm
            .send_to_task(task, |task| ToTaskManager::Kill { task });
        self.proxies.kill(task)
    }
}
