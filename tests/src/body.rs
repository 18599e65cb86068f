//! Large bodies that are generated on the fly and checked by fingerprint, never held in memory.
//!
//! [`Pattern`] produces a deterministic byte stream from a seed, so a sender can
//! stream gigabytes from a fixed buffer: block `k` (64 KiB) of the stream is a
//! window of a 1 MiB table of random bytes, at an offset derived from the seed
//! and `k`, so producing it is a `memcpy` (fast even in debug builds) and no two
//! nearby blocks are alike. [`Fingerprint`] folds any byte stream into a length
//! and an order-sensitive 64-bit digest; two ends that fingerprint the same
//! stream agree, and a lost, duplicated or reordered piece changes the digest.

use std::sync::OnceLock;

/// Bytes per generated block.
const BLOCK: u64 = 64 * 1024;
/// Size of the random table blocks are cut from.
const TABLE: usize = 1 << 20;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn table() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        (0..TABLE as u64 / 8)
            .flat_map(|i| splitmix(i).to_le_bytes())
            .collect()
    })
}

/// A deterministic pseudo-random byte stream of a given length.
#[derive(Debug, Clone)]
pub struct Pattern {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Pattern {
    /// A stream of `len` bytes derived from `seed`.
    pub fn new(seed: u64, len: u64) -> Pattern {
        Pattern { seed, pos: 0, len }
    }

    /// Bytes not produced yet.
    pub fn remaining(&self) -> u64 {
        self.len - self.pos
    }

    /// Fills as much of `buf` as the stream has left; returns the count (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let table = table();
        let n = (self.remaining().min(buf.len() as u64)) as usize;
        let mut i = 0;
        while i < n {
            let block = self.pos / BLOCK;
            let within = (self.pos % BLOCK) as usize;
            let start = (splitmix(self.seed ^ block.wrapping_mul(0x9e37)) as usize
                % (TABLE - BLOCK as usize))
                + within;
            let take = (BLOCK as usize - within).min(n - i);
            buf[i..i + take].copy_from_slice(&table[start..start + take]);
            i += take;
            self.pos += take as u64;
        }
        n
    }

    /// The fingerprint of the whole stream (computed on a fresh copy; `self` is untouched).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut p = Pattern::new(self.seed, self.len);
        let mut f = Fingerprint::default();
        let mut buf = vec![0u8; BLOCK as usize];
        loop {
            let n = p.fill(&mut buf);
            if n == 0 {
                return f;
            }
            f.update(&buf[..n]);
        }
    }
}

/// Length and order-sensitive digest of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Bytes seen.
    pub len: u64,
    state: u64,
    partial: [u8; 8],
    partial_len: usize,
}

impl Default for Fingerprint {
    fn default() -> Self {
        Fingerprint {
            len: 0,
            state: 0x243f_6a88_85a3_08d3,
            partial: [0; 8],
            partial_len: 0,
        }
    }
}

impl Fingerprint {
    /// The fingerprint of a byte slice.
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let mut f = Fingerprint::default();
        f.update(bytes);
        f
    }

    /// Feeds more bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.partial_len > 0 {
            let take = (8 - self.partial_len).min(bytes.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&bytes[..take]);
            self.partial_len += take;
            bytes = &bytes[take..];
            if self.partial_len < 8 {
                return;
            }
            self.state = mix(self.state, u64::from_le_bytes(self.partial));
            self.partial_len = 0;
        }
        // A plain indexed loop: debug builds run it several times faster than iterators.
        let whole = bytes.len() / 8 * 8;
        let mut state = self.state;
        let mut i = 0;
        while i < whole {
            let w = u64::from(bytes[i])
                | u64::from(bytes[i + 1]) << 8
                | u64::from(bytes[i + 2]) << 16
                | u64::from(bytes[i + 3]) << 24
                | u64::from(bytes[i + 4]) << 32
                | u64::from(bytes[i + 5]) << 40
                | u64::from(bytes[i + 6]) << 48
                | u64::from(bytes[i + 7]) << 56;
            state = mix(state, w);
            i += 8;
        }
        self.state = state;
        let rest = &bytes[whole..];
        self.partial[..rest.len()].copy_from_slice(rest);
        self.partial_len = rest.len();
    }

    /// The digest so far (pending tail bytes and the length included).
    pub fn digest(&self) -> u64 {
        let mut tail = [0u8; 8];
        tail[..self.partial_len].copy_from_slice(&self.partial[..self.partial_len]);
        splitmix(self.state ^ u64::from_le_bytes(tail) ^ self.len.rotate_left(17))
    }
}

#[inline(always)]
fn mix(state: u64, word: u64) -> u64 {
    (state ^ word)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .rotate_left(29)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_same_in_any_read_size() {
        let whole = {
            let mut p = Pattern::new(7, 10_001);
            let mut v = vec![0u8; 20_000];
            let n = p.fill(&mut v);
            v.truncate(n);
            v
        };
        assert_eq!(whole.len(), 10_001);
        for step in [1, 3, 8, 13, 4096] {
            let mut p = Pattern::new(7, 10_001);
            let mut got = Vec::new();
            let mut buf = vec![0u8; step];
            loop {
                let n = p.fill(&mut buf);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, whole, "step {step}");
        }
        let mut f = Fingerprint::default();
        for piece in whole.chunks(5) {
            f.update(piece);
        }
        assert_eq!(f.digest(), Fingerprint::of(&whole).digest());
        assert_eq!(f.digest(), Pattern::new(7, 10_001).fingerprint().digest());
        let mut swapped = whole.clone();
        swapped.swap(0, 9);
        assert_ne!(Fingerprint::of(&swapped).digest(), f.digest());
    }
}
