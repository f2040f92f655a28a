//! Cluster mode: one JobManager process and TaskManager processes, all
//! running the same job program (`execution.target: cluster`).
//!
//! A weir job is a Rust program, so every process of a cluster runs the same
//! binary with the same arguments and builds the same graph; `cluster.role`
//! (the examples' `--jobmanager` / `--taskmanager`) says what the process
//! does with it at `Env::execute`:
//!
//! - the **JobManager** runs the job supervisor (`crate::job`), the
//!   checkpoint coordinator, the REST API and UI, and serves the control
//!   plane (`rpc`) on `jobmanager.rpc.address:jobmanager.rpc.port`. It runs
//!   no subtask itself: its task executor (`jobmanager::ClusterExecutor`)
//!   places the job's slices on the TaskManagers' slots
//!   (`placement`) and stands a small proxy actor in for every remote
//!   subtask, so the supervisor and the coordinator work exactly as in one
//!   process (the proxy forwards checkpoint control and ends when the remote
//!   subtask's end is reported, or its TaskManager is lost);
//! - a **TaskManager** (`taskmanager`) registers its
//!   `taskmanager.numberOfTaskSlots` slots, instantiates the subtasks it is
//!   given from its own copy of the plan (restored from the shared
//!   checkpoint storage), runs them as actors of its own, and reports their
//!   acknowledgements and ends back. Channels between two of its subtasks
//!   are the in-process queues; channels to subtasks of another TaskManager
//!   are network channels (`crate::exchange`'s `net`: one TCP connection
//!   per TaskManager pair, credit-based flow control).
//!
//! # Generations: the fencing of cluster mode
//! Each deployment of the job (the first, and each restart after a failure)
//! has a **generation**, one more than the last; every control message
//! carries the job id and its generation (`rpc::Envelope`). Invariants:
//!
//! 1. A TaskManager runs subtasks of one generation at a time: a `Deploy`
//!    of generation g stops every older subtask and waits for their
//!    processing loops to end before it instantiates g.
//! 2. A TaskManager ignores commands of a generation older than the one it
//!    runs; the JobManager ignores acknowledgements, declines and ends of a
//!    generation other than the current one. So a TaskManager that slept
//!    through its own failover (SIGSTOP, then SIGCONT) changes nothing: its
//!    acknowledgements complete no checkpoint and no sink of it is told to
//!    commit (commits follow `Complete`, sent only to the current
//!    generation's subtasks).
//! 3. Network channels are keyed by generation: data of an old attempt never
//!    reaches a subtask of a new one.
//! 4. A TaskManager is lost when its session stream breaks (a killed
//!    process: at once) or it is silent for `heartbeat.timeout`; its
//!    subtasks then fail (the job restarts from the latest completed
//!    checkpoint on the slots available, waiting up to
//!    `slot.request.timeout` for enough of them). A TaskManager whose
//!    JobManager is lost stops its subtasks, tries to register again for
//!    `heartbeat.timeout`, and exits when it cannot.
//!
//! Checkpoint storage is shared by all processes (one directory on one
//! machine, `s3://` across machines): a TaskManager's subtasks upload their
//! own state there, the JobManager's coordinator writes `_metadata`.
//!
//! Cluster mode restarts the whole job on a failure (a keyed shuffle makes
//! the whole job one pipelined region anyway); savepoints, rescaling on
//! restore and the chaos monkey are for `execution.target: local` today.

pub mod jobmanager;
pub(crate) mod placement;
pub(crate) mod rpc;
pub(crate) mod taskmanager;

use crate::config::{options, Conf};

/// This process's role in a cluster, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `execution.target: local`: the job runs in this process.
    Local,
    /// The JobManager of a cluster.
    JobManager,
    /// A TaskManager of a cluster.
    TaskManager,
}

impl Role {
    /// The role `conf` asks for; an error when `execution.target: cluster`
    /// names no role.
    pub fn from_conf(conf: &Conf) -> crate::Result<Role> {
        let target = conf.get(&options::EXECUTION_TARGET);
        let role = conf.get(&options::CLUSTER_ROLE);
        match (target.as_str(), role.as_str()) {
            ("cluster", "jobmanager") => Ok(Role::JobManager),
            ("cluster", "taskmanager") => Ok(Role::TaskManager),
            ("cluster", _) => Err(crate::Error::Cluster(
                "execution.target: cluster needs cluster.role: jobmanager or taskmanager (the examples' --jobmanager or --taskmanager flag)".into(),
            )),
            (_, "") => Ok(Role::Local),
            (_, r) => Err(crate::Error::Cluster(format!(
                "cluster.role: {r} needs execution.target: cluster"
            ))),
        }
    }
}

/// A stable hash of the job's plan (chains, parallelism, channels): the
/// JobManager refuses a TaskManager whose program built another plan.
pub(crate) fn plan_fingerprint(plan: &crate::graph::JobPlan) -> u64 {
    // FNV-1a over the plan's description: stable across processes and
    // builds of one program (std's hasher is randomly seeded).
    let text = plan.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `host:port` of the JobManager as TaskManagers dial it.
pub(crate) fn jobmanager_endpoint(conf: &Conf) -> String {
    format!(
        "http://{}:{}",
        conf.get(&options::JOBMANAGER_RPC_ADDRESS),
        conf.get(&options::JOBMANAGER_RPC_PORT)
    )
}
