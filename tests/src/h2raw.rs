//! A raw HTTP/2 client for attack tests: frames written byte by byte, so a
//! test can send what no well-behaved client library would (streams reset
//! as fast as they open, endless CONTINUATION frames, header blocks that
//! decode to megabytes, streams beyond the advertised limit, a window that
//! never reopens). HPACK is the minimum: static-table indexes and literals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Frame types.
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0;
    /// HEADERS.
    pub const HEADERS: u8 = 1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 4;
    /// GOAWAY.
    pub const GOAWAY: u8 = 7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 9;
}

/// `END_STREAM` (DATA, HEADERS).
pub const END_STREAM: u8 = 0x1;
/// `END_HEADERS` (HEADERS, CONTINUATION).
pub const END_HEADERS: u8 = 0x4;

/// One frame read from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A raw HTTP/2 connection (prior knowledge, cleartext).
pub struct H2Raw {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// The header block of `GET path` (`:authority` localhost).
pub fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    literal(&mut b, 4, path.as_bytes()); // :path
    literal(&mut b, 1, b"localhost"); // :authority
    b
}

/// A literal header field without indexing, with an indexed name.
pub fn literal(b: &mut Vec<u8>, name_index: u8, value: &[u8]) {
    b.push(name_index); // 0000xxxx: literal without indexing, name index < 15
    length(b, value.len());
    b.extend_from_slice(value);
}

/// An HPACK string length (7-bit prefix, no Huffman).
pub fn length(b: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        b.push(n as u8);
        return;
    }
    b.push(127);
    n -= 127;
    while n >= 128 {
        b.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    b.push(n as u8);
}

impl H2Raw {
    /// Connects, sends the preface and empty SETTINGS (with
    /// `initial_window` as SETTINGS_INITIAL_WINDOW_SIZE when given), and
    /// acknowledges the server's SETTINGS.
    pub fn connect(addr: SocketAddr, initial_window: Option<u32>) -> H2Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).ok();
        let mut c = H2Raw {
            stream,
            buf: Vec::new(),
        };
        c.send_raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut settings = Vec::new();
        if let Some(w) = initial_window {
            settings.extend_from_slice(&4u16.to_be_bytes());
            settings.extend_from_slice(&w.to_be_bytes());
        }
        c.frame(kind::SETTINGS, 0, 0, &settings);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match c.read_frame(Duration::from_secs(15)) {
                Some(f) if f.kind == kind::SETTINGS && f.flags & 1 == 0 => {
                    c.frame(kind::SETTINGS, 1, 0, &[]);
                    return c;
                }
                Some(_) => {}
                None => break,
            }
        }
        panic!("no SETTINGS from the server");
    }

    /// Writes bytes; `false` when the server closed the connection.
    pub fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// The bytes of one frame.
    pub fn encode(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Writes one frame; `false` when the server closed the connection.
    pub fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> bool {
        self.send_raw(&Self::encode(kind, flags, stream, payload))
    }

    /// Reads the next frame within `timeout`; `None` on timeout or close.
    pub fn read_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until `stop` says so, the connection closes or `timeout`
    /// passes; returns every frame read.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(&Frame) -> bool,
    ) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.read_frame(left) {
                Some(f) => {
                    let done = stop(&f);
                    frames.push(f);
                    if done {
                        break;
                    }
                }
                None => break,
            }
        }
        frames
    }
}

/// The resident set of process `pid`, in KiB.
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
