//! Checkpoint storage locations: `file:///abs/path` works exactly like the
//! bare path (checkpoints land there, the CLI lists and verifies them, a job
//! restores from them); unsupported schemes, `file://host/...` and an
//! unreachable S3 endpoint fail the job at start with a clear message (and
//! the CLI with exit status 1), never a panic or a hang.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("AWS_ENDPOINT")
        .output()
        .unwrap()
}

/// Runs wordcount with `args`; fails the test if it has not ended after 120 s
/// (a hang), without asserting anything about how long it took.
fn wordcount_bounded(args: &[&str]) -> Output {
    let mut cmd = Command::new(example("wordcount"));
    cmd.args(["--words", "20000", "-q", "-p", "2"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") || k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("WEIR_REST_PORT", "0");
    let mut child = cmd.spawn().unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("wordcount did not end within 120 s: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn job_dirs_under(root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

#[test]
fn file_uri_works_like_a_bare_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ckpt");
    let uri = format!("file://{}", root.display());
    let o = wordcount_bounded(&[
        "-D",
        &format!("execution.checkpointing.dir={uri}"),
        "-D",
        "execution.checkpointing.interval=20ms",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // The checkpoints are in the directory the URI names, Flink's layout.
    let jobs = job_dirs_under(&root);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = &jobs[0];
    let chk = latest_checkpoint(&root).expect("a complete checkpoint");
    assert!(chk.join("_metadata").is_file());
    assert!(job.join("shared").is_dir() && job.join("taskowned").is_dir());
    let id = chk.file_name().unwrap().to_string_lossy().into_owned();

    // The CLI takes the URI and prints the same as for the bare path.
    let by_uri = weir(&["checkpoints", "list", &uri]);
    let by_path = weir(&["checkpoints", "list", root.to_str().unwrap()]);
    assert!(by_uri.status.success(), "{}", text(&by_uri));
    assert_eq!(text(&by_uri), text(&by_path));
    assert!(text(&by_uri).contains(" complete"), "{}", text(&by_uri));
    let v = weir(&["checkpoints", "verify", &uri]);
    assert!(v.status.success(), "{}", text(&v));
    assert!(
        text(&v).contains(&format!(
            "{}: ok: checksums and references verified",
            chk.display()
        )),
        "{}",
        text(&v)
    );

    // A job restores from a file:// checkpoint as from its path.
    let job_uri = format!("file://{}", job.display());
    let o = wordcount_bounded(&[
        "-D",
        &format!("execution.checkpointing.dir={uri}"),
        "-D",
        "execution.checkpointing.interval=20ms",
        "-s",
        &format!("{job_uri}/{id}"),
    ]);
    assert!(
        o.status.success(),
        "restore from {job_uri}/{id}: {}",
        text(&o)
    );
}

#[test]
fn unsupported_scheme_fails_at_start_with_a_clear_message() {
    let o = wordcount_bounded(&[
        "-D",
        "execution.checkpointing.dir=gs://bucket/ckpt",
        "-D",
        "execution.checkpointing.interval=20ms",
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("gs://bucket/ckpt") && t.contains("unsupported scheme 'gs'"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");

    let o = wordcount_bounded(&["-s", "hdfs://nn/ckpt/chk-3"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unsupported scheme 'hdfs'"),
        "{}",
        text(&o)
    );

    let o = wordcount_bounded(&[
        "-D",
        "execution.checkpointing.dir=file://otherhost/ckpt",
        "-D",
        "execution.checkpointing.interval=20ms",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("a file:// URI needs an absolute path"),
        "{}",
        text(&o)
    );

    let o = weir(&["checkpoints", "list", "gs://bucket/ckpt"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("unsupported scheme 'gs'"), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
}

/// A port of 127.0.0.1 nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn unreachable_s3_endpoint_fails_at_start_with_a_clear_message() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let s3 = [
        "-D".to_string(),
        format!("s3.endpoint={endpoint}"),
        "-D".into(),
        "s3.access-key=test".into(),
        "-D".into(),
        "s3.secret-key=test".into(),
        "-D".into(),
        "s3.path.style.access=true".into(),
    ];
    let mut args: Vec<&str> = s3.iter().map(String::as_str).collect();
    args.extend([
        "-D",
        "execution.checkpointing.dir=s3://nowhere/ckpt",
        "-D",
        "execution.checkpointing.interval=20ms",
    ]);
    let o = wordcount_bounded(&args);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("s3://nowhere/ckpt/"), "{t}");
    assert!(t.contains("cannot list checkpoint storage"), "{t}");
    assert!(!t.contains("panicked"), "{t}");

    let mut cli: Vec<&str> = vec!["checkpoints", "verify", "s3://nowhere/ckpt"];
    cli.extend(s3.iter().map(String::as_str));
    let o = weir(&cli);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("s3://nowhere/ckpt"), "{}", text(&o));
}
