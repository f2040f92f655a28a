//! The `weir` CLI against a real wordcount process that exits when its job
//! ends (no `--serve`), as a new user runs them: `weir stop` and `weir cancel
//! --savepoint` print the savepoint and succeed although the process goes
//! away with the job (the REST server answers until the result was read, at
//! most `rest.async.result-linger`); a stopped wordcount prints its top
//! words; and a run resumed from the stop's savepoint ends with exact counts.

mod common;
#[path = "common/wordcount_process.rs"]
mod wordcount_process;

use common::top_words;
use wordcount_process::Wordcount;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Words of the run `weir stop` interrupts and the resumed run completes:
/// several seconds of counting, so the stop lands in the middle.
const WORDS: u64 = 100_000_000;
/// Words of runs that only end when told to.
const ENDLESS: &str = "3000000000";

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "weir failed ({}): {out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn value(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no '{label}' in:\n{stdout}"))
        .trim()
        .parse()
        .unwrap()
}

/// The path `weir` printed after `Savepoint completed. Path: `.
/// The README's `weir stop` of the job named wordcount, its savepoint
/// into `sps`; the command's output (it succeeded).
fn stop_wordcount(url: &str, sps: &Path) -> String {
    ok(&weir(&[
        "stop",
        "--url",
        url,
        "--savepoint-path",
        sps.to_str().unwrap(),
        "wordcount",
    ]))
}

fn savepoint_path(out: &str) -> PathBuf {
    PathBuf::from(
        out.lines()
            .find_map(|l| l.strip_prefix("Savepoint completed. Path: "))
            .unwrap_or_else(|| panic!("no savepoint path printed: {out}")),
    )
}

#[test]
fn stop_prints_the_savepoint_and_the_top_words_and_the_resumed_run_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let sps = dir.path().join("savepoints");
    let words = WORDS.to_string();
    let mut wc = Wordcount::start(&ckpt, &["--words", &words]);
    let (url, id) = wc.web_ui();
    wc.counting();

    // The README's command, by job name.
    let out = stop_wordcount(&url, &sps);
    let sp = savepoint_path(&out);
    assert!(sp.starts_with(&sps), "{}", sp.display());
    assert!(sp.join("_metadata").is_file(), "{}", sp.display());
    assert!(out.contains(&format!("job {id}: finished")), "{out}");

    let first = wc.ended();
    assert!(first.status.success(), "{}\n{}", first.stdout, first.stderr);
    let counted = value(&first.stdout, "total words: ");
    assert!(counted > 0 && counted < WORDS, "stopped midway: {counted}");
    let top = top_words(&first.stdout);
    assert_eq!(
        top.len(),
        10,
        "ten top words after a stop:\n{}",
        first.stdout
    );
    assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "{top:?}");
    assert!(top.iter().map(|t| t.1).sum::<u64>() <= counted, "{top:?}");

    // Resumed from the stop's savepoint, the job counts the rest: its top
    // words are the whole text's, exactly.
    let resumed = Wordcount::start(
        &ckpt,
        &["--words", &words, "-q", "-s", sp.to_str().unwrap()],
    );
    let second = resumed.ended();
    assert!(
        second.status.success(),
        "{}\n{}",
        second.stdout,
        second.stderr
    );
    assert!(
        second.stderr.contains("restored from savepoint"),
        "{}",
        second.stderr
    );
    let reference = common::generated_reference(WORDS, 10_000, 42);
    let mut expected: Vec<(String, u64)> = reference.into_iter().collect();
    expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    expected.truncate(10);
    assert_eq!(top_words(&second.stdout), expected);
    // What the stopped run reported was a prefix of the truth.
    for (w, c) in &top {
        let total = expected
            .iter()
            .find(|e| e.0 == *w)
            .map_or(u64::MAX, |e| e.1);
        assert!(
            *c <= total,
            "{w}: {c} counted before the stop, {total} in all"
        );
    }
}

#[test]
fn cancel_with_savepoint_prints_the_savepoint_of_a_wordcount_that_exits() {
    let dir = tempfile::tempdir().unwrap();
    let sps = dir.path().join("savepoints");
    let mut wc = Wordcount::start(&dir.path().join("ckpt"), &["--words", ENDLESS]);
    let (url, id) = wc.web_ui();
    wc.counting();
    let out = ok(&weir(&[
        "cancel",
        "--url",
        &url,
        "--savepoint",
        sps.to_str().unwrap(),
        &id,
    ]));
    let sp = savepoint_path(&out);
    assert!(
        sp.starts_with(&sps) && sp.join("_metadata").is_file(),
        "{out}"
    );
    assert!(out.contains(&format!("job {id}: canceled")), "{out}");
    let end = wc.ended();
    // A cancelled job is not a success for the program that ran it.
    assert!(!end.status.success());
    assert!(end.stderr.contains("cancel"), "{}", end.stderr);
}

#[test]
fn cancel_reports_the_end_of_a_wordcount_that_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut wc = Wordcount::start(&dir.path().join("ckpt"), &["--words", ENDLESS]);
    let (url, id) = wc.web_ui();
    wc.counting();
    let out = weir(&["cancel", "--url", &url, &id, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(v["job"], id.as_str());
    assert_eq!(v["state"], "CANCELED");
    let end = wc.ended();
    assert!(!end.status.success());
}

#[test]
fn a_result_nobody_reads_holds_the_process_only_for_the_linger() {
    let dir = tempfile::tempdir().unwrap();
    let sps = dir.path().join("savepoints");
    let mut wc = Wordcount::start(
        &dir.path().join("ckpt"),
        &["--words", ENDLESS, "-D", "rest.async.result-linger=1s"],
    );
    let (url, id) = wc.web_ui();
    wc.counting();
    // Stop over REST and never poll the result.
    let body = serde_json::json!({ "targetDirectory": sps }).to_string();
    let (status, text) = common::http("POST", &format!("{url}/jobs/{id}/stop"), Some(&body));
    assert_eq!(status, 202, "{text}");
    let end = wc.ended();
    assert!(end.status.success(), "{}\n{}", end.stdout, end.stderr);
    assert!(
        end.stderr
            .contains("rest.async.result-linger (1s) passed with results no client read"),
        "{}",
        end.stderr
    );
    let saved: Vec<_> = std::fs::read_dir(&sps).unwrap().flatten().collect();
    assert_eq!(saved.len(), 1, "one savepoint in {}", sps.display());
    assert!(saved[0].path().join("_metadata").is_file());
    assert_eq!(top_words(&end.stdout).len(), 10, "{}", end.stdout);
}

/// `--words 0 --rate N`: the built-in text without end, paced to about N
/// words/s; the job runs until `weir stop` ends it with a savepoint.
#[test]
fn an_unbounded_paced_wordcount_runs_until_stopped() {
    const RATE: f64 = 200_000.0;
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let sps = dir.path().join("savepoints");
    let started = Instant::now();
    let mut wc = Wordcount::start(&ckpt, &["--words", "0", "--rate", "200000"]);
    let (url, _) = wc.web_ui();
    wc.counting();
    // An unbounded job is still running seconds later.
    std::thread::sleep(Duration::from_secs(2));
    let listed = ok(&weir(&["list", "--url", &url]));
    assert!(listed.contains("RUNNING"), "{listed}");
    let out = stop_wordcount(&url, &sps);
    let secs = started.elapsed().as_secs_f64();
    assert!(savepoint_path(&out).join("_metadata").is_file(), "{out}");
    let end = wc.ended();
    assert!(end.status.success(), "{}\n{}", end.stdout, end.stderr);
    let counted = value(&end.stdout, "total words: ");
    // Paced: not more than the rate allows over the run (with slack for
    // lines of more than ten words), and it did count.
    assert!(
        counted > 0 && (counted as f64) < RATE * secs * 1.5,
        "{counted} words in {secs:.1} s at {RATE} words/s"
    );
    assert!(end.stderr.contains("without end"), "{}", end.stderr);
}

/// SIGTERM (what Kubernetes and systemd send) cancels the job cleanly: the
/// process exits non-zero saying why, and its job directory holds complete
/// checkpoints only, without the `.running` lock or temporary files.
#[test]
fn sigterm_cancels_the_job_cleanly_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let mut wc = Wordcount::start(
        &ckpt,
        &[
            "--words",
            "0",
            "--rate",
            "500000",
            "-D",
            "execution.checkpointing.interval=50ms",
        ],
    );
    wc.wait_line("completed checkpoint", |l| {
        l.starts_with("checkpoint ").then_some(())
    });
    let killed = Command::new("kill")
        .args(["-TERM", &wc.pid().to_string()])
        .status()
        .expect("the kill command");
    assert!(killed.success());
    let end = wc.ended();
    assert_eq!(end.status.code(), Some(1), "{}", end.stderr);
    assert!(
        end.stderr.contains("received SIGTERM: cancelling the job")
            && end.stderr.contains("(on SIGTERM)"),
        "{}",
        end.stderr
    );
    let job = common::single_job_dir(&ckpt);
    assert!(
        common::only_complete_checkpoints(&job) >= 1,
        "the retained checkpoint of a cancelled job"
    );
}
