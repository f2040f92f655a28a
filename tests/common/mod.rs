//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod chaos;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The real-text corpus checked into the repository.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus")
}

/// A built example binary (cargo builds examples before integration tests).
pub fn example(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join("examples").join(name);
    assert!(p.exists(), "example binary {} not built", p.display());
    p
}

/// A built example's command, run from the repository root, without the
/// test environment's `WEIR_*` variables.
pub fn example_command(name: &str) -> Command {
    let mut cmd = Command::new(example(name));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs an example with `args`, from the repository root, with no WEIR_*
/// variables but one: checkpoints go to the system's temporary directory.
pub fn run_example(name: &str, args: &[&str]) -> Output {
    let mut cmd = example_command(name);
    cmd.args(args);
    cmd.env(
        "WEIR_EXECUTION_CHECKPOINTING_DIR",
        std::env::temp_dir().join("weir-test-checkpoints"),
    );
    // Examples serve the web UI: on any free port, so runs never collide.
    cmd.env("WEIR_REST_PORT", "0");
    cmd.output().expect("run example")
}

/// Word counts of every file under `dir` by the straightforward rule.
pub fn reference_counts(dir: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for w in weir::operators::text::words_reference(&text) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// The committed `word<TAB>count` lines of a file sink's directory, per word in
/// output order: files ordered by (subtask, part number), as the file sink
/// names them `part-<run>-<subtask>-<part>` (hidden in-progress files are
/// not committed output).
pub fn read_output(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    let key = |p: &PathBuf| -> (u64, u64) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('-').collect();
        let n = parts.len();
        (parts[n - 2].parse().unwrap(), parts[n - 1].parse().unwrap())
    };
    files.sort_by_key(key);
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let (w, c) = line
                .rsplit_once('\t')
                .unwrap_or_else(|| panic!("bad line {line:?} in {}", f.display()));
            out.entry(w.to_string())
                .or_default()
                .push(c.parse().unwrap());
        }
    }
    out
}

/// Asserts that every word's lines are exactly 1..=N with N its reference count.
pub fn assert_running_counts(out: &BTreeMap<String, Vec<u64>>, reference: &BTreeMap<String, u64>) {
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "the output has other words than the reference"
    );
    for (w, n) in reference {
        let lines = &out[w];
        if let Some(i) =
            (0..lines.len().max(*n as usize)).find(|&i| lines.get(i) != Some(&(i as u64 + 1)))
        {
            let lo = i.saturating_sub(3);
            panic!(
                "word {w:?}: expected counts 1..={n} in order; {} lines, first wrong at line {} (near: {:?})",
                lines.len(),
                i + 1,
                &lines[lo.min(lines.len())..(i + 4).min(lines.len())]
            );
        }
    }
}

/// The value printed on a `label: value` line of the example's stdout.
pub fn stdout_value(out: &Output, label: &str) -> String {
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .find_map(|l| l.strip_prefix(label).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no '{label}' line in output:\n{s}"))
}

/// Writes a text corpus of about `words` generated words (plus the real
/// corpus) into `dir`, in several files; returns the reference counts.
pub fn write_big_corpus(dir: &Path, words: u64, seed: u64) -> BTreeMap<String, u64> {
    use weir::operators::text::{generate_line, lines_for_words, Vocabulary};
    std::fs::create_dir_all(dir).unwrap();
    let vocab = Vocabulary::zipf(5_000, seed);
    let lines = lines_for_words(words);
    let files = 4;
    let mut line = String::new();
    for f in 0..files {
        let mut text = String::new();
        for i in (f..lines).step_by(files as usize) {
            generate_line(&vocab, seed, i, &mut line);
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(dir.join(format!("generated-{f}.txt")), text).unwrap();
    }
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
    }
    reference_counts(dir)
}

/// The newest complete checkpoint (a valid `_metadata` and state files)
/// under a checkpoint root `<root>/<job-id>/chk-<n>`.
pub fn latest_checkpoint(root: &Path) -> Option<PathBuf> {
    let mut best: Option<(u64, PathBuf)> = None;
    for job in std::fs::read_dir(root).ok()?.flatten() {
        for chk in std::fs::read_dir(job.path())
            .ok()
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = chk.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if best.as_ref().is_some_and(|(b, _)| *b >= id) {
                continue;
            }
            if weir::runtime::checkpoint::storage::load_checkpoint(&chk.path()).is_ok() {
                best = Some((id, chk.path()));
            }
        }
    }
    best.map(|b| b.1)
}

/// How the committed output compares with the reference: words with missing
/// counts, and duplicated lines.
pub fn at_least_once_report(
    out: &BTreeMap<String, Vec<u64>>,
    reference: &BTreeMap<String, u64>,
) -> (Vec<String>, usize) {
    let mut missing = Vec::new();
    let mut duplicates = 0;
    for (w, n) in reference {
        let lines = out.get(w).cloned().unwrap_or_default();
        let set: std::collections::BTreeSet<u64> = lines.iter().copied().collect();
        if (1..=*n).any(|c| !set.contains(&c)) {
            missing.push(w.clone());
        }
        duplicates +=
            lines.len().saturating_sub(set.len()) + set.iter().filter(|c| **c > *n).count();
    }
    (missing, duplicates)
}

/// One HTTP request to a test server: (status, body). Never fails on an
/// error status; panics only when the server cannot be reached.
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .build()
        .into();
    let resp = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        ("POST", Some(b)) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(b),
        ("POST", None) => agent.post(url).send_empty(),
        ("PATCH", Some(b)) => agent.patch(url).send(b),
        ("PATCH", None) => agent.patch(url).send_empty(),
        ("PUT", _) => agent.put(url).send_empty(),
        _ => panic!("unsupported method {method}"),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, text)
}

/// GET `url` and parse the JSON body; asserts status 200.
pub fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = http("GET", url, None);
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// An environment with the REST server on a free loopback port, checkpoints
/// into `ckpt_dir`, and `settings` (applied last, so they override).
pub fn rest_env(ckpt_dir: &Path, settings: &[(&str, &str)]) -> weir::prelude::Env {
    let rest = [("rest.enabled", "true"), ("rest.port", "0")];
    let settings: Vec<(&str, &str)> = rest.iter().chain(settings).copied().collect();
    weir::prelude::Env::from_conf(conf_with(ckpt_dir, &settings)).unwrap()
}

/// The defaults, checkpoints into `ckpt_dir`, then `settings` in order.
pub fn conf_with(ckpt_dir: &Path, settings: &[(&str, &str)]) -> weir::prelude::Conf {
    let mut conf = weir::prelude::Conf::defaults();
    conf.set("execution.checkpointing.dir", ckpt_dir.display())
        .unwrap();
    for (k, v) in settings {
        conf.set(k, v).unwrap();
    }
    conf
}

/// The telemetry tests' job: `numbers` (`i % 997` for i in 0..n, at `rate`
/// records/s over its subtasks) -> `key_by` -> `count` -> (with a non-zero
/// `per_record`, a `slow` map spinning that long per record) -> the
/// exactly-once file sink `files` writing `key<TAB>count` into `out`. Every
/// record reaches the sink once, as its key's running count.
pub fn numbers_into_files(
    env: &weir::prelude::Env,
    n: u64,
    rate: f64,
    out: &Path,
    per_record: std::time::Duration,
) {
    use weir::prelude::*;
    let sink = FileSink::new(out, |(k, c): &(u64, u64), line: &mut String| {
        line.push_str(&format!("{k}\t{c}"))
    })
    .unwrap();
    let counted = env
        .add_source(GeneratorSource::new(3, Some(n), |i, _| i % 997).with_rate(rate))
        .name("numbers")
        .key_by(|x: &u64| *x)
        .count()
        .name("count");
    let counted = if per_record.is_zero() {
        counted
    } else {
        counted
            .map(move |kc: (u64, u64)| {
                let t = std::time::Instant::now();
                while t.elapsed() < per_record {
                    std::hint::spin_loop();
                }
                kc
            })
            .name("slow")
    };
    counted.add_sink(sink).name("files");
}

/// What [`numbers_into_files`] counts for `n` records: key -> count.
pub fn numbers_reference(n: u64) -> BTreeMap<String, u64> {
    let mut r = BTreeMap::new();
    for i in 0..n {
        *r.entry((i % 997).to_string()).or_insert(0) += 1;
    }
    r
}

/// The usual job of the control tests: `numbers` (a rate-limited generator
/// of `i % keys`) -> `key_by` -> `count` -> a discarding `sink`.
pub fn numbers_count_job(env: &weir::prelude::Env, seed: u64, keys: u64, rate: f64) {
    use weir::prelude::{DiscardSink, GeneratorSource};
    env.add_source(GeneratorSource::new(seed, None, move |i, _| i % keys).with_rate(rate))
        .name("numbers")
        .key_by(|x: &u64| *x)
        .count()
        .name("count")
        .add_sink(DiscardSink)
        .name("sink");
}

/// A job whose `slow` map sleeps `micros` per record behind a `fast`
/// unbounded generator, so the generator is back-pressured.
pub fn slow_operator_job(env: &weir::prelude::Env, micros: u64) {
    use weir::prelude::{DiscardSink, GeneratorSource};
    env.add_source(GeneratorSource::new(1, None, |i, _| i))
        .name("fast")
        .rebalance()
        .map(move |x: u64| {
            std::thread::sleep(std::time::Duration::from_micros(micros));
            x
        })
        .name("slow")
        .add_sink(DiscardSink)
        .name("sink");
}

/// Reference word counts of the built-in generated text: `words` words over a
/// Zipf vocabulary of `vocabulary` words with `seed` (the example's input).
pub fn generated_reference(words: u64, vocabulary: usize, seed: u64) -> BTreeMap<String, u64> {
    use weir::operators::text::{generate_line, lines_for_words, words_reference, Vocabulary};
    let vocab = Vocabulary::zipf(vocabulary, seed);
    let mut counts = BTreeMap::new();
    let mut line = String::new();
    for i in 0..lines_for_words(words) {
        generate_line(&vocab, seed, i, &mut line);
        for w in words_reference(&line) {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    counts
}

/// Words of the built-in text in the crash tests' wordcount runs (fewer in
/// debug builds).
pub fn crash_test_words() -> &'static str {
    if cfg!(debug_assertions) {
        "300000"
    } else {
        "3000000"
    }
}

/// The wordcount example as the crash tests run it: [`crash_test_words`]
/// words over `vocabulary`, parallelism 2, quiet, checkpoints every 20 ms
/// into `ckpt`, output into `out`, then `extra`; `failpoints` as
/// `WEIR_FAILPOINTS` (never inherited), `restore` as `-s`.
pub fn wordcount_with_failpoints(
    out: &Path,
    ckpt: &Path,
    vocabulary: &str,
    extra: &[&str],
    failpoints: Option<&str>,
    restore: Option<&Path>,
) -> Output {
    let mut cmd = wordcount_command(out, &ckpt.display().to_string(), "20ms");
    cmd.args(["--words", crash_test_words(), "--vocabulary", vocabulary])
        .args(extra)
        .env_remove("WEIR_FAILPOINTS");
    if let Some(f) = failpoints {
        cmd.env("WEIR_FAILPOINTS", f);
    }
    if let Some(r) = restore {
        cmd.args(["-s", r.to_str().unwrap()]);
    }
    cmd.output().unwrap()
}

/// The wordcount example as the exactly-once tests run it, before their own
/// input and options: parallelism 2, quiet, every update written into `out`,
/// checkpoints every `interval` into `ckpt` (a path or a URI), run from the
/// crate's root.
pub fn wordcount_command(out: &Path, ckpt: &str, interval: &str) -> Command {
    let mut cmd = Command::new(example("wordcount"));
    cmd.args(["--output", out.to_str().unwrap(), "-p", "2", "-q"])
        .args(["-D", &format!("execution.checkpointing.dir={ckpt}")])
        .args([
            "-D",
            &format!("execution.checkpointing.interval={interval}"),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

/// The one job directory under the checkpoint directory `ckpt`.
pub fn single_job_dir(ckpt: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(ckpt)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// Emits 0, 1, 2, ... (64 per poll, then 300 µs of pause) until `stop` is set.
#[derive(Clone)]
pub struct UntilStopped {
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub next: u64,
}

impl weir::prelude::SourceFunction<u64> for UntilStopped {
    fn poll_next(
        &mut self,
        out: &mut Vec<u64>,
        max: usize,
    ) -> weir::prelude::Result<weir::prelude::SourceStatus> {
        if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(weir::prelude::SourceStatus::Finished);
        }
        for _ in 0..max.min(64) {
            out.push(self.next);
            self.next += 1;
        }
        Ok(weir::prelude::SourceStatus::Idle(
            std::time::Duration::from_micros(300),
        ))
    }
}

/// Runs a keyed count over a growing key space ([`UntilStopped`] at
/// parallelism 1 -> `key_by` -> `count` -> discard) with `conf` until `n`
/// checkpoints completed (at most 300 s), then stops the source and waits
/// for the end; returns the job id and the ids of the completed checkpoints.
pub fn keyed_count_until_checkpoints(
    conf: weir::prelude::Conf,
    name: &str,
    n: usize,
) -> (String, Vec<u64>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;
    use weir::prelude::{DiscardSink, Env};
    use weir::runtime::checkpoint::CheckpointStatus;
    let env = Env::from_conf(conf).unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    env.add_source(UntilStopped {
        stop: stop.clone(),
        next: 0,
    })
    .set_parallelism(1)
    .name("numbers")
    // The key space grows: new keys all the time, old keys updated.
    .key_by(|i: &u64| i.wrapping_mul(2_654_435_761) % (1000 + i / 16))
    .count()
    .name("count")
    .add_sink(DiscardSink)
    .name("sink");
    let job = env.execute_async(name).unwrap();
    let job_id = job.job_id().to_string();
    wait_for_completed_checkpoints(&job, n, Duration::from_secs(300));
    stop.store(true, Ordering::SeqCst);
    let r = job.wait().unwrap();
    let ids = r
        .checkpoints
        .iter()
        .filter(|s| s.status == CheckpointStatus::Completed)
        .map(|s| s.id)
        .collect();
    (job_id, ids)
}

/// The `top 10 words:` lines of a wordcount's output: (word, count).
pub fn top_words(stdout: &str) -> Vec<(String, u64)> {
    stdout
        .lines()
        .skip_while(|l| *l != "top 10 words:")
        .skip(1)
        .map_while(|l| {
            let mut it = l.split_whitespace();
            let c = it.next()?.parse().ok()?;
            Some((it.next()?.to_string(), c))
        })
        .collect()
}

/// Waits until `job` has completed `n` checkpoints; fails after `limit`.
pub fn wait_for_completed_checkpoints(
    job: &weir::prelude::JobHandle,
    n: usize,
    limit: std::time::Duration,
) {
    use weir::runtime::checkpoint::CheckpointStatus;
    let t = std::time::Instant::now();
    loop {
        let done = job
            .checkpoint_stats()
            .iter()
            .filter(|s| s.status == CheckpointStatus::Completed)
            .count();
        if done >= n {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "only {done} checkpoints completed in {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Asserts that the job directory `job` holds what a job that ended leaves:
/// no `.running` lock, no temporary `.inprogress` file, only complete
/// `chk-<n>` directories; returns how many there are.
pub fn only_complete_checkpoints(job: &Path) -> usize {
    assert!(
        !job.join(".running").exists(),
        "the lock is left in {}",
        job.display()
    );
    let mut complete = 0;
    let mut stack = vec![job.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".inprogress"),
                "temporary file {}",
                p.display()
            );
            if p.is_dir() {
                if name.starts_with("chk-") {
                    assert!(p.join("_metadata").is_file(), "incomplete {}", p.display());
                    complete += 1;
                }
                stack.push(p);
            }
        }
    }
    complete
}
