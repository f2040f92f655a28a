//! The wordcount example end to end: its counts equal a straightforward
//! reference count, for every parallelism, and its `--output` lines are
//! Flink's running counts (a word seen N times has the lines 1..N in order).

mod common;

use std::collections::BTreeMap;

use common::*;
use weir::operators::text::{generate_line, lines_for_words, words_reference, Vocabulary};

#[test]
fn corpus_counts_equal_reference_at_every_parallelism() {
    let reference = reference_counts(&corpus_dir());
    let total: u64 = reference.values().sum();
    assert!(total > 15_000, "the corpus is real text of some size");
    for p in ["1", "2", "4"] {
        let out_dir = tempfile::tempdir().unwrap();
        let corpus = corpus_dir();
        let out = run_example(
            "wordcount",
            &[
                "--input",
                corpus.to_str().unwrap(),
                "--output",
                out_dir.path().to_str().unwrap(),
                "-p",
                p,
                "-q",
            ],
        );
        assert!(
            out.status.success(),
            "p{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout_value(&out, "total words:"),
            total.to_string(),
            "p{p}"
        );
        assert_running_counts(&read_output(out_dir.path()), &reference);
        // Nothing is left in progress after a clean end.
        let hidden: Vec<_> = std::fs::read_dir(out_dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .collect();
        assert!(
            hidden.is_empty(),
            "p{p}: leftover in-progress files {hidden:?}"
        );
    }
}

#[test]
fn top_words_are_printed_with_their_counts() {
    let reference = reference_counts(&corpus_dir());
    let corpus = corpus_dir();
    let out = run_example(
        "wordcount",
        &["--input", corpus.to_str().unwrap(), "-p", "2", "-q"],
    );
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut best: Vec<(&String, &u64)> = reference.iter().collect();
    best.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let printed: Vec<(String, u64)> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("top 10 words"))
        .skip(1)
        .take(10)
        .map(|l| {
            let mut it = l.split_whitespace();
            let c = it.next().unwrap().parse().unwrap();
            (it.next().unwrap().to_string(), c)
        })
        .collect();
    let expected: Vec<(String, u64)> = best
        .iter()
        .take(10)
        .map(|(w, c)| ((*w).clone(), **c))
        .collect();
    assert_eq!(printed, expected);
}

#[test]
fn built_in_input_is_the_same_for_every_parallelism() {
    let words = 300_000u64;
    let vocab = Vocabulary::zipf(2_000, 9);
    let mut reference: BTreeMap<String, u64> = BTreeMap::new();
    let mut line = String::new();
    for i in 0..lines_for_words(words) {
        generate_line(&vocab, 9, i, &mut line);
        for w in words_reference(&line) {
            *reference.entry(w).or_insert(0) += 1;
        }
    }
    for p in ["1", "2"] {
        let out_dir = tempfile::tempdir().unwrap();
        let out = run_example(
            "wordcount",
            &[
                "--words",
                &words.to_string(),
                "--vocabulary",
                "2000",
                "--seed",
                "9",
                "-p",
                p,
                "-q",
                "--output",
                out_dir.path().to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_running_counts(&read_output(out_dir.path()), &reference);
    }
}

#[test]
fn default_run_prints_progress_top_words_and_throughput() {
    // The README's first command, scaled down: progress on stderr, summary on stdout.
    let out = run_example(
        "wordcount",
        &["--words", "2000000", "-D", "client.progress-interval=100ms"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("counting words of the built-in text"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for label in ["top 10 words:", "total words:", "elapsed:", "throughput:"] {
        assert!(stdout.contains(label), "missing {label}: {stdout}");
    }
    let elapsed: f64 = stdout_value(&out, "elapsed:")
        .trim_end_matches(" s")
        .parse()
        .unwrap();
    if elapsed > 0.3 {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with('[') && l.contains(" words ") && l.ends_with("/s")),
            "no progress line in {stderr}"
        );
    }
    let total: u64 = stdout_value(&out, "total words:").parse().unwrap();
    assert!((1_900_000..2_100_000).contains(&total), "{total}");
}
