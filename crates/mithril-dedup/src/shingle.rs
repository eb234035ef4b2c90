//! Normalisation, tokenisation and shingle hashing.
//!
//! Word mode follows the usual corpus-dedup definition: words are the (lowercased) maximal runs
//! of Unicode letters, numbers and `_` (Python's `re` `\w+`), a shingle is `ngram` consecutive
//! words, and a text with fewer words than `ngram` has its whole word sequence as its single
//! shingle. Character mode takes `ngram` consecutive characters after folding every run of
//! whitespace to one space. A text with no tokens has no shingles.
//!
//! Each word is hashed once with xxh3; a shingle's hash is xxh3 over its words' hashes, so the
//! same shingle hashes the same in every document. Invalid UTF-8 bytes act as separators (word
//! mode) or as U+FFFD (character mode). Shingles are produced in bounded blocks, so a text of
//! any length is processed in bounded memory.

use crate::ascii;
use crate::{Error, Result};
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// What a token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Word,
    Char,
}

impl TokenKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "word" => Ok(Self::Word),
            "char" => Ok(Self::Char),
            _ => Err(Error::Invalid(format!(
                "tokens must be \"word\" or \"char\", not {s:?}"
            ))),
        }
    }
}

/// How texts become shingles. The defaults match the corpus ground truth: lowercase word
/// 5-grams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShingleConfig {
    pub tokens: TokenKind,
    pub ngram: usize,
    pub lowercase: bool,
    /// Compose to Unicode NFC first, so that precomposed and decomposed accents agree.
    pub nfc: bool,
    pub seed: u64,
}

impl Default for ShingleConfig {
    fn default() -> Self {
        Self {
            tokens: TokenKind::Word,
            ngram: 5,
            lowercase: true,
            nfc: true,
            seed: 1,
        }
    }
}

pub const MAX_NGRAM: usize = 64;

impl ShingleConfig {
    pub fn validate(&self) -> Result<()> {
        if self.ngram == 0 || self.ngram > MAX_NGRAM {
            return Err(Error::Invalid(format!(
                "ngram must be between 1 and {MAX_NGRAM}, got {}",
                self.ngram
            )));
        }
        Ok(())
    }
}

/// Tokens between two emissions of shingle hashes.
const BLOCK: usize = 4096;

/// A mask of the `k` lowest bits (`k ≤ 64`).
#[inline(always)]
fn low_bits(k: usize) -> u64 {
    if k >= 64 {
        u64::MAX
    } else {
        (1u64 << k) - 1
    }
}

/// A 64-bit shingle hash folded to 32 bits (the same folding MinHash uses).
#[inline(always)]
pub fn fold32(x: u64) -> u32 {
    (x ^ (x >> 32)) as u32
}

/// Multipliers of the shingle hash, derived from the seed.
fn window_keys(seed: u64) -> Vec<u64> {
    let mut state = seed ^ 0x5348_494E_474C_4521;
    (0..2 * MAX_NGRAM)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            fmix64(state) | 1
        })
        .collect()
}

/// MurmurHash3's 64-bit finaliser.
#[inline(always)]
pub(crate) fn fmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

/// The hash of one shingle from its tokens' xxh3 hashes: a multilinear combination with
/// per-position random odd keys (order-sensitive, universal), then a 64-bit finaliser.
#[inline(always)]
fn combine(keys: &[u64], tokens: &[u64]) -> u64 {
    let mut acc = 0u64;
    for (k, t) in keys.iter().zip(tokens) {
        acc = acc.wrapping_add(k.wrapping_mul(*t));
    }
    fmix64(acc)
}

/// Reusable scratch buffers for turning texts into shingle hashes; one per worker thread.
pub struct Shingler {
    cfg: ShingleConfig,
    word: Vec<u8>,
    tokens: Vec<u64>,
    hashes: Vec<u64>,
    /// Random odd multipliers: `ngram` for full shingles, then `MAX_NGRAM` for short texts.
    keys: Vec<u64>,
    seen_tokens: u64,
    windows_done: bool,
    avx2: bool,
}

const SEP: u8 = 0;
const WORD: u8 = 1;
const UPPER: u8 = 2;
const NON_ASCII: u8 = 3;

/// Byte classes for the word tokenizer: ASCII separators, ASCII word bytes (`[a-z0-9_]`),
/// ASCII uppercase letters, and the lead or continuation bytes of non-ASCII characters.
static CLASS: [u8; 256] = {
    let mut t = [NON_ASCII; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_uppercase() {
            UPPER
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            WORD
        } else {
            SEP
        };
        b += 1;
    }
    t
};

/// Python's `\w` outside ASCII: letters (`L*`) and numbers (`N*`). Rust's `is_alphanumeric`
/// would also take the combining marks and symbols that Unicode lists as Other_Alphabetic
/// (vowel signs, circled letters), which would split words differently from the usual
/// definition.
fn is_word_char(c: char) -> bool {
    use unicode_general_category::{get_general_category, GeneralCategory as G};
    matches!(
        get_general_category(c),
        G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter
            | G::DecimalNumber
            | G::LetterNumber
            | G::OtherNumber
    )
}

/// Decode one UTF-8 scalar at the start of `s`: `(Some(char), len)`, or `(None, 1)` for an
/// invalid or truncated sequence.
fn decode_char(s: &[u8]) -> (Option<char>, usize) {
    let b0 = s[0];
    let len = match b0 {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (None, 1),
    };
    match s.get(..len).and_then(|b| std::str::from_utf8(b).ok()) {
        Some(t) => (t.chars().next(), len),
        None => (None, 1),
    }
}

impl Shingler {
    pub fn new(cfg: ShingleConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self::from_valid(cfg))
    }

    /// A shingler for a configuration that already passed `validate`.
    pub(crate) fn from_valid(cfg: ShingleConfig) -> Self {
        let keys = window_keys(cfg.seed);
        Self {
            cfg,
            word: Vec::with_capacity(64),
            tokens: Vec::with_capacity(BLOCK + MAX_NGRAM),
            hashes: Vec::with_capacity(BLOCK),
            keys,
            seen_tokens: 0,
            windows_done: false,
            avx2: ascii::has_avx2(),
        }
    }

    pub fn config(&self) -> &ShingleConfig {
        &self.cfg
    }

    /// Feed the shingle hashes of `text` to `sink` in blocks (with repeats, in text order) and
    /// return how many there were.
    pub fn run(&mut self, text: &[u8], sink: &mut dyn FnMut(&[u64])) -> u64 {
        self.tokens.clear();
        self.word.clear();
        self.seen_tokens = 0;
        self.windows_done = false;
        let mut count = 0u64;
        let normalized;
        let text: &[u8] = if self.cfg.nfc && !text.is_ascii() {
            let s = String::from_utf8_lossy(text);
            if is_nfc_quick(s.chars()) == IsNormalized::Yes {
                normalized = s.into_owned();
            } else {
                normalized = s.nfc().collect::<String>();
            }
            normalized.as_bytes()
        } else {
            text
        };
        match self.cfg.tokens {
            TokenKind::Word => self.words(text, sink, &mut count),
            TokenKind::Char => self.chars(text, sink, &mut count),
        }
        self.finish(sink, &mut count);
        count
    }

    /// The sorted, distinct shingle hashes of `text`: the set that exact Jaccard compares.
    pub fn set(&mut self, text: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        self.run(text, &mut |h| out.extend_from_slice(h));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The sorted, distinct 32-bit fingerprints (folded shingle hashes) of `text`: the compact
    /// set that batch verification keeps for candidate documents.
    pub fn fingerprints(&mut self, text: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        self.run(text, &mut |h| out.extend(h.iter().map(|&x| fold32(x))));
        out.sort_unstable();
        out.dedup();
        out
    }

    fn words(&mut self, text: &[u8], sink: &mut dyn FnMut(&[u64]), count: &mut u64) {
        let n = text.len();
        let mut i = 0;
        'blocks: while i < n {
            let end = (i + ascii::BLOCK).min(n);
            let m = ascii::classify(&text[i..end], self.avx2);
            if m.high != 0 || !self.word.is_empty() {
                // Non-ASCII bytes, or a word carried over from them: byte by byte.
                i = self.words_bytewise(text, i, end, sink, count);
                continue;
            }
            let len = end - i;
            let mut word = m.word;
            while word != 0 {
                let s = word.trailing_zeros() as usize;
                let e = s + (!(word >> s)).trailing_zeros() as usize;
                let (start, mut stop) = (i + s, i + e);
                let mut upper = m.upper >> s & low_bits(e - s) != 0;
                if e == len {
                    // The run reaches the block's end: follow it past.
                    while stop < n && matches!(CLASS[text[stop] as usize], WORD | UPPER) {
                        upper |= CLASS[text[stop] as usize] == UPPER;
                        stop += 1;
                    }
                    if stop < n && CLASS[text[stop] as usize] == NON_ASCII {
                        // It goes on with non-ASCII characters: finish it byte by byte.
                        self.append_ascii(&text[start..stop], upper);
                        i = stop;
                        continue 'blocks;
                    }
                }
                self.ascii_word(&text[start..stop], upper, sink, count);
                if stop >= end {
                    i = stop;
                    continue 'blocks;
                }
                word &= !low_bits(e);
            }
            i = end;
        }
        self.end_word(sink, count);
    }

    /// A whole ASCII word: hashed from the text, or from a lowercased copy.
    fn ascii_word(
        &mut self,
        run: &[u8],
        upper: bool,
        sink: &mut dyn FnMut(&[u64]),
        count: &mut u64,
    ) {
        if upper && self.cfg.lowercase {
            self.append_ascii(run, true);
            self.end_word(sink, count);
        } else {
            let h = xxh3_64_with_seed(run, self.cfg.seed);
            self.push_token(h, sink, count);
        }
    }

    fn append_ascii(&mut self, run: &[u8], upper: bool) {
        if upper && self.cfg.lowercase {
            self.word.extend(run.iter().map(|b| b.to_ascii_lowercase()));
        } else {
            self.word.extend_from_slice(run);
        }
    }

    /// The byte-at-a-time tokenizer from `i` until at least `stop` (a character or ASCII run
    /// that starts before `stop` is finished); returns where it stopped. A word may be left in
    /// progress in `self.word`.
    fn words_bytewise(
        &mut self,
        text: &[u8],
        mut i: usize,
        stop: usize,
        sink: &mut dyn FnMut(&[u64]),
        count: &mut u64,
    ) -> usize {
        let lower = self.cfg.lowercase;
        let n = text.len();
        while i < stop {
            let class = CLASS[text[i] as usize];
            if class == SEP {
                self.end_word(sink, count);
                i += 1;
                continue;
            }
            if class != NON_ASCII {
                // A run of ASCII word bytes: hashed straight from the text when it is a whole
                // word that needs no lowercasing.
                let start = i;
                let mut upper = false;
                while i < n {
                    let c = CLASS[text[i] as usize];
                    if c == SEP || c == NON_ASCII {
                        break;
                    }
                    upper |= c == UPPER;
                    i += 1;
                }
                let run = &text[start..i];
                let whole = self.word.is_empty() && (i == n || CLASS[text[i] as usize] == SEP);
                if whole && !(upper && lower) {
                    let h = xxh3_64_with_seed(run, self.cfg.seed);
                    self.push_token(h, sink, count);
                } else if upper && lower {
                    self.word.extend(run.iter().map(|&b| {
                        if CLASS[b as usize] == UPPER {
                            b | 0x20
                        } else {
                            b
                        }
                    }));
                } else {
                    self.word.extend_from_slice(run);
                }
                continue;
            }
            let (c, len) = decode_char(&text[i..]);
            match c {
                Some(c) if is_word_char(c) => {
                    let mut buf = [0u8; 4];
                    if lower {
                        for l in c.to_lowercase() {
                            self.word
                                .extend_from_slice(l.encode_utf8(&mut buf).as_bytes());
                        }
                    } else {
                        self.word
                            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                _ => self.end_word(sink, count),
            }
            i += len;
        }
        i
    }

    fn end_word(&mut self, sink: &mut dyn FnMut(&[u64]), count: &mut u64) {
        if self.word.is_empty() {
            return;
        }
        let h = xxh3_64_with_seed(&self.word, self.cfg.seed);
        self.word.clear();
        self.push_token(h, sink, count);
    }

    fn chars(&mut self, text: &[u8], sink: &mut dyn FnMut(&[u64]), count: &mut u64) {
        let lower = self.cfg.lowercase;
        let mut pending_space = false;
        let mut i = 0;
        while i < text.len() {
            let (c, len) = if text[i] < 0x80 {
                (Some(text[i] as char), 1)
            } else {
                decode_char(&text[i..])
            };
            i += len;
            let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
            if c.is_whitespace() {
                pending_space = self.seen_tokens > 0 || !self.tokens.is_empty();
                continue;
            }
            if pending_space {
                self.push_token(u64::from(' '), sink, count);
                pending_space = false;
            }
            if lower {
                for l in c.to_lowercase() {
                    self.push_token(u64::from(l), sink, count);
                }
            } else {
                self.push_token(u64::from(c), sink, count);
            }
        }
    }

    fn push_token(&mut self, h: u64, sink: &mut dyn FnMut(&[u64]), count: &mut u64) {
        self.tokens.push(h);
        self.seen_tokens += 1;
        if self.tokens.len() >= BLOCK + self.cfg.ngram - 1 {
            self.emit_windows(sink, count);
        }
    }

    /// Hash every complete window in `tokens`, hand them over, keep the last `ngram - 1`.
    fn emit_windows(&mut self, sink: &mut dyn FnMut(&[u64]), count: &mut u64) {
        let n = self.cfg.ngram;
        if self.tokens.len() < n {
            return;
        }
        self.hashes.clear();
        let keys = &self.keys[..n];
        self.hashes
            .extend(self.tokens.windows(n).map(|w| combine(keys, w)));
        let keep_from = self.tokens.len() + 1 - n;
        self.tokens.drain(..keep_from);
        self.windows_done = true;
        *count += self.hashes.len() as u64;
        sink(&self.hashes);
    }

    fn finish(&mut self, sink: &mut dyn FnMut(&[u64]), count: &mut u64) {
        if self.seen_tokens == 0 {
            return;
        }
        if self.seen_tokens < self.cfg.ngram as u64 {
            // Fewer tokens than one shingle: the whole sequence is the shingle.
            let k = self.tokens.len();
            // Shorter sequences use other keys, so a lone word never equals a longer shingle's hash.
            let h = combine(&self.keys[MAX_NGRAM..MAX_NGRAM + k], &self.tokens) ^ k as u64;
            *count += 1;
            sink(&[h]);
            return;
        }
        self.emit_windows(sink, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ngram: usize) -> ShingleConfig {
        ShingleConfig {
            ngram,
            ..Default::default()
        }
    }

    fn set(c: ShingleConfig, t: &str) -> Vec<u64> {
        Shingler::new(c).unwrap().set(t.as_bytes())
    }

    #[test]
    fn words_are_lowercase_alnum_runs() {
        let a = set(cfg(2), "Hello, WORLD! foo_bar 42");
        let b = set(cfg(2), "hello world\nfoo_bar  42...");
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
        assert_ne!(set(cfg(2), "hello world"), set(cfg(2), "world hello"));
    }

    #[test]
    fn short_text_is_one_shingle_and_empty_has_none() {
        assert_eq!(set(cfg(5), "just three words").len(), 1);
        assert_ne!(set(cfg(5), "just three words"), set(cfg(5), "just three"));
        assert!(set(cfg(5), "  ... !!").is_empty());
        assert!(set(cfg(5), "").is_empty());
    }

    #[test]
    fn unicode_words_and_invalid_bytes() {
        assert_eq!(set(cfg(1), "ÉCOLE"), set(cfg(1), "école"));
        // Decomposed e + combining acute composes under NFC.
        assert_eq!(set(cfg(1), "e\u{301}cole"), set(cfg(1), "école"));
        let mut s = Shingler::new(cfg(1)).unwrap();
        let with_bad = s.set(b"abc\xffdef");
        assert_eq!(with_bad, s.set(b"abc def"));
        // Combining marks and circled letters separate words, as in Python's `\w`.
        assert_eq!(s.set("cafe\u{301}s".as_bytes()).len(), 1); // NFC composes it first
        let plain = ShingleConfig {
            nfc: false,
            ..cfg(1)
        };
        let mut p = Shingler::new(plain).unwrap();
        assert_eq!(p.set("cafe\u{301}s".as_bytes()), p.set(b"cafe s"));
        assert_eq!(p.set("a\u{24B6}b".as_bytes()), p.set(b"a b"));
        assert_eq!(p.set("x\u{00B2}".as_bytes()).len(), 1); // superscript two is No
    }

    #[test]
    fn blocks_do_not_change_the_set() {
        let text: String = (0..20_000).map(|i| format!("w{} ", i % 7919)).collect();
        let mut s = Shingler::new(cfg(5)).unwrap();
        let mut all = Vec::new();
        let n = s.run(text.as_bytes(), &mut |h| all.extend_from_slice(h));
        assert_eq!(n, 20_000 - 4);
        assert_eq!(all.len() as u64, n);
        // The same windows computed directly.
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut direct = Shingler::new(cfg(5)).unwrap();
        let first = direct.set(words[..5].join(" ").as_bytes());
        assert_eq!(first[0], all[0]);
    }

    #[test]
    fn char_mode_folds_whitespace() {
        let c = ShingleConfig {
            tokens: TokenKind::Char,
            ngram: 3,
            ..Default::default()
        };
        assert_eq!(set(c.clone(), "  Ab \n\t cd  "), set(c.clone(), "ab cd"));
        assert_eq!(set(c.clone(), "ab cd").len(), 3);
        assert_eq!(set(c, "ab").len(), 1);
    }

    /// The whole text through the byte-at-a-time path only.
    fn bytewise_tokens(c: ShingleConfig, text: &[u8]) -> Vec<u64> {
        let mut s = Shingler::new(c).unwrap();
        let mut out = Vec::new();
        let mut count = 0;
        let mut sink = |h: &[u64]| out.extend_from_slice(h);
        s.words_bytewise(text, 0, text.len(), &mut sink, &mut count);
        s.end_word(&mut sink, &mut count);
        s.finish(&mut sink, &mut count);
        out
    }

    fn fast_tokens(c: ShingleConfig, text: &[u8]) -> Vec<u64> {
        let mut s = Shingler::new(c).unwrap();
        let mut out = Vec::new();
        s.run(text, &mut |h| out.extend_from_slice(h));
        out
    }

    proptest::proptest! {
        #[test]
        fn block_tokenizer_matches_bytewise(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "Z", "q", "_", "7", " ", ", ", "\n", "-", "é", "É", "\u{301}",
                    "\u{24B6}", "語", "\u{FFFD}", "abcdefghijklmnopqrstuvwxyz0123456789",
                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ_ABCDEFGHIJKLMNOPQRSTUVWXYZ_ABCDEFGHIJ",
                ]),
                0..120,
            ),
            bad in proptest::collection::vec(0usize..4000, 0..3),
            lowercase in proptest::bool::ANY,
        ) {
            let mut text: Vec<u8> = parts.concat().into_bytes();
            for b in bad {
                if !text.is_empty() {
                    let at = b % text.len();
                    text[at] = 0xFF;
                }
            }
            let c = ShingleConfig { ngram: 1, lowercase, nfc: false, ..Default::default() };
            proptest::prop_assert_eq!(fast_tokens(c.clone(), &text), bytewise_tokens(c, &text));
        }
    }

    #[test]
    fn bad_ngram_is_refused() {
        assert!(Shingler::new(cfg(0)).is_err());
        assert!(Shingler::new(cfg(65)).is_err());
    }
}
