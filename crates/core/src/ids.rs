//! Request ids and W3C trace context, formatted into fixed buffers (no allocation).
//!
//! A request keeps a client-supplied `x-request-id` when it is sane (visible
//! ASCII, at most 128 bytes), otherwise gets 128 random bits in hex. A valid
//! incoming `traceparent` keeps its trace id and flags and gets a new span id
//! (the gateway's hop); an absent or invalid one starts a new trace.

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

/// W3C trace context for the upstream hop: `00-<trace id>-<span id>-<flags>`.
pub struct TraceParent {
    buf: [u8; 55],
}

impl TraceParent {
    /// Continues `incoming` when valid, else starts a new sampled trace.
    pub fn new(incoming: Option<&[u8]>, rng: &Cell<u64>) -> Self {
        let mut t = TraceParent { buf: [0; 55] };
        t.buf
            .copy_from_slice(b"00-00000000000000000000000000000000-0000000000000000-01");
        match incoming.filter(|v| valid(v)) {
            Some(v) => {
                t.buf[3..35].copy_from_slice(&v[3..35]);
                t.buf[53..55].copy_from_slice(&v[53..55]);
            }
            None => hex_random(&mut t.buf[3..35], rng),
        }
        hex_random(&mut t.buf[36..52], rng);
        t
    }

    /// The full header value.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.buf[3..35]).unwrap_or("")
    }
}

fn valid(v: &[u8]) -> bool {
    let lower_hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    v.len() == 55
        && &v[..3] == b"00-"
        && v[35] == b'-'
        && v[52] == b'-'
        && lower_hex(&v[3..35])
        && lower_hex(&v[36..52])
        && lower_hex(&v[53..55])
        && v[3..35].iter().any(|b| *b != b'0')
        && v[36..52].iter().any(|b| *b != b'0')
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

    #[test]
    fn traceparent_continues_or_starts() {
        let rng = Cell::new(42);
        let incoming = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceParent::new(Some(incoming), &rng);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(&t.as_bytes()[36..52], b"00f067aa0ba902b7");
        assert!(valid(t.as_bytes()));
        let fresh = TraceParent::new(Some(b"00-zz"), &rng);
        assert!(valid(fresh.as_bytes()));
        assert_ne!(fresh.trace_id(), t.trace_id());
    }
}
