//! The routes and handlers of the REST API and the embedded web UI.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{json as docs, ApiError};
use crate::checkpoint::CheckpointStatus;
use crate::job::JobCore;
use crate::metrics::JobMetrics;
use crate::operations::SavepointOp;

type ApiResult<T> = Result<T, ApiError>;

pub(super) fn router() -> Router {
    Router::new()
        .route("/", get(ui_index))
        .route("/index.html", get(ui_index))
        .route("/app.js", get(ui_js))
        .route("/style.css", get(ui_css))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(prometheus))
        .route("/overview", get(overview))
        .route("/config", get(dashboard_config))
        .route("/taskmanagers", get(taskmanagers))
        .route("/taskmanagers/{tm}", get(taskmanager))
        .route("/jobs", get(jobs))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{id}", get(job).patch(terminate))
        .route(
            "/jobs/{id}/checkpoints",
            get(checkpoints).post(trigger_checkpoint),
        )
        .route("/jobs/{id}/checkpoints/config", get(checkpoint_config))
        .route("/jobs/{id}/checkpoints/{trigger}", get(trigger_status))
        .route(
            "/jobs/{id}/checkpoints/details/{cid}",
            get(checkpoint_details),
        )
        .route(
            "/jobs/{id}/checkpoints/details/{cid}/subtasks/{vertex}",
            get(checkpoint_subtasks),
        )
        .route("/jobs/{id}/savepoints", post(savepoint))
        .route("/jobs/{id}/savepoints/{trigger}", get(savepoint_status))
        .route("/jobs/{id}/stop", post(stop))
        .route("/jobs/{id}/exceptions", get(exceptions))
        .route("/jobs/{id}/vertices/{vertex}", get(vertex_details))
        .route(
            "/jobs/{id}/vertices/{vertex}/backpressure",
            get(vertex_backpressure),
        )
        .route(
            "/jobs/{id}/vertices/{vertex}/watermarks",
            get(vertex_watermarks),
        )
        .route("/jobs/{id}/metrics", get(job_metrics))
        .route("/jobs/{id}/regions", get(regions))
        .route("/jobs/{id}/subtasks/{name}/{index}/kill", post(kill))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("Not found: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("method {method} is not allowed on {}", uri.path()))
}

fn job_of(id: &str) -> ApiResult<Arc<JobCore>> {
    crate::registry::get(id).ok_or_else(|| ApiError::NotFound(format!("Job {id} not found")))
}

/// The value of `key` in a query string (no percent-decoding: our values are words).
fn query_value<'a>(query: &'a Option<String>, key: &str) -> Option<&'a str> {
    query.as_deref().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// A JSON object body, or none (empty body): anything else is a 400.
fn object_body(body: &Bytes) -> ApiResult<serde_json::Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(ApiError::BadRequest(
            "Request body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!(
            "Request body is not valid JSON: {e}"
        ))),
    }
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn ui_index() -> Response {
    static_file("text/html; charset=utf-8", include_str!("ui/index.html"))
}

async fn ui_js() -> Response {
    static_file(
        "application/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    )
}

async fn ui_css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("ui/style.css"))
}

async fn openapi() -> Response {
    static_file("application/json", include_str!("openapi.json"))
}

/// Flink's JobManager metrics of the TaskManagers `/taskmanagers` lists.
fn cluster_metrics(taskmanagers: &Value) -> crate::metrics::ClusterMetrics {
    let list = taskmanagers["taskmanagers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let sum = |key: &str| list.iter().filter_map(|t| t[key].as_u64()).sum();
    crate::metrics::ClusterMetrics {
        num_registered_task_managers: list.len() as u64,
        task_slots_total: sum("slotsNumber"),
        task_slots_available: sum("freeSlots"),
    }
}

async fn prometheus() -> Response {
    let jobs = crate::registry::all();
    let snapshots: Vec<JobMetrics> = jobs.iter().map(|j| j.metrics()).collect();
    let mut text = crate::metrics::prometheus_text(&snapshots);
    text.push_str(&crate::metrics::cluster_prometheus_text(&cluster_metrics(
        &docs::taskmanagers(&jobs),
    )));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn overview() -> Json<Value> {
    let jobs = crate::registry::all();
    let count =
        |f: &dyn Fn(crate::job::JobStatus) -> bool| jobs.iter().filter(|j| f(j.status())).count();
    let running = jobs.iter().filter(|j| !j.status().is_terminal()).count();
    let cluster = cluster_metrics(&docs::taskmanagers(&jobs));
    use crate::job::JobStatus as S;
    Json(json!({
        "taskmanagers": cluster.num_registered_task_managers,
        "slots-total": cluster.task_slots_total,
        "slots-available": cluster.task_slots_available,
        "jobs-running": running,
        "jobs-finished": count(&|s| s == S::Finished),
        "jobs-cancelled": count(&|s| s == S::Canceled),
        "jobs-failed": count(&|s| s == S::Failed),
        "weir-version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn dashboard_config() -> Json<Value> {
    Json(json!({
        "refresh-interval": 1000,
        "timezone-name": "UTC",
        "timezone-offset": 0,
        "weir-version": env!("CARGO_PKG_VERSION"),
        "features": { "web-submit": false, "web-cancel": true, "web-rescale": false },
    }))
}

async fn taskmanagers() -> Json<Value> {
    Json(docs::taskmanagers(&crate::registry::all()))
}

async fn taskmanager(Path(tm): Path<String>) -> ApiResult<Json<Value>> {
    let all = docs::taskmanagers(&crate::registry::all());
    let find = |key: &str| {
        all[key]
            .as_array()
            .and_then(|l| l.iter().find(|t| t["id"] == tm.as_str()))
            .cloned()
    };
    if let Some(t) = find("taskmanagers") {
        return Ok(Json(t));
    }
    Err(ApiError::NotFound(match find("lost") {
        Some(l) => format!(
            "TaskManager {tm} is not registered any more: it was lost at {} ms since the epoch (GET /taskmanagers lists the registered TaskManagers and the lost ones)",
            l["timestamp"]
        ),
        None => format!(
            "TaskManager {tm} not found (GET /taskmanagers lists the registered TaskManagers)"
        ),
    }))
}

async fn jobs() -> Json<Value> {
    let jobs: Vec<Value> = crate::registry::all()
        .iter()
        .map(|j| {
            let status = j.status();
            if status.is_terminal() {
                j.operations.end_seen();
            }
            json!({"id": j.job_id, "status": status.as_str()})
        })
        .collect();
    Json(json!({ "jobs": jobs }))
}

async fn jobs_overview() -> Json<Value> {
    let jobs: Vec<Value> = crate::registry::all()
        .iter()
        .rev()
        .map(|j| {
            let ended = j.status().is_terminal();
            let overview = docs::job_overview(j);
            if ended {
                j.operations.end_seen();
            }
            overview
        })
        .collect();
    Json(json!({ "jobs": jobs }))
}

async fn job(Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let ended = job.status().is_terminal();
    let details = docs::job_details(&job);
    if ended {
        job.operations.end_seen();
    }
    Ok(Json(details))
}

async fn terminate(
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = job_of(&id)?;
    match query_value(&query, "mode").map(str::to_ascii_lowercase) {
        None => {}
        Some(m) if m == "cancel" => {}
        Some(m) => {
            return Err(ApiError::BadRequest(format!(
                "mode '{m}' is not supported: the only supported mode is cancel"
            )))
        }
    }
    if job.status().is_terminal() {
        return Err(ApiError::Conflict(format!(
            "Job {id} has already ended ({})",
            job.status()
        )));
    }
    job.operations.cancel_requested();
    job.cancel();
    Ok((StatusCode::ACCEPTED, Json(json!({}))))
}

async fn checkpoints(Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(docs::checkpoints(&*job_of(&id)?)))
}

async fn checkpoint_config(Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let cfg = job
        .checkpoint_cfg
        .as_ref()
        .ok_or_else(|| ApiError::NotFound(format!("Checkpointing is not enabled for job {id}")))?;
    Ok(Json(docs::checkpoint_config(&job, cfg)))
}

fn parse_checkpoint_id(cid: &str) -> ApiResult<u64> {
    cid.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "checkpoint id '{cid}' is not a number (a checkpoint id is a positive integer)"
        ))
    })
}

fn find_checkpoint(job: &JobCore, cid: u64) -> ApiResult<crate::checkpoint::CheckpointStats> {
    job.checkpoint_stats()
        .into_iter()
        .rev()
        .find(|s| s.id == cid)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Could not find checkpointing statistics for checkpoint {cid} of job {}",
                job.job_id
            ))
        })
}

async fn checkpoint_details(Path((id, cid)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let cid = parse_checkpoint_id(&cid)?;
    let s = find_checkpoint(&job, cid)?;
    Ok(Json(docs::checkpoint(&job, &s, false, true)))
}

async fn checkpoint_subtasks(
    Path((id, cid, vertex)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let cid = parse_checkpoint_id(&cid)?;
    let s = find_checkpoint(&job, cid)?;
    let c = (0..job.plan.chains.len())
        .find(|c| docs::vertex_id(&job.job_id, *c) == vertex)
        .ok_or_else(|| ApiError::NotFound(format!("Job {id} has no vertex {vertex}")))?;
    Ok(Json(docs::task_checkpoint(&job, &s, c, true)))
}

/// A new trigger id: 32 hex characters.
fn trigger_id(job: &str, checkpoint: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write(job.as_bytes());
    h.write_u64(checkpoint);
    format!("{:016x}{:016x}", h.finish(), checkpoint)
}

async fn trigger_checkpoint(
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = job_of(&id)?;
    let body = object_body(&body)?;
    match body.get("checkpointType") {
        None => {}
        Some(Value::String(t)) if ["CONFIGURED", "FULL"].contains(&t.as_str()) => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "checkpointType {other} is not supported: CONFIGURED or FULL (weir's checkpoints are full)"
            )))
        }
    }
    if job.checkpoint_cfg.is_none() {
        return Err(ApiError::Conflict(format!(
            "Checkpointing is disabled for job {id} (execution.checkpointing.interval: off)"
        )));
    }
    if job.status().is_terminal() {
        return Err(ApiError::Conflict(format!(
            "Job {id} has already ended ({})",
            job.status()
        )));
    }
    let cid = job.trigger_checkpoint().await.map_err(ApiError::Conflict)?;
    let trigger = trigger_id(&job.job_id, cid);
    job.operations.checkpoints.accept(trigger.clone(), cid);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "request-id": trigger, "checkpoint-id": cid })),
    ))
}

async fn trigger_status(Path((id, trigger)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let cid =
        job.operations.checkpoints.get(&trigger).ok_or_else(|| {
            ApiError::NotFound(format!("Operation {trigger} not found for job {id}"))
        })?;
    let s = find_checkpoint(&job, cid)?;
    if s.status != CheckpointStatus::InProgress {
        job.operations.checkpoints.mark_read(&trigger);
    }
    Ok(Json(match s.status {
        CheckpointStatus::InProgress => json!({ "status": { "id": "IN_PROGRESS" } }),
        CheckpointStatus::Completed => json!({
            "status": { "id": "COMPLETED" },
            "operation": {
                "checkpointId": cid,
                "external_path": s.external_path.as_ref().map(|p| p.display().to_string()),
            },
        }),
        CheckpointStatus::Failed => json!({
            "status": { "id": "COMPLETED" },
            "operation": {
                "checkpointId": cid,
                "failure-cause": {
                    "class": "CheckpointException",
                    "stack-trace": s.failure_message,
                    "serialized-throwable": Value::Null,
                },
            },
        }),
    }))
}

/// A string field of a request body (absent or null: `None`).
fn string_field(body: &serde_json::Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::BadRequest(format!("{key} must be a string"))),
    }
}

/// A savepoint's target directory field (absent or null: the configured
/// default); an empty string is not a directory and is refused (the OpenAPI
/// document says `minLength: 1`).
fn target_field(body: &serde_json::Map<String, Value>, key: &str) -> ApiResult<Option<String>> {
    match string_field(body, key)? {
        Some(t) if t.is_empty() => Err(ApiError::BadRequest(format!(
            "{key} must not be empty: leave it out (or null) to use execution.checkpointing.savepoint-dir"
        ))),
        t => Ok(t),
    }
}

/// A boolean field of a request body (absent: false).
fn bool_field(body: &serde_json::Map<String, Value>, key: &str) -> ApiResult<bool> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::BadRequest(format!("{key} must be true or false"))),
    }
}

/// Starts a savepoint as an asynchronous operation (Flink's pattern): checks
/// what can be checked at once (400/409), then answers 202 with a request
/// id to poll at `GET /jobs/:id/savepoints/:triggerid`.
fn start_savepoint(
    job: Arc<JobCore>,
    target: Option<String>,
    stop: Option<bool>,
    cancel: bool,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let target = job
        .savepoint_target(target.as_deref().map(std::path::Path::new))
        .map_err(|e| match e {
            crate::SavepointError::NoTargetDirectory => ApiError::BadRequest(e.to_string()),
            _ => ApiError::Conflict(e.to_string()),
        })?;
    let trigger = trigger_id(&job.job_id, crate::checkpoint::now_ms());
    job.operations
        .savepoints
        .accept(trigger.clone(), SavepointOp::InProgress);
    let t = trigger.clone();
    tokio::spawn(async move {
        let op = match job.savepoint(Some(&target), stop).await {
            Ok(location) => {
                if cancel {
                    job.cancel();
                }
                // An operation that ends the job completes with the job's end.
                let job_state = if cancel || stop.is_some() {
                    while !job.status().is_terminal() {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    Some(job.status().as_str())
                } else {
                    None
                };
                SavepointOp::Completed {
                    location,
                    job_state,
                }
            }
            Err(e) => SavepointOp::Failed(e.to_string()),
        };
        job.operations.savepoints.update(&t, op);
    });
    Ok((StatusCode::ACCEPTED, Json(json!({ "request-id": trigger }))))
}

async fn savepoint(Path(id): Path<String>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = job_of(&id)?;
    let body = object_body(&body)?;
    let target = target_field(&body, "target-directory")?;
    let cancel = bool_field(&body, "cancel-job")?;
    start_savepoint(job, target, None, cancel)
}

async fn stop(Path(id): Path<String>, body: Bytes) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = job_of(&id)?;
    let body = object_body(&body)?;
    let target = target_field(&body, "targetDirectory")?;
    let drain = bool_field(&body, "drain")?;
    start_savepoint(job, target, Some(drain), false)
}

async fn savepoint_status(Path((id, trigger)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let op =
        job.operations.savepoints.get(&trigger).ok_or_else(|| {
            ApiError::NotFound(format!("Operation {trigger} not found for job {id}"))
        })?;
    if op.is_final() {
        job.operations.savepoints.mark_read(&trigger);
    }
    Ok(Json(match op {
        SavepointOp::InProgress => json!({ "status": { "id": "IN_PROGRESS" } }),
        SavepointOp::Completed {
            location,
            job_state,
        } => json!({
            "status": { "id": "COMPLETED" },
            "operation": {
                "location": location.display().to_string(),
                "job-state": job_state,
            },
        }),
        SavepointOp::Failed(message) => json!({
            "status": { "id": "COMPLETED" },
            "operation": {
                "failure-cause": {
                    "class": "SavepointException",
                    "stack-trace": message,
                    "serialized-throwable": Value::Null,
                },
            },
        }),
    }))
}

async fn vertex_details(Path((id, vertex)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let c = (0..job.plan.chains.len())
        .find(|c| docs::vertex_id(&job.job_id, *c) == vertex)
        .ok_or_else(|| ApiError::NotFound(format!("Job {id} has no vertex {vertex}")))?;
    Ok(Json(docs::vertex_details(&job, c)))
}

async fn vertex_backpressure(Path((id, vertex)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let c = (0..job.plan.chains.len())
        .find(|c| docs::vertex_id(&job.job_id, *c) == vertex)
        .ok_or_else(|| ApiError::NotFound(format!("Job {id} has no vertex {vertex}")))?;
    let m = job.metrics();
    let task = &m.tasks[c];
    let subtasks: Vec<Value> = task
        .subtasks
        .iter()
        .map(|s| {
            json!({
                "subtask": s.index,
                "backpressure-level": s.backpressure_level,
                "ratio": s.back_pressured_time_ms_per_second / 1000.0,
                "idleRatio": s.idle_time_ms_per_second / 1000.0,
                "busyRatio": s.busy_time_ms_per_second / 1000.0,
            })
        })
        .collect();
    Ok(Json(json!({
        "status": "ok",
        "backpressure-level": task.backpressure_level,
        "end-timestamp": crate::checkpoint::now_ms(),
        "subtasks": subtasks,
    })))
}

/// Flink's `/jobs/:jobid/vertices/:vertexid/watermarks`: the input
/// watermark of the vertex's first operator, per subtask, as
/// `{"id": "<subtask>.currentInputWatermark", "value": "<ms>"}` (Flink's
/// metric list shape; `i64::MIN` before the first watermark).
async fn vertex_watermarks(Path((id, vertex)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let c = (0..job.plan.chains.len())
        .find(|c| docs::vertex_id(&job.job_id, *c) == vertex)
        .ok_or_else(|| ApiError::NotFound(format!("Job {id} has no vertex {vertex}")))?;
    let m = job.metrics();
    let head = m.operators.iter().find(|o| o.task == c);
    let list: Vec<Value> = head
        .map(|h| {
            h.subtasks
                .iter()
                .map(|s| {
                    json!({
                        "id": format!("{}.currentInputWatermark", s.index),
                        "value": s.current_input_watermark.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(Value::Array(list)))
}

async fn exceptions(Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(docs::exceptions(&*job_of(&id)?)))
}

async fn regions(Path(id): Path<String>) -> ApiResult<Json<Value>> {
    Ok(Json(docs::regions(&*job_of(&id)?)))
}

async fn job_metrics(Path(id): Path<String>, RawQuery(query): RawQuery) -> ApiResult<Json<Value>> {
    let job = job_of(&id)?;
    let m = job.metrics();
    let all = docs::job_metrics(&m);
    let wanted: Option<Vec<&str>> =
        query_value(&query, "get").map(|g| g.split(',').map(str::trim).collect());
    let list: Vec<Value> = match wanted {
        None => all.iter().map(|(k, _)| json!({ "id": k })).collect(),
        Some(w) => all
            .iter()
            .filter(|(k, _)| w.contains(k))
            .map(|(k, v)| json!({ "id": k, "value": v }))
            .collect(),
    };
    Ok(Json(Value::Array(list)))
}

async fn kill(
    Path((id, name, index)): Path<(String, String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let job = job_of(&id)?;
    let index: usize = index.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "subtask index '{index}' is not a number (0 to parallelism - 1)"
        ))
    })?;
    // The job master decides (one place: the name, the index, the job's state).
    job.kill_subtask(&name, index).await.map_err(|e| match e {
        e if e.is_not_found() => ApiError::NotFound(format!("Job {id}: {e}")),
        e => ApiError::Conflict(format!("Job {id}: {e} ({})", job.status())),
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({ "operator": name, "subtask": index, "numRestarts": job.restarts.load(std::sync::atomic::Ordering::Relaxed) }),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values() {
        let q = Some("mode=cancel&x".to_string());
        assert_eq!(query_value(&q, "mode"), Some("cancel"));
        assert_eq!(query_value(&q, "x"), Some(""));
        assert_eq!(query_value(&q, "y"), None);
        assert_eq!(query_value(&None, "mode"), None);
    }

    #[test]
    fn bodies() {
        assert!(object_body(&Bytes::from_static(b"")).unwrap().is_empty());
        assert!(object_body(&Bytes::from_static(b"{\"a\":1}")).is_ok());
        assert!(matches!(
            object_body(&Bytes::from_static(b"[1]")),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            object_body(&Bytes::from_static(b"{nope")),
            Err(ApiError::BadRequest(_))
        ));
    }
}
