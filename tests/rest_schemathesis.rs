//! The OpenAPI document (`GET /openapi.json`) against the responses of a
//! live wordcount, checked by schemathesis (PyPI) with every check
//! (`--checks all`): responses match their schemas, schema-valid requests
//! are accepted, schema-violating ones rejected, no 5xx.
//!
//! One wordcount serves the non-destructive endpoints (all but cancel, stop,
//! kill and savepoints, which may cancel the job) with its job id, a vertex id and a savepoint trigger id filled
//! in (a fixed parameter that schemathesis believes it made invalid would be
//! reported as accepted, so checkpoint ids are generated); a second one, of their own, takes kill,
//! savepoints and cancel, in that order. Savepoint requests are tested with schemathesis' coverage phase
//! only (boundary values and wrong types): its random fuzzing would send
//! arbitrary absolute paths as target directories, and the server writes
//! savepoints where it is told. Both processes run in a temporary working
//! directory, where relative target directories land.
//!
//! `tests/run.sh` installs schemathesis; without it this test fails with the
//! install command.

mod common;
#[path = "common/wordcount_process.rs"]
mod wordcount_process;

use std::path::Path;
use std::process::Command;

use common::{get_json, wait_for};
use wordcount_process::Wordcount;

const INSTALL: &str = "python3 -m pip install 'schemathesis==4.32.5'";

/// The schemathesis command, or a failure that says how to install it.
fn schemathesis() -> Command {
    for (program, pre) in [
        ("schemathesis", &[][..]),
        ("python3", &["-m", "schemathesis.cli"][..]),
    ] {
        let ok = Command::new(program)
            .args(pre)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            let mut c = Command::new(program);
            c.args(pre);
            return c;
        }
    }
    panic!("schemathesis is not installed (tests/run.sh installs it); run: {INSTALL}");
}

/// Runs schemathesis against the server at `base` with `args`, the path
/// parameters `params` fixed (from a `schemathesis.toml` in a directory of
/// its own under `dir`); fails the test with its report unless every check
/// passed.
///
/// Fixed parameters go with `--mode positive` only: in negative mode
/// schemathesis may "mutate" a fixed parameter, send it unchanged, and
/// report a valid request accepted as a schema violation. Negative runs
/// generate every parameter.
fn run_schemathesis(
    dir: &Path,
    base: &str,
    what: &str,
    params: &[(&str, String)],
    args: &[&str],
) -> String {
    let cfg_dir = dir.join(format!("schemathesis-{}", what.replace(' ', "-")));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let mut toml = String::new();
    if !params.is_empty() {
        toml.push_str("[parameters]\n");
        for (k, v) in params {
            toml.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        }
    }
    std::fs::write(cfg_dir.join("schemathesis.toml"), toml).unwrap();
    let mode = if params.is_empty() { "all" } else { "positive" };
    let out = schemathesis()
        .current_dir(&cfg_dir)
        .args(["--no-color", "run", &format!("{base}/openapi.json")])
        .args(["--checks", "all", "--seed", "1", "--max-examples", "30"])
        .args(["--mode", mode])
        .args(args)
        .output()
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis ({what}) failed:\n{report}"
    );
    // It ran requests, not nothing (a report of 0 test cases also exits 0).
    // Its summary line: "160 generated, 160 passed".
    let cases = report
        .lines()
        .find_map(|l| l.split_once(" generated, ")?.1.strip_suffix(" passed"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        cases > 0,
        "schemathesis ({what}) ran no test case:\n{report}"
    );
    eprintln!("schemathesis ({what}): {cases} test cases passed");
    report
}

fn start(dir: &Path, extra: &[&str]) -> (Wordcount, String, String) {
    let sp = dir.join("savepoints");
    let sp_dir = format!("execution.checkpointing.savepoint-dir={}", sp.display());
    let mut args = vec![
        "--words",
        "0",
        "--rate",
        "50000",
        "-D",
        "execution.checkpointing.interval=100ms",
        "-D",
        &sp_dir,
    ];
    args.extend_from_slice(extra);
    let mut wc = Wordcount::start_in(dir, &dir.join("ckpt"), &args);
    let (base, id) = wc.web_ui();
    wc.counting();
    (wc, base, id)
}

#[test]
fn the_openapi_document_matches_every_response() {
    // Fail at once, with the install command, when it is missing.
    let _ = schemathesis();
    let dir = tempfile::tempdir().unwrap();

    // A running job for the endpoints that leave it running.
    let (_wc, base, id) = start(dir.path(), &[]);
    // Checkpoints 1 and 2 exist: the smallest ids schemathesis sends find one.
    wait_for("two completed checkpoints", 60, || {
        let c = get_json(&format!("{base}/jobs/{id}/checkpoints"));
        (c["counts"]["completed"].as_u64()? >= 2).then_some(())
    });
    let vertex = get_json(&format!("{base}/jobs/{id}"))["vertices"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = common::http("POST", &format!("{base}/jobs/{id}/savepoints"), Some("{}"));
    assert_eq!(status, 202, "{body}");
    let trigger = serde_json::from_str::<serde_json::Value>(&body).unwrap()["request-id"]
        .as_str()
        .unwrap()
        .to_string();
    let params = [
        ("path.jobid", id.clone()),
        ("path.vertexid", vertex),
        ("path.triggerid", trigger),
    ];
    let reads = [
        "--exclude-method",
        "PATCH",
        "--exclude-path-regex",
        "/(stop|kill|savepoints)$",
    ];
    run_schemathesis(dir.path(), &base, "reads positive", &params, &reads);
    run_schemathesis(dir.path(), &base, "reads negative", &[], &reads);
    // The job survived all of it.
    assert_eq!(get_json(&format!("{base}/jobs/{id}"))["state"], "RUNNING");

    // A job of their own for kill, savepoints (`cancel-job: true` cancels)
    // and cancel; it keeps serving after its end.
    let own = dir.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    let (_wc2, base2, id2) = start(&own, &["--serve"]);
    let params = [
        ("path.jobid", id2.clone()),
        ("path.name", "Tokenizer".to_string()),
    ];
    let kill = ["--include-path-regex", "/kill$"];
    let savepoints = [
        "--include-path-regex",
        "/savepoints$",
        "--phases",
        "examples,coverage",
    ];
    let cancel = ["--include-method", "PATCH"];
    run_schemathesis(&own, &base2, "kill positive", &params, &kill);
    run_schemathesis(&own, &base2, "kill negative", &[], &kill);
    run_schemathesis(
        &own,
        &base2,
        "savepoints positive",
        &params[..1],
        &savepoints,
    );
    run_schemathesis(&own, &base2, "savepoints negative", &[], &savepoints);
    run_schemathesis(&own, &base2, "cancel negative", &[], &cancel);
    run_schemathesis(&own, &base2, "cancel positive", &params[..1], &cancel);
    let ex = get_json(&format!("{base2}/jobs/{id2}/exceptions"));
    let entries = ex["exceptionHistory"]["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["stacktrace"]
            .as_str()
            .is_some_and(|s| s.contains("killed on request"))),
        "kill requests reached the job: {ex}"
    );
    assert_eq!(
        get_json(&format!("{base2}/jobs/{id2}"))["state"],
        "CANCELED"
    );
}
