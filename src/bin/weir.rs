//! The `weir` command-line tool.
//!
//! - `weir config show|check|keys`: the effective configuration, its validation, every option.
//! - `weir checkpoints list DIR`: every checkpoint under a checkpoint root or job directory:
//!   id, completion time, size, type and status (complete, incomplete, corrupt).
//! - `weir checkpoints inspect CHK`: one checkpoint: subtasks, files, operators, key groups,
//!   operator state (source positions) and in-flight data.
//! - `weir checkpoints verify DIR`: checks every file's checksum and every reference (framed
//!   files, and the size and CRC-32 of the RocksDB files a checkpoint references, in its own
//!   directory or in `shared/`); exit status 1 if a checkpoint is corrupt.
//! - `weir checkpoints gc DIR [--dry-run] [--force]`: deletes what no complete checkpoint references
//!   (incomplete checkpoints left by a crash, temporary files, unreferenced files, shared
//!   files no checkpoint references); never a referenced file, never a directory of a job
//!   that is running.
//!
//! DIR and CHK are bare paths, `file:///abs/path` or `s3://bucket/prefix` URIs; S3 is
//! configured with the `s3.*` options (conf/weir.yaml, `WEIR_S3_*`, `-D`), else `AWS_*`.
//!
//! Remote commands talk to a running process's REST API (`--url`, default
//! `http://127.0.0.1:8081`; JOB is a job id, a unique prefix of one, or a job name):
//! - `weir list`: every job with its state, start time and duration.
//! - `weir checkpoint JOB`: triggers a checkpoint now and waits until it completed.
//! - `weir savepoint JOB [DIR]`: takes a savepoint (into DIR, else the job's
//!   `execution.checkpointing.savepoint-dir`), waits until it completed and prints its path.
//! - `weir stop [--savepoint-path DIR] [--drain] JOB`: stop-with-savepoint: the job ends
//!   `FINISHED` right after the savepoint; prints its path.
//! - `weir cancel JOB [--savepoint [DIR]]`: cancels the job (with a savepoint first).
//! - `weir kill JOB SUBTASK`: kills a subtask (`name[index]` or `name/index`); the job
//!   restarts it from its latest checkpoint.
//!
//! Every command prints for a person by default and JSON with `--json`; an
//! error is one line on stderr and exit status 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;
use weir::cli::ConfArgs;
use weir::client::Client;
use weir::runtime::checkpoint::lock::{lock_state, LockOwner, LockState};
use weir::runtime::checkpoint::storage::{
    self, job_dirs, list_checkpoints, list_savepoints, load_checkpoint, orphans,
};
use weir::runtime::checkpoint::store;
use weir::runtime::checkpoint::KeyedStateHandle;
use weir::runtime::config::options;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "weir: Flink-style stream processing on actors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and validate configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect, verify and clean checkpoint directories (offline). DIR is a
    /// bare path, a file:///abs/path or an s3://bucket/prefix URI (S3 settings:
    /// the s3.* options of conf/weir.yaml, WEIR_S3_* or -D, else AWS_*).
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
        /// Sets a configuration option, e.g. -D s3.endpoint=http://127.0.0.1:9000 (repeatable).
        #[arg(short = 'D', value_name = "KEY=VALUE", global = true)]
        dynamic: Vec<String>,
    },
    /// Lists the jobs of a running process (REST API).
    List {
        #[command(flatten)]
        remote: Remote,
    },
    /// Triggers a checkpoint of a running job now and waits until it completes.
    Checkpoint {
        /// Job id, unique prefix of one, or job name.
        job: String,
        /// Return once triggered, without waiting for completion.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Takes a savepoint of a running job, waits until it completed and prints its path.
    Savepoint {
        /// Job id, unique prefix of one, or job name.
        job: String,
        /// Directory the savepoint goes into (default: the job's execution.checkpointing.savepoint-dir).
        #[arg(value_name = "DIR")]
        target: Option<PathBuf>,
        /// Same as DIR.
        #[arg(long, value_name = "DIR", conflicts_with = "target")]
        dir: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stops a running job with a savepoint (it ends FINISHED); prints the savepoint's path.
    Stop {
        /// Job id, unique prefix of one, or job name.
        job: String,
        /// Directory the savepoint goes into (default: the job's execution.checkpointing.savepoint-dir).
        #[arg(long, short = 'p', value_name = "DIR")]
        savepoint_path: Option<PathBuf>,
        /// Emit MAX_WATERMARK before the savepoint and finish the operators
        /// (every window and timer fires): for a job not meant to be resumed.
        #[arg(long, short = 'd')]
        drain: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Cancels a running job.
    Cancel {
        /// Job id, unique prefix of one, or job name.
        job: String,
        /// Take a savepoint (into DIR) before cancelling.
        #[arg(long, value_name = "DIR", num_args = 0..=1)]
        savepoint: Option<Option<PathBuf>>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Kills a subtask of a running job (a failure on purpose: it restarts from the latest checkpoint).
    Kill {
        /// Job id, unique prefix of one, or job name.
        job: String,
        /// The subtask: operator name and index, as name[index] or name/index.
        subtask: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Where the REST API is, and the output format.
#[derive(clap::Args)]
struct Remote {
    /// The REST API of the process running the job.
    #[arg(long, default_value = weir::client::DEFAULT_URL)]
    url: String,
    /// JSON output for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Shows every option's effective value and its source.
    Show {
        #[command(flatten)]
        conf: ConfArgs,
    },
    /// Validates the configuration (file, environment, -D).
    Check {
        #[command(flatten)]
        conf: ConfArgs,
    },
    /// Lists every option with its default and what it accepts.
    Keys,
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// Lists the checkpoints under a checkpoint root or job directory.
    List {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Shows one checkpoint (a chk-<n> directory).
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verifies checksums and references of every checkpoint under DIR.
    Verify {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Deletes files no complete checkpoint references, in the directories
    /// of jobs that are not running.
    Gc {
        dir: PathBuf,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Also sweep directories locked by a job of another machine or
        /// container (whose life cannot be checked from here): only when it
        /// is known to be stopped. A job running here is never swept.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    weir::cli::init_tracing();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Config { command } => config(command),
        Command::Checkpoints { command, dynamic } => checkpoints(command, &dynamic),
        Command::List { remote } => list(&remote),
        Command::Checkpoint {
            job,
            no_wait,
            timeout,
            remote,
        } => checkpoint(&job, no_wait, timeout, &remote),
        Command::Savepoint {
            job,
            target,
            dir,
            remote,
        } => savepoint(&job, target.or(dir), SavepointKind::Savepoint, &remote),
        Command::Stop {
            job,
            savepoint_path,
            drain,
            remote,
        } => savepoint(&job, savepoint_path, SavepointKind::Stop { drain }, &remote),
        Command::Cancel {
            job,
            savepoint: Some(dir),
            remote,
        } => savepoint(&job, dir, SavepointKind::Cancel, &remote),
        Command::Cancel {
            job,
            savepoint: None,
            remote,
        } => cancel(&job, &remote),
        Command::Kill {
            job,
            subtask,
            remote,
        } => kill(&job, &subtask, &remote),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config(command: ConfigCommand) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match command {
        ConfigCommand::Show { conf } => {
            let conf = conf.load()?;
            for (k, v, src) in conf.entries() {
                let v = weir::runtime::config::shown(k, v);
                println!("{k:<58} {v:<24} ({src})");
            }
            for (name, v, src) in conf.kafka_properties() {
                let k = format!("{}{name}", weir::runtime::config::KAFKA_PROPERTIES_PREFIX);
                let v = weir::runtime::config::shown(&k, v);
                println!("{k:<58} {v:<24} ({src})");
            }
        }
        ConfigCommand::Check { conf } => {
            conf.load()?;
            println!("configuration is valid");
        }
        ConfigCommand::Keys => {
            for d in options::ALL {
                println!(
                    "{} (default {}): {}; accepts {}",
                    d.key,
                    d.default,
                    d.doc,
                    d.kind.accepted()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for milliseconds since the epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn checkpoints(
    command: CheckpointsCommand,
    dynamic: &[String],
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let conf = weir::runtime::config::Conf::load(dynamic)?;
    store::configure(store::S3Settings::from_conf(&conf));
    match command {
        CheckpointsCommand::List { dir, json } => {
            let mut all = Vec::new();
            for job in job_dirs(&dir)? {
                for c in list_checkpoints(&job)? {
                    all.push((job.clone(), c));
                }
            }
            for c in list_savepoints(&dir)? {
                all.push((c.dir.clone(), c));
            }
            if json {
                let v: Vec<_> = all
                    .iter()
                    .map(|(j, c)| json!({"job_dir": j, "checkpoint": c}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if all.is_empty() {
                println!("no checkpoints under {}", dir.display());
            } else {
                println!(
                    "{:<34} {:>6}  {:<23}  {:>12}  {:<10}  status",
                    "job", "id", "completed", "bytes", "type"
                );
                for (job, c) in &all {
                    let name = job
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    println!(
                        "{:<34} {:>6}  {:<23}  {:>12}  {:<10}  {}{}",
                        name,
                        c.id,
                        c.completed_timestamp.map(utc).unwrap_or_else(|| "-".into()),
                        c.size,
                        if c.is_savepoint {
                            "SAVEPOINT"
                        } else {
                            "CHECKPOINT"
                        },
                        c.status,
                        c.problem
                            .as_ref()
                            .map(|p| format!(" ({p})"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CheckpointsCommand::Inspect { dir, json } => inspect(&dir, json),
        CheckpointsCommand::Verify { dir, json } => {
            let mut bad = 0;
            let mut rows = Vec::new();
            let savepoints = list_savepoints(&dir)?;
            for job in job_dirs(&dir)?.into_iter().map(Some).chain([None]) {
                let found = match &job {
                    Some(job) => list_checkpoints(job)?,
                    None => savepoints.clone(),
                };
                for mut c in found {
                    // Complete checkpoints: also the CRC-32 of every raw
                    // (RocksDB) file they reference, shared ones included.
                    if c.status == "complete" {
                        if let Err(e) =
                            load_checkpoint(&c.dir).and_then(|l| storage::verify_checkpoint(&l))
                        {
                            c.status = "corrupt";
                            c.problem = Some(e.to_string());
                        }
                    }
                    if c.status == "corrupt" {
                        bad += 1;
                    }
                    rows.push(c);
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"checkpoints": rows, "corrupt": bad}))?
                );
            } else {
                for c in &rows {
                    let verdict = match c.status {
                        "complete" => "ok: checksums and references verified".to_string(),
                        "incomplete" => {
                            "incomplete (no _metadata): never restored; `gc` removes it".to_string()
                        }
                        _ => format!("CORRUPT: {}", c.problem.clone().unwrap_or_default()),
                    };
                    println!("{}: {verdict}", c.dir.display());
                }
                println!("{} checkpoints, {bad} corrupt", rows.len());
            }
            Ok(if bad > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        CheckpointsCommand::Gc {
            dir,
            dry_run,
            force,
            json,
        } => {
            let mut removed = Vec::new();
            let mut skipped = Vec::new();
            let me = LockOwner::this_process();
            let mut elsewhere = Vec::new();
            for job in job_dirs(&dir)? {
                match lock_state(&job, &me) {
                    LockState::Running(_) => {
                        skipped.push(job);
                        continue;
                    }
                    LockState::Elsewhere(owner) if !force => {
                        elsewhere.push((job, owner));
                        continue;
                    }
                    _ => {}
                }
                for p in orphans(&job)? {
                    if !dry_run {
                        storage::remove(&p)
                            .map_err(|e| format!("cannot delete {}: {e}", p.display()))?;
                    }
                    removed.push(p);
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "removed": removed,
                        "dry_run": dry_run,
                        "skipped_running_jobs": skipped,
                        "skipped_jobs_elsewhere": elsewhere.iter().map(|(j, _)| j).collect::<Vec<_>>(),
                    }))?
                );
            } else {
                for s in &skipped {
                    println!("skipped {} (its job is running)", s.display());
                }
                for (s, owner) in &elsewhere {
                    println!(
                        "skipped {} (locked by process {} on host '{}', another machine or container: \
                         run gc there, or with --force once that job is known to be stopped)",
                        s.display(),
                        owner.pid,
                        owner.host
                    );
                }
                for p in &removed {
                    println!(
                        "{} {}",
                        if dry_run { "would delete" } else { "deleted" },
                        p.display()
                    );
                }
                println!(
                    "{} orphaned entries {}",
                    removed.len(),
                    if dry_run { "found" } else { "deleted" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect(dir: &Path, json: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let c = load_checkpoint(dir)?;
    let m = &c.metadata;
    let mut subtasks = Vec::new();
    for (h, st) in m.subtasks.iter().zip(&c.states) {
        let ops: Vec<_> = st
            .operators
            .iter()
            .map(|o| {
                let keyed = o.keyed.as_ref().map(|k| match k {
                    KeyedStateHandle::Canonical(k) => {
                        let groups: std::collections::BTreeSet<u16> =
                            k.states.values().flat_map(|s| s.key_groups.keys().copied()).collect();
                        json!({
                            // A savepoint's keyed state is canonical whatever backend took it.
                            "backend": if m.is_savepoint { "canonical" } else { "hashmap" },
                            "states": k.states.iter().map(|(n, s)| json!({"name": n, "kind": format!("{:?}", s.kind), "bytes": s.key_groups.values().map(Vec::len).sum::<usize>()})).collect::<Vec<_>>(),
                            "key_groups": groups.len(),
                            "key_group_min": groups.first(),
                            "key_group_max": groups.last(),
                        })
                    }
                    KeyedStateHandle::Rocks(h) => json!({
                        "backend": "rocksdb",
                        "instance": h.instance,
                        "states": h.states.iter().map(|(n, k)| json!({"name": n, "kind": format!("{k:?}")})).collect::<Vec<_>>(),
                        "key_groups": h.key_groups.len(),
                        "key_group_min": h.key_groups.start,
                        "key_group_max": h.key_groups.end,
                        "bytes": h.size(),
                        "files": h.files.iter().map(|f| json!({"path": f.path, "local": f.local, "bytes": f.size, "crc32": format!("{:08x}", f.crc32), "shared": f.path.starts_with("shared/")})).collect::<Vec<_>>(),
                    }),
                });
                let lists: Vec<_> = o.operator.summary().into_iter().map(|(n, e, b)| json!({"name": n, "elements": e, "bytes": b})).collect();
                json!({"operator": o.name, "keyed_state": keyed, "operator_state": lists})
            })
            .collect();
        let channel: Vec<_> = st
            .channel_state
            .iter()
            .map(|e| json!({"input": e.input, "batches": e.batches.len(), "bytes": e.batches.iter().map(Vec::len).sum::<usize>()}))
            .collect();
        subtasks.push(json!({"chain": h.chain, "subtask": h.subtask, "file": h.file, "bytes": h.size, "operators": ops, "channel_state": channel}));
    }
    let doc = json!({
        "path": c.dir, "job_id": m.job_id, "job_name": m.job_name, "checkpoint_id": m.checkpoint_id,
        "is_savepoint": m.is_savepoint, "trigger_timestamp": m.trigger_timestamp, "completed_timestamp": m.completed_timestamp,
        "format_version": storage::FORMAT_VERSION, "subtasks": subtasks,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "checkpoint {} of job '{}' ({})",
        m.checkpoint_id, m.job_name, m.job_id
    );
    println!("  path:      {}", c.dir.display());
    println!(
        "  triggered: {}   completed: {}",
        utc(m.trigger_timestamp),
        utc(m.completed_timestamp)
    );
    for s in doc["subtasks"].as_array().into_iter().flatten() {
        println!(
            "  subtask {} #{}: {} ({} bytes)",
            s["chain"].as_str().unwrap_or(""),
            s["subtask"],
            s["file"].as_str().unwrap_or(""),
            s["bytes"]
        );
        for o in s["operators"].as_array().into_iter().flatten() {
            print!("    operator {}", o["operator"].as_str().unwrap_or(""));
            if !o["keyed_state"].is_null() {
                let k = &o["keyed_state"];
                print!(
                    ": keyed state in {} key groups [{}..{}] ({})",
                    k["key_groups"],
                    k["key_group_min"],
                    k["key_group_max"],
                    k["backend"].as_str().unwrap_or("")
                );
            }
            println!();
            for f in o["keyed_state"]["files"].as_array().into_iter().flatten() {
                println!(
                    "      {} file {} ({} bytes, crc32 {})",
                    if f["shared"].as_bool().unwrap_or(false) {
                        "shared"
                    } else {
                        "owned"
                    },
                    f["path"].as_str().unwrap_or(""),
                    f["bytes"],
                    f["crc32"].as_str().unwrap_or("")
                );
            }
            for l in o["operator_state"].as_array().into_iter().flatten() {
                println!(
                    "      operator state '{}': {} elements, {} bytes",
                    l["name"].as_str().unwrap_or(""),
                    l["elements"],
                    l["bytes"]
                );
            }
        }
        for ch in s["channel_state"].as_array().into_iter().flatten() {
            println!(
                "    in-flight data of input {}: {} batches, {} bytes",
                ch["input"], ch["batches"], ch["bytes"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

type Outcome = Result<ExitCode, Box<dyn std::error::Error>>;

fn print_json(v: &serde_json::Value) -> Outcome {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

fn list(remote: &Remote) -> Outcome {
    let client = Client::new(&remote.url);
    let jobs = client.jobs()?;
    if remote.json {
        return print_json(&json!({ "jobs": jobs }));
    }
    if jobs.is_empty() {
        println!("no jobs at {}", client.base());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32}  {:<20}  {:<10}  {:<23}  {:>10}",
        "job id", "name", "state", "started", "duration"
    );
    for j in &jobs {
        println!(
            "{:<32}  {:<20}  {:<10}  {:<23}  {:>10}",
            j["jid"].as_str().unwrap_or("?"),
            j["name"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            j["start-time"]
                .as_u64()
                .map(utc)
                .unwrap_or_else(|| "-".into()),
            human_ms(j["duration"].as_u64().unwrap_or(0)),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
    }
}

fn checkpoint(job: &str, no_wait: bool, timeout: u64, remote: &Remote) -> Outcome {
    let client = Client::new(&remote.url);
    let id = client.resolve_job(job)?;
    let started = std::time::Instant::now();
    let t = client.request("POST", &format!("/jobs/{id}/checkpoints"), None)?;
    let trigger = t["request-id"].as_str().unwrap_or_default().to_string();
    let cid = t["checkpoint-id"].as_u64().unwrap_or(0);
    if no_wait {
        if remote.json {
            return print_json(
                &json!({"job": id, "checkpoint-id": cid, "request-id": trigger, "status": "IN_PROGRESS"}),
            );
        }
        println!("checkpoint {cid} of job {id} triggered");
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        let s = client.request("GET", &format!("/jobs/{id}/checkpoints/{trigger}"), None)?;
        if s["status"]["id"] == "COMPLETED" {
            let op = &s["operation"];
            if let Some(cause) = op.get("failure-cause") {
                let why = cause["stack-trace"].as_str().unwrap_or("unknown reason");
                if remote.json {
                    print_json(
                        &json!({"job": id, "checkpoint-id": cid, "status": "FAILED", "failure": why}),
                    )?;
                } else {
                    eprintln!("error: checkpoint {cid} of job {id} failed: {why}");
                }
                return Ok(ExitCode::FAILURE);
            }
            let path = op["external_path"].as_str().unwrap_or("");
            if remote.json {
                return print_json(
                    &json!({"job": id, "checkpoint-id": cid, "status": "COMPLETED", "external_path": path}),
                );
            }
            println!(
                "checkpoint {cid} of job {id} completed in {}: {path}",
                human_ms(started.elapsed().as_millis() as u64)
            );
            return Ok(ExitCode::SUCCESS);
        }
        if started.elapsed() > std::time::Duration::from_secs(timeout) {
            return Err(format!(
                "checkpoint {cid} of job {id} did not complete within {timeout} s"
            )
            .into());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// What a savepoint command does after the savepoint.
#[derive(Clone, Copy)]
enum SavepointKind {
    Savepoint,
    Stop { drain: bool },
    Cancel,
}

/// Takes a savepoint over REST (`POST /jobs/:id/savepoints` or `/stop`), polls
/// until it completed, prints its path; stop and cancel then wait for the job's end.
fn savepoint(job: &str, dir: Option<PathBuf>, kind: SavepointKind, remote: &Remote) -> Outcome {
    let client = Client::new(&remote.url);
    let id = client.resolve_job(job)?;
    // The server resolves a relative directory against its own working directory: send ours.
    let dir = dir.map(|d| std::path::absolute(&d).unwrap_or(d).display().to_string());
    let r = match kind {
        SavepointKind::Stop { drain } => client.request(
            "POST",
            &format!("/jobs/{id}/stop"),
            Some(&json!({ "targetDirectory": dir, "drain": drain })),
        )?,
        _ => client.request(
            "POST",
            &format!("/jobs/{id}/savepoints"),
            Some(&json!({
                "target-directory": dir,
                "cancel-job": matches!(kind, SavepointKind::Cancel),
            })),
        )?,
    };
    let trigger = r["request-id"].as_str().unwrap_or_default().to_string();
    if !remote.json {
        println!(
            "Triggered savepoint of job {id} (request {trigger}); waiting for it to complete."
        );
    }
    let location = loop {
        let s = client.request("GET", &format!("/jobs/{id}/savepoints/{trigger}"), None)?;
        if s["status"]["id"] == "COMPLETED" {
            let op = &s["operation"];
            if let Some(cause) = op.get("failure-cause") {
                let why = cause["stack-trace"].as_str().unwrap_or("unknown reason");
                if remote.json {
                    print_json(&json!({"job": id, "status": "FAILED", "failure": why}))?;
                } else {
                    eprintln!("error: savepoint of job {id} failed: {why}");
                }
                return Ok(ExitCode::FAILURE);
            }
            break (
                op["location"].as_str().unwrap_or_default().to_string(),
                op["job-state"].as_str().map(str::to_string),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (location, mut state) = location;
    // Stop and cancel: report the state the job ended in. The operation's
    // result names it (it completes with the job's end, and the job's process
    // may exit right after it was read); ask only a server that does not.
    if state.is_none() && !matches!(kind, SavepointKind::Savepoint) {
        let started = std::time::Instant::now();
        let mut st = String::from("RUNNING");
        while started.elapsed() < std::time::Duration::from_secs(60) {
            let d = client.request("GET", &format!("/jobs/{id}"), None)?;
            st = d["state"].as_str().unwrap_or("?").to_string();
            if ["CANCELED", "FINISHED", "FAILED"].contains(&st.as_str()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        state = Some(st);
    }
    if remote.json {
        return print_json(
            &json!({"job": id, "status": "COMPLETED", "location": location, "state": state}),
        );
    }
    println!("Savepoint completed. Path: {location}");
    if let Some(st) = state {
        println!("job {id}: {}", st.to_lowercase());
    }
    Ok(ExitCode::SUCCESS)
}

fn cancel(job: &str, remote: &Remote) -> Outcome {
    let client = Client::new(&remote.url);
    let id = client.resolve_job(job)?;
    client.request("PATCH", &format!("/jobs/{id}?mode=cancel"), None)?;
    // Wait (briefly) for the job to end, to report its final state.
    let started = std::time::Instant::now();
    let mut state = String::from("CANCELLING");
    while started.elapsed() < std::time::Duration::from_secs(30) {
        let d = client.request("GET", &format!("/jobs/{id}"), None)?;
        state = d["state"].as_str().unwrap_or("?").to_string();
        if ["CANCELED", "FINISHED", "FAILED"].contains(&state.as_str()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if remote.json {
        return print_json(&json!({"job": id, "state": state}));
    }
    println!("job {id}: {}", state.to_lowercase());
    Ok(ExitCode::SUCCESS)
}

fn kill(job: &str, subtask: &str, remote: &Remote) -> Outcome {
    let (name, index) = weir::client::parse_subtask(subtask)?;
    let client = Client::new(&remote.url);
    let id = client.resolve_job(job)?;
    let r = client.request(
        "POST",
        &format!(
            "/jobs/{id}/subtasks/{}/{index}/kill",
            weir::client::encode_segment(&name)
        ),
        None,
    )?;
    if remote.json {
        return print_json(
            &json!({"job": id, "operator": name, "subtask": index, "numRestarts": r["numRestarts"]}),
        );
    }
    println!("killed {name}[{index}] of job {id}; the job restarts it from its latest checkpoint");
    Ok(ExitCode::SUCCESS)
}
