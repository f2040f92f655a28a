//! Errors of the runtime: one [`Error`] enum with typed kinds.
//!
//! Every fallible public function of `weir-runtime` returns [`Result<T>`]. The
//! kinds say who has to act: [`Error::Config`] is the user's configuration,
//! [`Error::Io`] names the path that failed, [`Error::Storage`] the
//! checkpoint storage location (object store URI) that failed, [`Error::Operator`] is a failure
//! inside user code (with the operator's name and subtask index), and
//! [`Error::JobFailed`] / [`Error::Cancelled`] describe how a job ended.

use std::path::PathBuf;

/// The result type of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration key or value was rejected.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    /// An I/O operation on a path failed.
    #[error("{action} '{}': {source}", path.display())]
    Io {
        /// What the runtime tried to do, e.g. "cannot read input".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A record or state value could not be (de)serialized.
    #[error("serialization failed: {0}")]
    Serde(String),

    /// User code (a function, source or sink) returned an error or panicked.
    #[error("operator '{operator}' (subtask {subtask}) failed: {message}")]
    Operator {
        /// The operator's name as given with `.name(...)` or its default.
        operator: String,
        /// The subtask index (0-based).
        subtask: usize,
        /// The error or panic message.
        message: String,
    },

    /// The job graph is not valid (e.g. a forward edge between operators of
    /// different parallelism, or a stream with no sink).
    #[error("invalid job graph: {0}")]
    Graph(String),

    /// The job failed; the first failure is given.
    #[error("job '{job}' failed: {cause}")]
    JobFailed {
        /// The job's name.
        job: String,
        /// The first error that made it fail.
        cause: Box<Error>,
    },

    /// The job failed more often than the restart strategy allows.
    #[error("the restart strategy gave up after {restarts} restarts ({strategy}); last failure: {cause}")]
    RestartsExhausted {
        /// Restarts made.
        restarts: u64,
        /// The strategy, e.g. `restart-strategy.fixed-delay.attempts = 3`.
        strategy: String,
        /// The failure that ended the job.
        cause: Box<Error>,
    },

    /// Subtasks stopped for a restart were still running user code after
    /// `task.cancellation.timeout` (see `crate::cancellation`).
    #[error(
        "subtask {subtasks} did not stop within task.cancellation.timeout ({timeout:?}) after \
         it was cancelled for a restart (after: {cause}); it is stuck in user code that \
         neither returns nor awaits, so the job cannot restart and fails"
    )]
    CancellationTimeout {
        /// The stuck subtasks, e.g. `'slow' (subtask 1)`.
        subtasks: String,
        /// The timeout that passed.
        timeout: std::time::Duration,
        /// The failure the restart was for.
        cause: String,
    },

    /// The job was cancelled before it finished.
    #[error("job '{0}' was cancelled")]
    Cancelled(String),

    /// Cluster mode: a JobManager or TaskManager could not start, reach its
    /// peer, or get the slots it needs (the message says which and what to
    /// check).
    #[error("cluster: {0}")]
    Cluster(String),

    /// High availability: a newer JobManager generation took over this job
    /// (see `crate::ha`); this process must commit nothing more and stop.
    #[error("fenced: {0}")]
    Fenced(String),

    /// High availability is misconfigured or its log cannot be used.
    #[error("high availability: {0}")]
    Ha(String),

    /// A checkpoint's `_metadata` exists already: another process of this
    /// job (a JobManager of another generation) wrote that checkpoint id.
    #[error("checkpoint '{}' exists already (written by another JobManager of this job)", .0.display())]
    CheckpointExists(PathBuf),

    /// A channel's other end went away because its subtask stopped (a
    /// consequence of another failure, never the root cause).
    #[error("channel disconnected: {0}")]
    Disconnected(String),

    /// A checkpoint file is missing, truncated, corrupt or of another format version.
    #[error("checkpoint '{}' is unusable: {reason}", path.display())]
    CorruptCheckpoint {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Checkpoint storage (an object store, or a bad storage location) failed.
    #[error("{action} '{location}': {message}")]
    Storage {
        /// What the runtime tried to do, e.g. "cannot write checkpoint object".
        action: &'static str,
        /// The location, e.g. `s3://bucket/prefix/<job-id>/chk-3/_metadata`.
        location: String,
        /// What went wrong.
        message: String,
    },

    /// A checkpoint could not be taken or completed.
    #[error("checkpoint {id} failed: {reason}")]
    Checkpoint {
        /// The checkpoint id.
        id: u64,
        /// Why.
        reason: String,
    },

    /// A savepoint (or stop-with-savepoint) could not be taken.
    #[error(transparent)]
    Savepoint(#[from] SavepointError),

    /// The state backend (RocksDB) reported an error.
    #[error("state backend: {0}")]
    StateBackend(String),

    /// A restore is not possible with this job (e.g. unknown operator names).
    #[error("cannot restore: {0}")]
    Restore(String),

    /// The REST server could not start (e.g. its port is taken).
    #[error("cannot start the REST server on {address}: {message}")]
    Rest {
        /// The address and port it was to bind.
        address: String,
        /// What went wrong.
        message: String,
    },

    /// A subtask could not be killed on request.
    #[error(transparent)]
    Kill(#[from] KillError),

    /// A failure injected by a test at a named point.
    #[error("failure injected at '{0}'")]
    Injected(String),

    /// A user function returned an error of its own.
    #[error("{0}")]
    User(String),

    /// An internal invariant of the runtime was broken (a bug in weir).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a savepoint was not taken (see [`crate::job::JobHandle::trigger_savepoint`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavepointError {
    /// No target directory was given and `execution.checkpointing.savepoint-dir` is not set.
    #[error("no savepoint directory: give a target directory or set execution.checkpointing.savepoint-dir")]
    NoTargetDirectory,
    /// The job does not take checkpoints (savepoints use the checkpoint coordinator).
    #[error("the job runs without checkpointing (execution.checkpointing.interval is off): savepoints need it on")]
    CheckpointingDisabled,
    /// The job is not running (finished, failed, cancelled, or finishing).
    #[error("the job is not running ({0}): no savepoint can be taken")]
    NotRunning(String),
    /// The savepoint was triggered and then aborted: declined by a subtask,
    /// expired (`execution.checkpointing.timeout`), or a region failed.
    #[error("savepoint {id} failed: {reason}")]
    Failed {
        /// The savepoint's checkpoint id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// This kind of job cannot take savepoints (yet): the reason.
    #[error("savepoints are not supported {0}")]
    Unsupported(String),
    /// The savepoint directory could not be created.
    #[error("cannot create the savepoint directory '{path}': {reason}")]
    Directory {
        /// The directory.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// Why a subtask could not be killed on request
/// ([`crate::job::JobHandle::kill_subtask`], `POST /jobs/:id/subtasks/:name/:index/kill`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KillError {
    /// No operator or chain has this name.
    #[error("no operator named '{name}' (operators and chains: {known})")]
    NoOperator {
        /// The name asked for.
        name: String,
        /// Every name that would match, quoted, separated by commas.
        known: String,
    },
    /// The operator has no subtask with this index.
    #[error("operator '{name}' has parallelism {parallelism}: no subtask {index}")]
    NoSubtask {
        /// The operator or chain name asked for.
        name: String,
        /// Its parallelism.
        parallelism: usize,
        /// The index asked for.
        index: usize,
    },
    /// The subtask is down already: the job or its region is restarting.
    #[error("the job is restarting")]
    Restarting,
    /// The job has ended or is ending (finished, failed or cancelled).
    #[error("the job has ended or is ending")]
    Ended,
}

impl KillError {
    /// Whether the request names nothing that exists (404), rather than
    /// coming at a time the job cannot honour it (409).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            KillError::NoOperator { .. } | KillError::NoSubtask { .. }
        )
    }
}

impl Error {
    /// An error from user code, for `?` in functions and sources.
    pub fn user(msg: impl std::fmt::Display) -> Self {
        Error::User(msg.to_string())
    }

    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::Serde(e.to_string())
    }
}

/// A failure point's injected error is [`Error::Injected`].
impl From<crate::failpoint::Injected> for Error {
    fn from(e: crate::failpoint::Injected) -> Self {
        Error::Injected(e.0)
    }
}
