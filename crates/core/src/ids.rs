//! Request ids, formatted into a fixed buffer (no allocation).
//!
//! A request keeps a client-supplied `x-request-id` when it is sane (visible
//! ASCII, at most 128 bytes), otherwise gets 128 random bits in hex. (W3C trace
//! context is `hypergate-otel`'s.)

use crate::rng::next_random;
use std::cell::Cell;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A request id of up to 128 visible ASCII bytes.
pub struct RequestId {
    buf: [u8; 128],
    len: usize,
}

impl RequestId {
    /// Uses `incoming` when it is acceptable, else generates one.
    pub fn new(incoming: Option<&[u8]>, rng: &Cell<u64>) -> Self {
        let mut id = RequestId {
            buf: [0; 128],
            len: 0,
        };
        match incoming {
            Some(v)
                if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) =>
            {
                id.buf[..v.len()].copy_from_slice(v);
                id.len = v.len();
            }
            _ => {
                hex_random(&mut id.buf[..32], rng);
                id.len = 32;
            }
        }
        id
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever stored.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

fn hex_random(out: &mut [u8], rng: &Cell<u64>) {
    for pair in out.chunks_mut(16) {
        let mut x = next_random(rng);
        for b in pair {
            *b = HEX[(x & 0xf) as usize];
            x >>= 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let rng = Cell::new(0x1234_5678_9abc_def1);
        let a = RequestId::new(None, &rng);
        let b = RequestId::new(None, &rng);
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(RequestId::new(Some(b"abc-1"), &rng).as_str(), "abc-1");
        assert_eq!(RequestId::new(Some(b"bad id"), &rng).as_str().len(), 32);
    }
}
