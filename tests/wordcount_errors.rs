//! Bad input, bad output and bad configuration: one clear line on stderr and a
//! non-zero exit, never a panic.

mod common;

use common::*;

fn assert_clean_failure(out: &std::process::Output, expect: &[&str]) {
    assert!(!out.status.success(), "should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "panic instead of an error: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line: {stderr}");
    for e in expect {
        assert!(
            errors[0].contains(e),
            "{:?} should mention {e:?}",
            errors[0]
        );
    }
}

#[test]
fn unreadable_input() {
    let out = run_example("wordcount", &["--input", "/no/such/corpus.txt"]);
    assert_clean_failure(&out, &["cannot read input", "/no/such/corpus.txt"]);
}

#[test]
fn unwritable_output() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let target = file.join("out");
    let corpus = corpus_dir();
    let out = run_example(
        "wordcount",
        &[
            "--input",
            corpus.to_str().unwrap(),
            "--output",
            target.to_str().unwrap(),
        ],
    );
    assert_clean_failure(&out, &["output directory", target.to_str().unwrap()]);
}

#[test]
fn bad_config_value() {
    let out = run_example(
        "wordcount",
        &["-D", "parallelism.default=0", "--words", "1000"],
    );
    assert_clean_failure(&out, &["parallelism.default", "'0'", "integer from 1"]);
    let out = run_example(
        "wordcount",
        &["-D", "state.backend.type=bogus", "--words", "1000"],
    );
    assert_clean_failure(&out, &["state.backend.type", "bogus", "hashmap"]);
}

#[test]
fn unknown_config_key() {
    let out = run_example(
        "wordcount",
        &["-D", "parallelism.defualt=2", "--words", "1000"],
    );
    assert_clean_failure(
        &out,
        &[
            "unknown configuration key 'parallelism.defualt'",
            "did you mean 'parallelism.default'",
        ],
    );
}

#[test]
fn bad_environment_override() {
    let out = std::process::Command::new(example("wordcount"))
        .args(["--words", "1000"])
        .env("WEIR_PIPELINE_MAX_PARALLELISM", "lots")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_clean_failure(
        &out,
        &[
            "pipeline.max-parallelism",
            "lots",
            "WEIR_PIPELINE_MAX_PARALLELISM",
        ],
    );
}

/// A mistyped `WEIR_FAILPOINTS` is refused at start with the item and what
/// was expected (it used to arm an `error` every time, or nothing at all).
#[test]
fn bad_failpoints_spec() {
    let run = |spec: &str| {
        let mut cmd = std::process::Command::new(example("wordcount"));
        cmd.args(["--words", "1000", "--no-ui", "-q"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("WEIR_FAILPOINTS", spec);
        cmd.output().unwrap()
    };
    let out = run("sync-snapshot=exitt");
    assert_clean_failure(&out, &["WEIR_FAILPOINTS", "unknown action 'exitt'"]);
    let out = run("sync-snapshot=exit@x");
    assert_clean_failure(&out, &["WEIR_FAILPOINTS", "bad hit count '@x'"]);
    let out = run("sync-snaphot=exit");
    assert_clean_failure(
        &out,
        &["WEIR_FAILPOINTS", "unknown failure point 'sync-snaphot'"],
    );
    // A good one still runs.
    let out = run("sync-snapshot=exit@1000000");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--rate` takes a positive number of words per second, and paces the
/// built-in text or `--input`, never a Kafka topic.
#[test]
fn bad_rate() {
    let out = run_example("wordcount", &["--rate", "0", "--words", "1000"]);
    assert_clean_failure(&out, &["'0' is not a rate", "words per second"]);
    let out = run_example("wordcount", &["--rate", "fast"]);
    assert_clean_failure(&out, &["'fast' is not a rate"]);
    let out = run_example(
        "wordcount",
        &["--rate", "1000", "--kafka-input-topic", "lines"],
    );
    assert_clean_failure(&out, &["--rate", "cannot be used with"]);
}
