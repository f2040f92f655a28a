//! The `visit_windows` example (event-time tumbling windows with late data)
//! against a reference computed from the same generated clicks:
//! - a run without very late clicks writes exactly the reference; with them,
//!   the visits plus the late clicks are all the clicks, and the visits are
//!   exactly the reference of the clicks that were not late;
//! - `--input` of the same clicks as CSV writes the same; a malformed line
//!   exits 1 naming the line;
//! - SIGKILLed in the middle (open windows, pending timers) and restored
//!   with `-s`, the committed output is exact: aligned, unaligned, and
//!   RocksDB incremental checkpoints;
//! - the job function in-process at parallelism 3.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::{conf_with, example, latest_checkpoint, run_example, stdout_value};
use weir::visit_windows::{reference, Click, ClickSpec};

/// (window start, window end, page) -> visits.
type Table = BTreeMap<(i64, i64, String), u64>;

fn spec(late_fraction: f64) -> ClickSpec {
    ClickSpec {
        pages: 20,
        late_fraction,
        ..ClickSpec::default()
    }
}

/// The first `n` generated clicks, each with whether it is very late.
fn clicks(spec: &ClickSpec, n: u64) -> Vec<(Click, bool)> {
    (0..n).map(|i| spec.click_at(i)).collect()
}

/// The committed (not hidden) part files of a file sink's directory.
fn part_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

/// The committed window results under `out/visits`; a (window, page) twice fails.
fn read_visits(out: &Path) -> Table {
    let mut t = Table::new();
    for f in part_files(&out.join("visits")) {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let v: Vec<&str> = line.split('\t').collect();
            assert_eq!(v.len(), 4, "bad line {line:?} in {}", f.display());
            let key = (
                v[0].parse().unwrap(),
                v[1].parse().unwrap(),
                v[2].to_string(),
            );
            assert_eq!(key.1 - key.0, 10_000, "{line:?}");
            let old = t.insert(key, v[3].parse().unwrap());
            assert!(old.is_none(), "window emitted twice: {line:?}");
        }
    }
    t
}

/// The committed late clicks under `out/late`.
fn read_late(out: &Path) -> Vec<Click> {
    let mut late = Vec::new();
    for f in part_files(&out.join("late")) {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            late.push(weir::visit_windows::parse_click(line).unwrap().unwrap());
        }
    }
    late
}

/// Asserts the output of a run over `all` clicks is exact: every late click
/// is one of the very late ones, each click is in the visits or late (once),
/// and the visits are exactly the reference of the clicks that were not late.
/// Returns the number of late clicks.
fn assert_exact(out: &Path, all: &[(Click, bool)]) -> usize {
    let got = read_visits(out);
    let late = read_late(out);
    let mut very_late: BTreeMap<&Click, usize> = BTreeMap::new();
    for (c, v) in all {
        if *v {
            *very_late.entry(c).or_default() += 1;
        }
    }
    let mut late_left: BTreeMap<&Click, usize> = BTreeMap::new();
    for c in &late {
        let n = very_late.entry(c).or_default();
        assert!(*n > 0, "late click {c:?} is not one of the very late ones");
        *n -= 1;
        *late_left.entry(c).or_default() += 1;
    }
    let on_time: Vec<&Click> = all
        .iter()
        .map(|(c, _)| c)
        .filter(|c| match late_left.get_mut(c) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect();
    let visits: u64 = got.values().sum();
    assert_eq!(
        visits + late.len() as u64,
        all.len() as u64,
        "visits + late"
    );
    let want = reference(on_time.iter().copied());
    if got != want {
        let diff: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(5)
            .map(|(k, v)| (k, v, got.get(k)))
            .collect();
        panic!(
            "{} windows, {} in the reference; first differences (key, want, got): {diff:?}",
            got.len(),
            want.len()
        );
    }
    late.len()
}

fn ok(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "visit_windows failed ({}):\n{stdout}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

fn value(o: &Output, label: &str) -> u64 {
    stdout_value(o, label)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

const CLICKS: u64 = 200_000;

#[test]
fn a_run_without_very_late_clicks_writes_exactly_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = CLICKS.to_string();
    let o = run_example(
        "visit_windows",
        &[
            "--clicks",
            &n,
            "--pages",
            "20",
            "--late-fraction",
            "0",
            "-p",
            "2",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let stdout = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("web UI: http://"), "{stderr}");
    let all = clicks(&spec(0.0), CLICKS);
    let want = reference(all.iter().map(|c| &c.0));
    assert_eq!(read_visits(&out), want);
    assert!(read_late(&out).is_empty());
    assert_eq!(
        value(&o, "windows emitted: "),
        want.len() as u64,
        "{stdout}"
    );
    assert_eq!(value(&o, "total visits: "), CLICKS, "{stdout}");
    assert_eq!(value(&o, "late clicks: "), 0, "{stdout}");
    assert!(stdout.contains("throughput: "), "{stdout}");
}

#[test]
fn very_late_clicks_go_to_the_side_output_and_the_rest_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let n = CLICKS.to_string();
    // Paced (about a second), watermarks every 20 ms: the watermark keeps
    // up, and the very late clicks (an hour late) find their windows fired.
    let o = run_example(
        "visit_windows",
        &[
            "--clicks",
            &n,
            "--pages",
            "20",
            "--rate",
            "200000",
            "-D",
            "pipeline.auto-watermark-interval=20ms",
            "--no-ui",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let stdout = ok(&o);
    let all = clicks(&spec(0.005), CLICKS);
    let very_late = all.iter().filter(|c| c.1).count();
    assert!(very_late > 500, "{very_late} very late clicks");
    let late = assert_exact(&out, &all);
    // Only those before the first watermark (about 20 ms) may be counted.
    assert!(late * 10 >= very_late * 8, "{late} of {very_late} late");
    // Each window's visits are at most the reference's of all clicks, at
    // least that of the clicks that are not very late.
    let got = read_visits(&out);
    let full = reference(all.iter().map(|c| &c.0));
    let on_time = reference(all.iter().filter(|c| !c.1).map(|c| &c.0));
    for (k, v) in &got {
        assert!(*v <= full[k], "{k:?}: {v} > {}", full[k]);
        assert!(*v >= on_time.get(k).copied().unwrap_or(0), "{k:?}");
    }
    assert_eq!(value(&o, "late clicks: "), late as u64, "{stdout}");
    assert_eq!(
        value(&o, "total visits: ") + late as u64,
        CLICKS,
        "{stdout}"
    );
}

/// Writes the clicks as CSV (a header, a blank line and the clicks) into `path`.
fn write_csv(path: &Path, clicks: &[(Click, bool)]) {
    let mut text = String::from("user,page,event_time_ms\n\n");
    let mut line = String::new();
    for (c, _) in clicks {
        line.clear();
        weir::visit_windows::format_click(c, &mut line);
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn csv_input_gives_the_same_output_and_a_malformed_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let all = clicks(&spec(0.0), CLICKS);
    let csv = dir.path().join("clicks.csv");
    write_csv(&csv, &all);
    let out = dir.path().join("out");
    let o = run_example(
        "visit_windows",
        &[
            "--input",
            csv.to_str().unwrap(),
            "-p",
            "2",
            "--no-ui",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    let stdout = ok(&o);
    assert_eq!(read_visits(&out), reference(all.iter().map(|c| &c.0)));
    assert_eq!(value(&o, "total visits: "), CLICKS, "{stdout}");
    assert_eq!(value(&o, "late clicks: "), 0, "{stdout}");

    for (bad, why) in [
        ("17,/page/3", "3 fields"),
        ("17,/page/3,noon", "event_time_ms"),
        ("-1,/page/3,1704067200000", "user"),
    ] {
        let csv = dir.path().join("bad.csv");
        std::fs::write(
            &csv,
            format!("1,/page/1,1704067200000\n2,/page/2,1704067200001\n{bad}\n3,/a,1\n"),
        )
        .unwrap();
        let o = run_example(
            "visit_windows",
            &["--input", csv.to_str().unwrap(), "--no-ui", "-q"],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains("line 3") && stderr.contains(bad) && stderr.contains(why),
            "{bad}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Bad options are errors too, not panics.
    let o = run_example("visit_windows", &["--pages", "0", "--no-ui"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--pages"));
    let o = run_example("visit_windows", &["--input", "/nonexistent/clicks.csv"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/clicks.csv"));
}

/// A visit_windows process whose stderr lines arrive on a channel; killed when dropped.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[String]) -> Running {
        let mut cmd = Command::new(example("visit_windows"));
        cmd.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("WEIR_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("start visit_windows");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most 60 s) until `done` holds, looking at each stderr line.
    fn wait_until(&mut self, what: &str, mut done: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(20)) {
                Ok(l) => {
                    let hit = done(&l);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if done("") {
                        return;
                    }
                }
                Err(_) => panic!(
                    "visit_windows exited before {what}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
        panic!("no {what} within 60 s:\n{}", self.seen.join("\n"));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs paced (30,000 clicks/s) with checkpoints every 100 ms, SIGKILLs the
/// process once it committed windows and completed checkpoints (open
/// windows and pending timers in its state), restores from the latest
/// checkpoint and runs to the end: the committed output is exact.
fn kill_and_restore(late_fraction: f64, extra: &[&str]) {
    const N: u64 = 120_000;
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let late = late_fraction.to_string();
    let args = |ckpt: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "--clicks",
            &N.to_string(),
            "--pages",
            "20",
            "--late-fraction",
            &late,
            "-p",
            "2",
            "--no-ui",
            "--output",
            out.to_str().unwrap(),
            "-D",
            "execution.checkpointing.interval=100ms",
            "-D",
            "pipeline.auto-watermark-interval=50ms",
            "-D",
            &format!("execution.checkpointing.dir={}", ckpt.display()),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut first = args(&ckpt);
    first.extend(["--rate".to_string(), "30000".to_string()]);
    let mut run = Running::start(&first);
    let mut completed = 0;
    run.wait_until("committed windows and 8 checkpoints", |l| {
        if l.starts_with("checkpoint ") && l.contains(" completed ") {
            completed += 1;
        }
        completed >= 8 && !part_files(&out.join("visits")).is_empty()
    });
    // Between two checkpoints: output written after the last one is not committed.
    std::thread::sleep(Duration::from_millis(50));
    // SIGKILL: no cleanup at all.
    run.child.kill().unwrap();
    let status = run.child.wait().unwrap();
    assert!(!status.success());
    let before = read_visits(&out);
    assert!(!before.is_empty());
    let windows_before: usize = before.len();
    let restore = latest_checkpoint(&ckpt).expect("a complete checkpoint");
    drop(run);

    let mut second = args(&dir.path().join("ckpt2"));
    second.extend(["-s".to_string(), restore.display().to_string()]);
    let o = Command::new(example("visit_windows"))
        .args(&second)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("restored from checkpoint"), "{stderr}");
    let all = clicks(&spec(late_fraction), N);
    let late = assert_exact(&out, &all);
    let got = read_visits(&out);
    assert!(
        got.len() > windows_before,
        "the restored run emitted no window"
    );
    eprintln!(
        "{extra:?}: killed with {windows_before} windows committed, restored from {}; \
         {} windows and {late} late clicks in the end",
        restore.display(),
        got.len()
    );
    if late_fraction == 0.0 {
        // What a run without failure writes (the first test).
        assert_eq!(got, reference(all.iter().map(|c| &c.0)));
    }
    // The totals are restored with the checkpoint: they are the whole input's.
    assert_eq!(value(&o, "late clicks: "), late as u64, "{stdout}");
    assert_eq!(
        value(&o, "total visits: ") + late as u64,
        N,
        "{stdout}\n{stderr}"
    );
    assert_eq!(value(&o, "windows emitted: "), got.len() as u64, "{stdout}");
}

#[test]
fn killed_and_restored_aligned_checkpoints_exact_output() {
    kill_and_restore(0.0, &[]);
}

#[test]
fn killed_and_restored_unaligned_checkpoints_exact_output() {
    kill_and_restore(
        0.005,
        &["-D", "execution.checkpointing.unaligned.enabled=true"],
    );
}

#[cfg(feature = "rocksdb")]
#[test]
fn killed_and_restored_rocksdb_incremental_checkpoints_exact_output() {
    kill_and_restore(
        0.005,
        &[
            "-D",
            "state.backend.type=rocksdb",
            "-D",
            "execution.checkpointing.incremental=true",
        ],
    );
}

#[test]
fn the_job_in_process_at_parallelism_3_equals_the_reference() {
    use weir::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let conf = conf_with(
        &dir.path().join("ckpt"),
        &[
            ("parallelism.default", "3"),
            ("execution.checkpointing.interval", "50ms"),
        ],
    );
    let env = Env::from_conf(conf).unwrap();
    let spec = spec(0.0);
    let clicks_stream =
        weir::visit_windows::generated_clicks(&env, spec, Some(CLICKS), Some(400_000.0)).unwrap();
    let progress = weir::visit_windows::visit_windows(&clicks_stream, Some(&out)).unwrap();
    env.execute("visit_windows").unwrap();
    let want = reference(clicks(&spec, CLICKS).iter().map(|c| &c.0));
    assert_eq!(read_visits(&out), want);
    assert_eq!(progress.windows(), want.len() as u64);
    assert_eq!(progress.visits(), CLICKS);
    assert_eq!(progress.late(), 0);
    assert_eq!(progress.watermark(), Some(i64::MAX));
}
