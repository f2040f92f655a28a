//! The `weir` CLI's remote commands against running jobs: the built binary
//! talks to the REST API of an in-process job (and of the wordcount example
//! with `--serve`): list, checkpoint, savepoint, cancel, kill, human and JSON
//! output, one-line errors with a non-zero exit status.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use common::{get_json, wait_for};
use serde_json::Value;
use weir::prelude::*;

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failure with exactly one line on stderr containing `needle`.
fn assert_fails(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected a failure; stdout: {}",
        stdout(o)
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "'{needle}' not in: {err}");
}

fn assert_ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "weir failed: {}{}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(o)
}

#[test]
fn cli_controls_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    let env = common::rest_env(
        dir.path(),
        &[
            ("execution.checkpointing.interval", "1h"),
            ("restart-strategy.type", "fixed-delay"),
            ("restart-strategy.fixed-delay.attempts", "1000"),
            ("parallelism.default", "2"),
        ],
    );
    common::numbers_count_job(&env, 5, 100, 20_000.0);
    let job = env.execute_async("cli-job").unwrap();
    let url = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();

    // list: human and JSON.
    let out = assert_ok(&weir(&["list", "--url", &url]));
    let line = out
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("job not listed:\n{out}"));
    assert!(
        line.contains("cli-job") && line.contains("RUNNING"),
        "{line}"
    );
    let v: Value =
        serde_json::from_str(&assert_ok(&weir(&["list", "--url", &url, "--json"]))).unwrap();
    assert!(v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["jid"] == id.as_str()));

    // checkpoint by id prefix: waits for completion.
    let out = assert_ok(&weir(&["checkpoint", &id[..10], "--url", &url]));
    assert!(out.contains("completed"), "{out}");
    let cid: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let d = get_json(&format!("{url}/jobs/{id}/checkpoints/details/{cid}"));
    assert_eq!(d["status"], "COMPLETED");
    assert!(
        out.contains(&format!("chk-{cid}")),
        "prints the path: {out}"
    );
    // by name, JSON.
    let v: Value = serde_json::from_str(&assert_ok(&weir(&[
        "checkpoint",
        "cli-job",
        "--url",
        &url,
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["status"], "COMPLETED");
    assert!(v["checkpoint-id"].as_u64().unwrap() > cid);

    // kill, both spellings of a subtask: the job restarts each time.
    let out = assert_ok(&weir(&["kill", &id, "count[1]", "--url", &url]));
    assert!(out.contains("killed count[1]"), "{out}");
    wait_for("the first restart", 60, || {
        (job.num_restarts() >= 1).then_some(())
    });
    wait_for("a second kill to be accepted", 60, || {
        let o = weir(&["kill", &id, "numbers/0", "--url", &url, "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_str::<Value>(&stdout(&o)).unwrap())
    });
    wait_for("the second restart", 60, || {
        (job.num_restarts() >= 2).then_some(())
    });
    // The chain's name exactly as REST (and so the web UI) shows it.
    let details = get_json(&format!("{url}/jobs/{id}"));
    let chain = details["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .find(|n| n.contains(" -> "))
        .unwrap_or_else(|| panic!("no chained vertex: {details}"))
        .to_string();
    assert_eq!(chain, "count -> sink");
    wait_for("a kill by the chain's name to be accepted", 60, || {
        let o = weir(&["kill", &id, &format!("{chain}[0]"), "--url", &url]);
        o.status.success().then(|| stdout(&o))
    });
    wait_for("the third restart", 60, || {
        (job.num_restarts() >= 3).then_some(())
    });

    // Errors: one line, non-zero exit.
    assert_fails(
        &weir(&["kill", &id, "nope[0]", "--url", &url]),
        "no operator named 'nope'",
    );
    // The error names what would have matched.
    assert_fails(
        &weir(&["kill", &id, "count -> sinks[0]", "--url", &url]),
        "(operators and chains: 'numbers', 'count -> sink', 'count', 'sink')",
    );
    assert_fails(
        &weir(&["kill", &id, "count[7]", "--url", &url]),
        "parallelism 2",
    );
    assert_fails(
        &weir(&["kill", &id, "count", "--url", &url]),
        "name[index] or name/index",
    );
    assert_fails(
        &weir(&["checkpoint", "no-such-job", "--url", &url]),
        "no job 'no-such-job'",
    );
    // No directory given and no execution.checkpointing.savepoint-dir.
    assert_fails(
        &weir(&["savepoint", &id, "--url", &url]),
        "execution.checkpointing.savepoint-dir",
    );
    assert_fails(
        &weir(&["cancel", &id, "--savepoint", "--url", &url]),
        "execution.checkpointing.savepoint-dir",
    );
    // savepoint JOB DIR: waits for completion and prints the path.
    let sps = dir.path().join("savepoints");
    let out = assert_ok(&weir(&[
        "savepoint",
        &id,
        sps.to_str().unwrap(),
        "--url",
        &url,
    ]));
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("Savepoint completed. Path: "))
        .unwrap_or_else(|| panic!("no path printed: {out}"));
    assert!(path.contains(&format!("savepoint-{}-", &id[..6])), "{path}");
    assert!(std::path::Path::new(path).join("_metadata").is_file());
    // `checkpoints list` shows it as a SAVEPOINT; `verify` checks it.
    let out = assert_ok(&weir(&["checkpoints", "list", sps.to_str().unwrap()]));
    assert!(
        out.contains("SAVEPOINT") && out.contains("complete"),
        "{out}"
    );
    let out = assert_ok(&weir(&["checkpoints", "verify", path]));
    assert!(out.contains("1 checkpoints, 0 corrupt"), "{out}");
    assert_ok(&weir(&["checkpoints", "inspect", path]));
    assert_fails(
        &weir(&["list", "--url", "http://127.0.0.1:9"]),
        "cannot reach the weir REST API",
    );

    // cancel with a savepoint.
    let out = assert_ok(&weir(&[
        "cancel",
        "--savepoint",
        sps.to_str().unwrap(),
        "cli-job",
        "--url",
        &url,
    ]));
    assert!(out.contains("Savepoint completed. Path: "), "{out}");
    assert!(out.contains("canceled"), "{out}");
    assert!(matches!(job.wait(), Err(Error::Cancelled(_))));
    assert_fails(&weir(&["cancel", &id, "--url", &url]), "already ended");
}

#[test]
fn cli_stop_with_savepoint_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let sps = dir.path().join("sp");
    let env = common::rest_env(
        &dir.path().join("ckpt"),
        &[
            ("execution.checkpointing.interval", "200ms"),
            (
                "execution.checkpointing.savepoint-dir",
                sps.to_str().unwrap(),
            ),
            ("parallelism.default", "2"),
        ],
    );
    common::numbers_count_job(&env, 5, 100, 20_000.0);
    let job = env.execute_async("stop-job").unwrap();
    let url = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();
    // No directory: the configured savepoint-dir.
    let out = assert_ok(&weir(&["stop", &id, "--url", &url]));
    let path = out
        .lines()
        .find_map(|l| l.strip_prefix("Savepoint completed. Path: "))
        .unwrap_or_else(|| panic!("no path printed: {out}"));
    assert!(std::path::Path::new(path).starts_with(&sps), "{path}");
    assert!(out.contains("finished"), "{out}");
    job.wait().expect("a stopped job ends FINISHED");
    let d = get_json(&format!("{url}/jobs/{id}"));
    assert_eq!(d["state"], "FINISHED");
}

#[test]
fn wordcount_serves_the_ui_and_keeps_serving_with_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::example("wordcount"))
        .args(["--words", "200000", "--serve", "-q", "-D", "rest.port=0"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("WEIR_EXECUTION_CHECKPOINTING_DIR", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wordcount");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url_line = wait_for("the web UI's URL", 60, || {
        rx.recv_timeout(std::time::Duration::from_millis(100))
            .ok()
            .filter(|l| l.starts_with("web UI: "))
    });
    let page = url_line.trim_start_matches("web UI: ").to_string();
    let base = page.split("/#").next().unwrap().to_string();
    // The job ends (bounded input); --serve keeps the server up.
    wait_for("the serving message", 120, || {
        rx.recv_timeout(std::time::Duration::from_millis(100))
            .ok()
            .filter(|l| l.contains("still serving"))
    });
    let out = assert_ok(&weir(&["list", "--url", &base]));
    assert!(
        out.contains("wordcount") && out.contains("FINISHED"),
        "{out}"
    );
    let (s, html) = common::http("GET", &format!("{base}/"), None);
    assert_eq!(s, 200);
    assert!(html.contains("weir"));
}
