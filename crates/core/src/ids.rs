//! Request ids, formatted into a fixed buffer (no allocation).
//!
//! A request keeps a client-supplied `x-request-id` when it is sane (visible
//! ASCII, at most 128 bytes), otherwise gets 128 random bits in hex. (W3C trace
//! context is `hypergate-otel`'s.) [`IpText`] is a client address as text, the
//! same way: inline, formatted once per connection.

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

/// An IP address as text, kept inline (no allocation): a connection formats
/// its client's address once, for `X-Forwarded-For` on every request and for
/// its records. IPv4, the common case, is formatted by hand (the standard
/// library's `Display` goes through the formatting machinery and costs about
/// 1,300 instructions, a tenth of a proxied request's user-space work, on a
/// connection that carries one request); IPv6 uses `Display`.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; IpText::MAX],
    len: u8,
}

impl IpText {
    /// The longest text an address takes (an IPv4-mapped IPv6 address).
    const MAX: usize = 45;

    /// The text of `ip`.
    pub fn new(ip: std::net::IpAddr) -> IpText {
        let mut text = IpText {
            buf: [0; IpText::MAX],
            len: 0,
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            std::net::IpAddr::V6(v6) => {
                use std::fmt::Write;
                // Cannot fail: `MAX` holds the longest IPv6 text.
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        self.buf[usize::from(self.len)] = b;
        self.len += 1;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters are ever written.
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let start = usize::from(self.len);
        let end = start + s.len();
        if end > IpText::MAX {
            return Err(std::fmt::Error);
        }
        self.buf[start..end].copy_from_slice(s.as_bytes());
        self.len = end as u8;
        Ok(())
    }
}

impl std::ops::Deref for IpText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod ip_text_tests {
    use super::IpText;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    #[test]
    fn formats_like_the_standard_library() {
        let mut addrs: Vec<IpAddr> = vec![
            Ipv4Addr::new(0, 0, 0, 0).into(),
            Ipv4Addr::new(127, 0, 0, 1).into(),
            Ipv4Addr::new(255, 255, 255, 255).into(),
            Ipv4Addr::new(10, 99, 100, 9).into(),
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::UNSPECIFIED.into(),
            "2001:db8:85a3::8a2e:370:7334".parse().unwrap(),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            "::ffff:255.255.255.255".parse().unwrap(),
        ];
        let mut x = 0x9e37_79b9u32;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            addrs.push(Ipv4Addr::from(x).into());
        }
        for ip in addrs {
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }
}
