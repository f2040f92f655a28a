//! The job of `../shared/peers/flink` (its `WordCountBench`), mirrored for the
//! benches that compare with it: word(i) = "w" + (splitmix64(i) mod
//! vocabulary) for i in 0..words, key_by(word), a running count, a
//! pass-through map, a discarding sink.

use weir::operators::rng::splitmix64;
use weir::operators::text::Word;
use weir::prelude::*;

/// Adds the peer job over `words` words of a `vocabulary`-word vocabulary to `env`.
pub fn add_peer_job(env: &Env, words: u64, vocabulary: u64) {
    env.add_source(GeneratorSource::new(0, Some(words), move |i, _| {
        word_of(splitmix64(i) % vocabulary)
    }))
    .name("words")
    .key_by(|w: &Word| w.clone())
    .count()
    .name("Count")
    .map(|x| x)
    .add_sink(DiscardSink);
}

/// `"w" + n` without a formatter.
pub fn word_of(mut n: u64) -> Word {
    let mut buf = [0u8; 21];
    let mut k = buf.len();
    loop {
        k -= 1;
        buf[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    k -= 1;
    buf[k] = b'w';
    Word::new(std::str::from_utf8(&buf[k..]).unwrap_or("w"))
}
