//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

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

/// Runs an example with `args`, from the repository root, with no WEIR_* variables.
pub fn run_example(name: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(example(name));
    cmd.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR_") {
            cmd.env_remove(k);
        }
    }
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
/// file order (hidden in-progress files are not committed output).
pub fn read_output(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
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
        let expected: Vec<u64> = (1..=*n).collect();
        assert_eq!(lines, &expected, "lines of word {w:?}");
    }
}

/// The value printed on a `label: value` line of the example's stdout.
pub fn stdout_value(out: &Output, label: &str) -> String {
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .find_map(|l| l.strip_prefix(label).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no '{label}' line in output:\n{s}"))
}
