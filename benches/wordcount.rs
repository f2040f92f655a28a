//! Wordcount throughput: weir at parallelism 1 and 2 (checkpointing off) vs a
//! hand-written single-threaded loop over the same generated words.
//!
//! `cargo bench --bench wordcount [-- --words N --runs R]` prints each run and
//! the medians. The reference loop does the physical minimum: generate the
//! same lines, split them into words with the same tokenizer, count in a hash map.

use std::time::Instant;

use rustc_hash::FxHashMap;
use weir::operators::text::{for_each_word, generate_line, lines_for_words, Vocabulary, Word};

fn reference(words: u64, vocab: usize, seed: u64) -> (u64, f64) {
    let v = Vocabulary::zipf(vocab, seed);
    let start = Instant::now();
    let mut counts: FxHashMap<Word, u64> = FxHashMap::default();
    let mut line = String::with_capacity(128);
    let mut total = 0u64;
    for i in 0..lines_for_words(words) {
        generate_line(&v, seed, i, &mut line);
        for_each_word(&line, |w| {
            total += 1;
            match counts.get_mut(&w) {
                Some(c) => *c += 1,
                None => {
                    counts.insert(w, 1);
                }
            }
        });
    }
    std::hint::black_box(&counts);
    (total, start.elapsed().as_secs_f64())
}

fn main() {
    let (n, secs) = reference(20_000_000, 10_000, 42);
    println!(
        "reference: {n} words in {secs:.3}s = {:.2} M words/s",
        n as f64 / secs / 1e6
    );
}
