//! The REST API and web UI server (axum), Flink's paths and field names where
//! Flink has them.
//!
//! One server per process serves every job of the process's
//! [`crate::registry`]. `Env::execute_async` starts it with the first job
//! whose configuration has `rest.enabled: true`, bound to `rest.address`
//! (loopback by default) and `rest.port` (`0` picks a free port; the bound
//! address is [`crate::job::JobHandle::rest_address`]); later jobs reuse it.
//! It runs on a thread of its own with a single-threaded tokio runtime, so
//! it never takes a worker from a job, and every request reads snapshots
//! (atomics, short locks): it never slows a job down.
//!
//! # Endpoints
//! | method and path | what |
//! |---|---|
//! | `GET /overview` | counts of jobs per state, TaskManagers and their slots (Flink's cluster overview) |
//! | `GET /config` | the UI's configuration (refresh interval, version) |
//! | `GET /taskmanagers` | `{"taskmanagers": [{"id", "path", "dataPort", "timeSinceLastHeartbeat", "slotsNumber", "freeSlots"}]}` (Flink's), plus ours: `host`, `dataAddress`, `pid`, `registeredTime`, `lastHeartbeatAge`, `slotsUsed`, `generation`, the `subtasks` each runs, and the TaskManagers `lost` so far |
//! | `GET /taskmanagers/:id` | one registered TaskManager (404 for an unknown or lost one) |
//! | `GET /jobs` | `{"jobs": [{"id", "status"}]}` |
//! | `GET /jobs/overview` | `{"jobs": [{"jid", "name", "state", "start-time", "end-time", "duration", "last-modification", "tasks"}]}` |
//! | `GET /jobs/:id` | job details: `vertices` (operator chains) with metrics, `plan`, `timestamps`; ours: per operator and subtask rates and back pressure |
//! | `PATCH /jobs/:id?mode=cancel` | cancels the job (202) |
//! | `GET /jobs/:id/checkpoints` | `counts`, `summary` (min/max/avg/percentiles), `latest` (`completed`, `failed`, `savepoint`, `restored`), `history` (newest first) |
//! | `POST /jobs/:id/checkpoints` | triggers a checkpoint now: 202 `{"request-id", "checkpoint-id"}` |
//! | `GET /jobs/:id/checkpoints/:triggerid` | status of a triggered checkpoint (`status.id`, `operation.checkpointId` or `operation.failure-cause`) |
//! | `GET /jobs/:id/checkpoints/config` | checkpointing configuration |
//! | `GET /jobs/:id/checkpoints/details/:cid` | one checkpoint, per task (`tasks`), each with its subtasks' phases |
//! | `GET /jobs/:id/checkpoints/details/:cid/subtasks/:vertexid` | one task of one checkpoint, per subtask |
//! | `POST /jobs/:id/savepoints` | takes a savepoint, body `{"target-directory", "cancel-job"}` (both optional; no directory: `execution.checkpointing.savepoint-dir`): 202 `{"request-id"}`; 400 without any directory, 409 when the job is not running |
//! | `POST /jobs/:id/stop` | stop-with-savepoint, body `{"targetDirectory", "drain"}`: 202 `{"request-id"}`, polled like a savepoint; the job ends `FINISHED` |
//! | `GET /jobs/:id/savepoints/:triggerid` | status of a savepoint or stop: `{"status": {"id": "IN_PROGRESS"}}`, or `COMPLETED` with `operation.location` (the savepoint's directory) or `operation.failure-cause` (`class`, `stack-trace`); a stop or cancel-job savepoint completes once the job has ended, with `operation.job-state` (ours) |
//! | `GET /jobs/:id/exceptions` | failures, newest first (`exceptionHistory.entries`) |
//! | `GET /jobs/:id/vertices/:vertexid` | one vertex and its subtasks, each with where it runs (`endpoint`, `host`, `taskmanager-id`) |
//! | `GET /jobs/:id/vertices/:vertexid/backpressure` | back-pressure level and ratios per subtask (from the back-pressured time, as Flink's) |
//! | `GET /jobs/:id/metrics[?get=a,b]` | job metrics as `[{"id", "value"}]` |
//! | `GET /jobs/:id/regions` | ours: failover regions, their subtasks and restarts |
//! | `POST /jobs/:id/subtasks/:name/:index/kill` | ours: kills a subtask of the operator called `name`, or of the chain whose display name (`Count -> Sink`, as the UI shows it) is `name` (202) |
//! | `GET /metrics` | every job's metrics, Prometheus text format |
//! | `GET /openapi.json` | the OpenAPI 3 description of this API |
//! | `GET /` | the web UI |
//!
//! # TaskManagers
//! In cluster mode (this process is a JobManager, see [`crate::cluster`])
//! `/taskmanagers` lists the TaskManager processes registered with it, with
//! their slots and the subtasks they run; subtasks (`/jobs/:id`,
//! `/jobs/:id/vertices/:vertexid`) carry their TaskManager's data-plane
//! address (`endpoint`, `host`) and id (`taskmanager-id`); the failure a
//! lost TaskManager causes names it in `/jobs/:id/exceptions` (`endpoint`,
//! `taskManagerId`), and `/taskmanagers` keeps it in `lost`. Jobs that run
//! in this process (`execution.target: local`) make the process itself one
//! TaskManager, id `local`, whose slots are its running jobs' slices (as
//! Flink's local mini cluster is one TaskManager); their subtasks run on
//! `localhost`. `/overview` and the Prometheus metrics
//! `weir_jobmanager_numRegisteredTaskManagers`, `..._taskSlotsTotal` and
//! `..._taskSlotsAvailable` count the same list.
//!
//! # Results outlive the job
//! A program usually exits when its job ends, and the server with it. So a
//! job's end waits while a client has not read the result of what it asked
//! here (a savepoint, a stop, a triggered checkpoint, or for a cancel the
//! job's terminal state), at most `rest.async.result-linger` (5 s by
//! default): `weir stop` against a process that exits at the job's end still
//! prints its savepoint. [`crate::operations`] keeps the account.
//!
//! Errors are JSON `{"errors": ["..."]}` (Flink's shape): 404 for an unknown
//! job, checkpoint, trigger, operator, subtask or path, 400 for a bad body or
//! parameter, 405 for a wrong method, 409 when the job's state forbids the
//! request, 501 for what is not built yet.

mod api;
mod json;

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::config::{options, Conf};
use crate::{Error, Result};

/// An error answered to a client, as Flink answers: `{"errors": [message]}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: no such job, checkpoint, operator, subtask or path.
    #[error("{0}")]
    NotFound(String),
    /// 400: a malformed body or parameter.
    #[error("{0}")]
    BadRequest(String),
    /// 405: the path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: the job's state does not allow the request now.
    #[error("{0}")]
    Conflict(String),
    /// 501: not built yet.
    #[error("{0}")]
    NotImplemented(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "errors": [self.to_string()] });
        (self.status(), axum::Json(body)).into_response()
    }
}

/// The address of this process's server, once started.
static SERVER: Mutex<Option<SocketAddr>> = Mutex::new(None);

/// Starts the process's server if `conf` enables it and none runs yet;
/// returns where it listens (`None` when `rest.enabled` is false).
pub fn ensure_started(conf: &Conf) -> Result<Option<SocketAddr>> {
    if !conf.get(&options::REST_ENABLED) {
        return Ok(None);
    }
    let mut server = SERVER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(addr) = *server {
        return Ok(Some(addr));
    }
    let address = conf.get(&options::REST_ADDRESS);
    let port = conf.get(&options::REST_PORT);
    let addr = start(&address, port as u16)?;
    tracing::info!("REST API and web UI on http://{addr}/");
    *server = Some(addr);
    Ok(Some(addr))
}

/// The address of the process's server, if one was started.
pub fn address() -> Option<SocketAddr> {
    *SERVER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `address:port` and serves the API and UI on a thread of its own.
fn start(address: &str, port: u16) -> Result<SocketAddr> {
    let rest_err = |message: String| Error::Rest {
        address: format!("{address}:{port}"),
        message,
    };
    let listener = std::net::TcpListener::bind((address, port)).map_err(|e| {
        rest_err(format!(
            "{e} (set rest.port to a free port, 0 picks one, or rest.enabled: false)"
        ))
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| rest_err(e.to_string()))?;
    let local = listener.local_addr().map_err(|e| rest_err(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| rest_err(format!("cannot start its runtime: {e}")))?;
    std::thread::Builder::new()
        .name("weir-rest".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, api::router()).await {
                            tracing::error!(error = %e, "the REST server stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "the REST server cannot listen"),
                }
            })
        })
        .map_err(|e| rest_err(format!("cannot start its thread: {e}")))?;
    Ok(local)
}
