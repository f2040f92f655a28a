//! Text: the word tokenizer and the built-in generated corpus.
//!
//! **A word** is a maximal run of characters for which [`char::is_alphanumeric`]
//! holds, lowercased with [`str::to_lowercase`]. [`for_each_word`] finds words
//! without allocating for short ASCII words (a [`Word`] holds up to 15 bytes
//! inline), eight bytes at a time.
//!
//! **The built-in input** ([`generated_lines`]) is deterministic text: lines of
//! 5 to 15 words drawn from a vocabulary of pseudo-words whose frequencies follow
//! Zipf's law (rank r has weight 1/r), the first word capitalised, commas here
//! and there and a full stop at the end; about 1% of the vocabulary has
//! non-ASCII letters. Line `i` depends only on the seed and `i`, so the text
//! is the same for every parallelism.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::rng::{splitmix64, SplitMix64};
use crate::source::GeneratorSource;

const INLINE: usize = 15;

/// A word: an immutable string of 16 bytes, stored inline when it has at
/// most 15 bytes (nearly every word of ordinary text), on the heap otherwise.
///
/// Inline words are compared as two machine words and hashed as three, with
/// no length-dependent loop or `memcmp` call; that is the point of the type,
/// since wordcount compares and hashes every word several times (key group,
/// state lookup) and moves every word between subtasks: at 16 bytes a batch
/// of words is half the size of a batch of `String`s (24 bytes plus the text).
/// Equal strings always have the same representation, so `Eq` and `Hash`
/// agree with `str`'s notion of equality. Serialized as a string.
///
/// The hash is the same as that of the 24-byte inline form this type had
/// before (the bytes zero-padded to 23, then the length): every word up to 23
/// bytes hashes as three words, so words keep their key groups and older
/// checkpoints and savepoints restore into the same subtasks.
#[derive(Clone)]
pub struct Word(Repr);

#[derive(Clone)]
enum Repr {
    Inline(Inline),
    /// A thin pointer (8 bytes), so it fits beside the inline form's niche
    /// (a `String` or `Box<str>` is 24 or 16 bytes and would make `Word` larger).
    #[allow(clippy::box_collection)]
    Heap(Box<String>),
}

/// An inline word as two machine words, in memory the bytes `0..len`, zero
/// padding, and `len + 1` in byte 15. That last byte is never zero, so `hi`
/// is a `NonZeroU64` and its zero value tags the `Heap` variant: `Word`
/// stays 16 bytes. Copied, compared and hashed as two registers: no byte
/// loops, no memory round trip (a word copied in pieces and then read as
/// whole machine words stalls the CPU's store forwarding).
#[derive(Clone, Copy, bytemuck::NoUninit)]
#[repr(C)]
struct Inline {
    lo: u64,
    hi: NonZeroU64,
}

const _: () = assert!(std::mem::size_of::<Word>() == 16);

impl Inline {
    /// From the little-endian values of bytes 0..8 and 8..15 (top byte zero).
    #[inline]
    fn from_le(lo: u64, hi: u64, len: usize) -> Self {
        let hi = hi | ((len as u64 + 1) << 56);
        Inline {
            lo: u64::from_le(lo),
            hi: NonZeroU64::new(u64::from_le(hi)).unwrap_or(NonZeroU64::MIN),
        }
    }

    /// The little-endian values of bytes 0..8 and 8..15 (top byte zero) and the length.
    #[inline]
    fn to_le(self) -> (u64, u64, usize) {
        let hi = u64::from_le(self.hi.get());
        (
            u64::from_le(self.lo),
            hi & 0x00ff_ffff_ffff_ffff,
            ((hi >> 56) as usize).saturating_sub(1),
        )
    }
}

impl Word {
    /// A word holding `s` as it is.
    pub fn new(s: &str) -> Self {
        if s.len() <= INLINE {
            let b = s.as_bytes();
            Word(Repr::Inline(Inline::from_le(
                chunk(b, 0),
                chunk(b, 8),
                s.len(),
            )))
        } else {
            Word(Repr::Heap(Box::new(s.to_string())))
        }
    }

    /// The word as a string slice.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(i) => {
                let len = i.to_le().2;
                std::str::from_utf8(&bytemuck::bytes_of(i)[..len]).unwrap_or("")
            }
            Repr::Heap(s) => s,
        }
    }
}

impl PartialEq for Word {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Inline(a), Repr::Inline(b)) => a.lo == b.lo && a.hi == b.hi,
            (Repr::Heap(a), Repr::Heap(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Word {}

/// Hashes a word of up to 23 bytes as three machine words: the bytes
/// zero-padded to 23, then the length in the last byte.
#[inline]
fn hash_short<H: Hasher>(bytes: &[u8], state: &mut H) {
    let mut b = [0u8; 24];
    b[..bytes.len()].copy_from_slice(bytes);
    b[23] = bytes.len() as u8;
    let w = |i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(x)
    };
    state.write_u64(w(0));
    state.write_u64(w(8));
    state.write_u64(w(16));
}

impl Hash for Word {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        match &self.0 {
            Repr::Inline(i) => {
                let (lo, hi, len) = i.to_le();
                state.write_u64(lo);
                state.write_u64(hi);
                state.write_u64((len as u64) << 56);
            }
            Repr::Heap(s) if s.len() <= 23 => hash_short(s.as_bytes(), state),
            Repr::Heap(s) => {
                state.write(s.as_bytes());
                state.write_u8(0xff);
            }
        }
    }
}

impl PartialOrd for Word {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Word {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::ops::Deref for Word {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}
impl AsRef<str> for Word {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}
impl std::borrow::Borrow<str> for Word {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl From<&str> for Word {
    fn from(s: &str) -> Self {
        Word::new(s)
    }
}
impl From<String> for Word {
    fn from(s: String) -> Self {
        Word::new(&s)
    }
}
impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl Serialize for Word {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Word::new(&s))
    }
}

/// Byte classes for the tokenizer: 0 separator, 1 ASCII alphanumeric, 2 non-ASCII.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = if b >= 0x80 {
            2
        } else if b.is_ascii_alphanumeric() {
            1
        } else {
            0
        };
        i += 1;
    }
    t
};

/// Calls `f` with every word of `text`, lowercased.
///
/// ASCII words are classified and lowercased eight bytes at a time, with
/// word-wide arithmetic instead of a loop per byte (`ascii_run`), and words
/// of up to 15 bytes (nearly all of them) are built in registers; words with
/// other characters take the general path (`char::is_alphanumeric`,
/// `str::to_lowercase`), and words longer than 16 bytes a byte loop.
#[inline]
pub fn for_each_word(text: &str, mut f: impl FnMut(Word)) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut i = 0;
    while i < n {
        match CLASS[bytes[i] as usize] {
            0 => {
                i += 1;
                continue;
            }
            1 => {
                let start = i;
                // Eight bytes at a time: how many continue the word, lowercased.
                let (lo, k) = ascii_run(chunk(bytes, i));
                let (hi, k2) = if k == 8 {
                    ascii_run(chunk(bytes, i + 8))
                } else {
                    (0, 0)
                };
                let len = k + k2;
                i += len;
                if i < n && CLASS[bytes[i] as usize] != 0 {
                    // A non-ASCII character (maybe a letter) or a word longer
                    // than 16 bytes: byte by byte from the start.
                    i = long_word(text, start, &mut f);
                } else if len <= INLINE {
                    f(Word(Repr::Inline(Inline::from_le(lo, hi, len))));
                } else {
                    f(Word::new(&text[start..i].to_ascii_lowercase()));
                }
            }
            _ => {
                let c = char_at(text, i);
                if c.is_alphanumeric() {
                    i = slow_word(text, i, &mut f);
                } else {
                    i += c.len_utf8();
                }
            }
        }
    }
}

/// The 8 bytes of `bytes` at `i` as a little-endian machine word, zero
/// (a separator) past the end.
#[inline]
fn chunk(bytes: &[u8], i: usize) -> u64 {
    match bytes.get(i..i + 8) {
        Some(b) => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        }
        None => {
            let mut a = [0u8; 8];
            let rest = bytes.get(i..).unwrap_or(&[]);
            a[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(a)
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Per byte of `y` (each below 0x80): the byte's high bit set when it is at least `c`.
#[inline]
fn at_least(y: u64, c: u8) -> u64 {
    y.wrapping_add(ONES * (0x80 - c as u64)) & HIGH
}

/// The leading ASCII letters and digits of the 8 bytes `x` (little-endian):
/// them lowercased (the other bytes zero) and how many there are (0 to 8).
/// Eight bytes are classified at once (SWAR): no loop and no branch per byte.
#[inline]
fn ascii_run(x: u64) -> (u64, usize) {
    let y = x & !HIGH;
    let digit = at_least(y, b'0') & !at_least(y, b'9' + 1);
    let upper = at_least(y, b'A') & !at_least(y, b'Z' + 1);
    let lower = at_least(y, b'a') & !at_least(y, b'z' + 1);
    // Letters and digits that are ASCII (a byte >= 0x80 stops the run).
    let alnum = (digit | upper | lower) & !(x & HIGH);
    let k = ((!alnum & HIGH).trailing_zeros() / 8) as usize;
    let keep = if k == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * k)) - 1
    };
    ((x | (upper >> 2)) & keep, k)
}

/// The word starting at `start` (its first byte ASCII), byte by byte: ASCII
/// letters and digits, then by chars if a non-ASCII character follows.
/// Returns where it ends.
fn long_word(text: &str, start: usize, f: &mut impl FnMut(Word)) -> usize {
    let bytes = text.as_bytes();
    let mut i = start;
    while i < bytes.len() && CLASS[bytes[i] as usize] == 1 {
        i += 1;
    }
    if i < bytes.len() && CLASS[bytes[i] as usize] == 2 {
        return slow_word(text, start, f);
    }
    f(Word::new(&text[start..i].to_ascii_lowercase()));
    i
}

#[inline]
fn char_at(text: &str, i: usize) -> char {
    text[i..].chars().next().unwrap_or('\u{0}')
}

/// The words of `text`, straightforwardly (the reference [`for_each_word`] is
/// tested against).
pub fn words_reference(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The word starting at `start`, by chars; returns where it ends.
fn slow_word(text: &str, start: usize, f: &mut impl FnMut(Word)) -> usize {
    let end = text[start..]
        .char_indices()
        .find(|(_, c)| !c.is_alphanumeric())
        .map_or(text.len(), |(j, _)| start + j);
    f(Word::new(&text[start..end].to_lowercase()));
    end
}
/// A vocabulary with Zipf frequencies and an O(1) sampler (Vose's alias method).
#[derive(Debug)]
pub struct Vocabulary {
    words: Vec<String>,
    /// Each word's bytes padded to 24, so appending one is a fixed-size copy.
    padded: Vec<Padded>,
    /// Alias method, `(keep, alias)` per index (one cache line for both):
    /// index i stays when the low 32 random bits are below `keep`, else it
    /// becomes `alias`.
    table: Vec<(u32, u32)>,
}

/// A vocabulary word's bytes zero-padded to 24, and its length; aligned so
/// that no word straddles two cache lines.
#[derive(Debug)]
#[repr(align(32))]
struct Padded {
    bytes: [u8; 24],
    len: u8,
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "an", "el", "is", "or", "ul", "ba", "di", "fe",
    "go", "hu", "ja", "ki", "ma", "no", "pe", "qui", "ra", "si", "to", "us", "ve", "wa", "xi",
    "yo", "ze", "ch", "th", "st", "er", "in", "on", "at",
];
const ACCENTED: &[&str] = &["é", "ö", "ü", "ñ", "ß", "å"];

impl Vocabulary {
    /// `size` distinct words for `seed`, rank 0 the most frequent.
    pub fn zipf(size: usize, seed: u64) -> Self {
        assert!(size > 0);
        let mut seen = std::collections::HashSet::with_capacity(size);
        let mut words = Vec::with_capacity(size);
        let mut rng = SplitMix64::new(splitmix64(seed ^ 0x766f_6361_6275_6c61));
        while words.len() < size {
            // Frequent words are short, like in real text.
            let rank = words.len();
            let max_syl = 1 + (rank as f64 + 1.0).log10().ceil() as u64;
            let n = 1 + rng.below(max_syl.min(6));
            let mut w = String::new();
            for _ in 0..n {
                w.push_str(SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize]);
            }
            if rng.below(100) == 0 {
                w.push_str(ACCENTED[rng.below(ACCENTED.len() as u64) as usize]);
            }
            if seen.insert(w.clone()) {
                words.push(w);
            }
        }
        let weights: Vec<f64> = (0..size).map(|r| 1.0 / (r as f64 + 1.0)).collect();
        let (prob, alias) = alias_table(&weights);
        let table = prob
            .iter()
            .zip(alias)
            .map(|(p, a)| ((p * 4_294_967_296.0).min(u32::MAX as f64) as u32, a))
            .collect();
        let padded = words
            .iter()
            .map(|w| {
                let mut bytes = [0u8; 24];
                bytes[..w.len()].copy_from_slice(w.as_bytes());
                Padded {
                    bytes,
                    len: w.len() as u8,
                }
            })
            .collect();
        Vocabulary {
            words,
            padded,
            table,
        }
    }

    /// The words, most frequent first.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    #[inline]
    fn sample_index(&self, rng: &mut SplitMix64) -> usize {
        let r = rng.next_u64();
        let i = (((r >> 32) * self.table.len() as u64) >> 32) as usize;
        let (keep, alias) = self.table[i];
        // Both candidates are at hand: a select, not an unpredictable branch.
        if (r as u32) < keep {
            i
        } else {
            alias as usize
        }
    }

    /// Draws a word.
    #[inline]
    pub fn sample(&self, rng: &mut SplitMix64) -> &str {
        &self.words[self.sample_index(rng)]
    }
}

fn alias_table(weights: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let n = weights.len();
    let total: f64 = weights.iter().sum();
    let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
    let mut prob = vec![1.0; n];
    let mut alias: Vec<u32> = (0..n as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        prob[s] = scaled[s];
        alias[s] = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    (prob, alias)
}

/// Writes line `index` of the generated text into `out` (replacing it);
/// returns the number of words in it.
#[inline]
pub fn generate_line(vocab: &Vocabulary, seed: u64, index: u64, out: &mut String) -> usize {
    let mut buf = std::mem::take(out).into_bytes();
    buf.clear();
    let mut rng = SplitMix64::for_index(seed, index);
    let n = 5 + rng.below(11) as usize;
    let separators = rng.next_u64();
    for k in 0..n {
        let Padded { bytes, len } = &vocab.padded[vocab.sample_index(&mut rng)];
        if k > 0 {
            if (separators >> (4 * k)) & 0xF == 0 {
                buf.push(b',');
            }
            buf.push(b' ');
        }
        let at = buf.len();
        buf.extend_from_slice(bytes);
        buf.truncate(at + *len as usize);
        if k == 0 {
            buf[at] = buf[at].to_ascii_uppercase();
        }
    }
    buf.push(b'.');
    // Whole vocabulary words and ASCII punctuation: always valid UTF-8.
    *out = String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    n
}

/// Number of lines [`generated_lines`] produces for about `words` words (10 per line on average).
pub fn lines_for_words(words: u64) -> u64 {
    words.div_ceil(10)
}

/// The built-in input: [`lines_for_words`]`(words)` lines of generated text over
/// a Zipf vocabulary of `vocabulary` words, as a parallel source.
pub fn generated_lines(
    words: u64,
    vocabulary: usize,
    seed: u64,
) -> GeneratorSource<String, impl Fn(u64, &mut SplitMix64) -> String + Send + Sync + Clone + 'static>
{
    generated_text(Some(words), vocabulary, seed)
}

/// [`generated_lines`] for about `words` words, or without end for `None`
/// (an unbounded source: the job runs until it is stopped or cancelled).
pub fn generated_text(
    words: Option<u64>,
    vocabulary: usize,
    seed: u64,
) -> GeneratorSource<String, impl Fn(u64, &mut SplitMix64) -> String + Send + Sync + Clone + 'static>
{
    let vocab = Arc::new(Vocabulary::zipf(vocabulary, seed));
    GeneratorSource::new(seed, words.map(lines_for_words), move |i, _rng| {
        let mut line = String::with_capacity(128);
        generate_line(&vocab, seed, i, &mut line);
        line
    })
}

/// Line `index` of [`uniform_text`]: 5 to 15 words `w<hex>` drawn
/// uniformly from `vocabulary` (at least 1), then a full stop.
pub fn uniform_line(vocabulary: u64, seed: u64, index: u64) -> String {
    use std::fmt::Write;
    let mut rng = SplitMix64::for_index(seed, index);
    let n = 5 + rng.below(11) as usize;
    let mut line = String::with_capacity(12 * n);
    for k in 0..n {
        if k > 0 {
            line.push(' ');
        }
        let _ = write!(line, "w{:x}", rng.below(vocabulary.max(1)));
    }
    line.push('.');
    line
}

/// Generated text over a **uniform** vocabulary of `vocabulary` words,
/// `w<hex>` computed from a random index (no table in memory, so the
/// vocabulary can be far larger than RAM would hold as strings): keyed
/// state grows as fast as words come in, for large-state benchmarks. About
/// `words` words ([`uniform_line`]s), or without end.
pub fn uniform_text(
    words: Option<u64>,
    vocabulary: u64,
    seed: u64,
) -> GeneratorSource<String, impl Fn(u64, &mut SplitMix64) -> String + Send + Sync + Clone + 'static>
{
    GeneratorSource::new(seed, words.map(lines_for_words), move |i, _rng| {
        uniform_line(vocabulary, seed, i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_lines_draw_every_word_from_their_vocabulary() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..200 {
            let line = uniform_line(50, 7, i);
            assert!(line.ends_with('.'));
            let words: Vec<&str> = line.trim_end_matches('.').split(' ').collect();
            assert!((5..=15).contains(&words.len()), "{line}");
            for w in words {
                let k = u64::from_str_radix(w.strip_prefix('w').unwrap(), 16).unwrap();
                assert!(k < 50, "{w}");
                seen.insert(k);
            }
        }
        assert_eq!(seen.len(), 50, "200 lines over 50 words reach them all");
        assert_eq!(uniform_line(50, 7, 17), uniform_line(50, 7, 17));
        assert_ne!(uniform_line(50, 7, 17), uniform_line(50, 8, 17));
    }

    /// The hash of a word, whatever its representation, is the 24-byte
    /// form's: the bytes zero-padded to 23 and the length, as three words
    /// (so key groups did not move when `Word` shrank to 16 bytes).
    #[test]
    fn word_hash_is_the_padded_form() {
        use std::hash::BuildHasher;
        let h = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
        let text = "abcdefghijklmnopqrstuvwxyz0123456789";
        for n in 0..=text.len() {
            let s = &text[..n];
            let w = Word::new(s);
            assert_eq!(w.as_str(), s);
            let expected = if n <= 23 {
                let mut st = h.build_hasher();
                hash_short(s.as_bytes(), &mut st);
                st.finish()
            } else {
                let mut st = h.build_hasher();
                st.write(s.as_bytes());
                st.write_u8(0xff);
                st.finish()
            };
            assert_eq!(h.hash_one(&w), expected, "length {n}");
            // The same text from another allocation is the same word.
            let copy = String::from(s);
            assert_eq!(w, Word::new(&copy));
            if n < text.len() {
                assert_ne!(w, Word::new(&text[..n + 1]));
            }
        }
        assert_eq!(std::mem::size_of::<Word>(), 16);
    }

    /// Random text over an alphabet of ASCII letters and digits, separators,
    /// and non-ASCII letters and non-letters, in runs of every length around
    /// the tokenizer's 8- and 16-byte steps.
    #[test]
    fn tokenizer_matches_reference_on_random_text() {
        const PIECES: &[&str] = &[
            "a", "Z", "q", "7", "0", "M", "z", " ", ",", ".", "-", "_", "\t", "é", "É", "ß", "ñ",
            "日", "€", "—", "\u{300}", "Σ", "ǅ", "İ", "x",
        ];
        let mut rng = SplitMix64::new(5);
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..rng.below(40) {
                let run = 1 + rng.below(20);
                let p = PIECES[rng.below(PIECES.len() as u64) as usize];
                for _ in 0..run {
                    s.push_str(if rng.below(3) == 0 {
                        PIECES[rng.below(PIECES.len() as u64) as usize]
                    } else {
                        p
                    });
                }
            }
            let mut got = Vec::new();
            for_each_word(&s, |w| got.push(w.to_string()));
            assert_eq!(got, words_reference(&s), "text: {s:?}");
        }
    }

    #[test]
    fn tokenizer_matches_reference() {
        let samples = [
            "Hello, World! hello-world 42x",
            "  ÉCOLE élève Straße ΣΊΣΥΦΟΣ naïve  ",
            "tabs\tand\nnewlines__under_scores",
            "",
            "...,,,",
            "日本語 テキスト 123",
            "MiXeD CaSe ÅÄÖ",
        ];
        for s in samples {
            let mut got = Vec::new();
            for_each_word(s, |w| got.push(w.to_string()));
            assert_eq!(got, words_reference(s), "text: {s:?}");
        }
    }

    #[test]
    fn generated_text_is_deterministic_and_zipfian() {
        let v = Vocabulary::zipf(10_000, 7);
        assert_eq!(v.words().len(), 10_000);
        let mut a = String::new();
        let mut b = String::new();
        generate_line(&v, 7, 123, &mut a);
        generate_line(&Vocabulary::zipf(10_000, 7), 7, 123, &mut b);
        assert_eq!(a, b);
        let mut counts = vec![0u32; 10_000];
        let mut rng = SplitMix64::new(1);
        let index: std::collections::HashMap<&str, usize> = v
            .words()
            .iter()
            .enumerate()
            .map(|(i, w)| (w.as_str(), i))
            .collect();
        for _ in 0..200_000 {
            counts[index[v.sample(&mut rng)]] += 1;
        }
        // Zipf: rank 1 about twice rank 2, about ten times rank 10.
        let r = counts[0] as f64 / counts[1] as f64;
        assert!((1.7..2.3).contains(&r), "rank1/rank2 = {r}");
        let r = counts[0] as f64 / counts[9] as f64;
        assert!((7.0..13.0).contains(&r), "rank1/rank10 = {r}");
    }

    #[test]
    fn line_word_count_is_what_the_tokenizer_sees() {
        let v = Vocabulary::zipf(1000, 3);
        let mut line = String::new();
        for i in 0..1000 {
            let n = generate_line(&v, 3, i, &mut line);
            assert_eq!(words_reference(&line).len(), n, "{line}");
        }
    }
}
