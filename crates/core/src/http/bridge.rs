//! HTTP/1.1 message bytes to and from HTTP/2 streams (the `h2` crate's).
//!
//! The gateway's pipeline speaks HTTP/1.1 bytes; an HTTP/2 stream on either
//! side (a client's, or one to an `h2`/`h2c` upstream) is bridged into it:
//! - [`BodyReader`]: a stream's DATA frames (and trailers) as HTTP/1.1 body
//!   bytes, chunk-framed when the message has no length;
//! - [`BodySender`]: HTTP/1.1 body bytes (sized, chunked through the codec's
//!   decoder, or until the end) as DATA frames sent as the peer's window
//!   allows, a chunked body's trailers as a TRAILERS frame;
//! - the field rules both directions share ([`connection_specific`],
//!   [`trailer_map`], [`write_header_map`]);
//! - [`bridge_io!`](crate::bridge_io): the monoio read and write traits of a
//!   bridge type, written once for both.
//!
//! Depends on `chunked` (the decoder and trailer rules) and the `h2` crate.

use crate::http::chunked::{forwardable_trailers, write_chunk_header, ChunkedDecoder, Step};
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use monoio::buf::{IoBuf, IoVecBuf, IoVecBufMut};
use std::io;

/// Headers that describe one HTTP/1.1 connection, never an HTTP/2 stream.
pub fn connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// The forwardable fields of a trailer section (as the chunked decoder
/// keeps it) as HTTP/2 trailers (names lowercased).
pub fn trailer_map(trailers: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in forwardable_trailers(trailers) {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&name.to_ascii_lowercase()),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

/// Appends `map`'s fields as HTTP/1.1 header lines.
pub fn write_header_map(out: &mut Vec<u8>, map: &http::HeaderMap) {
    for (name, value) in map {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn reset(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

fn broken(e: h2::Error) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, e)
}

/// A stream's body as HTTP/1.1 bytes.
pub struct BodyReader {
    body: Option<RecvStream>,
    /// Frame DATA as chunks (the message has no `content-length`).
    chunked: bool,
    /// The last chunk was given.
    terminated: bool,
}

impl BodyReader {
    /// Reads `body` (none: the message ended with its head), chunk-framed
    /// when `chunked`.
    pub fn new(body: Option<RecvStream>, chunked: bool) -> Self {
        Self {
            body,
            chunked,
            terminated: !chunked,
        }
    }

    /// The next body bytes; empty at the end. The stream's window reopens as
    /// bytes are taken: a slow reader slows the sender, nothing piles up.
    pub async fn next(&mut self) -> io::Result<Bytes> {
        loop {
            let Some(body) = &mut self.body else {
                if self.terminated {
                    return Ok(Bytes::new());
                }
                self.terminated = true;
                return Ok(Bytes::from_static(b"0\r\n\r\n"));
            };
            match body.data().await {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    if !self.chunked {
                        return Ok(data);
                    }
                    let mut framed = Vec::with_capacity(data.len() + 20);
                    write_chunk_header(&mut framed, data.len());
                    framed.extend_from_slice(&data);
                    framed.extend_from_slice(b"\r\n");
                    return Ok(Bytes::from(framed));
                }
                Some(Err(e)) => return Err(reset(e)),
                None => {
                    // The trailers, if the sender wrote any, end a chunked body.
                    let trailers = body.trailers().await.map_err(reset)?;
                    self.body = None;
                    if let (Some(map), true) = (trailers, self.chunked) {
                        self.terminated = true;
                        let mut last = b"0\r\n".to_vec();
                        write_header_map(&mut last, &map);
                        last.extend_from_slice(b"\r\n");
                        return Ok(Bytes::from(last));
                    }
                }
            }
        }
    }
}

/// How the HTTP/1.1 body being sent is framed.
#[derive(Debug)]
enum Framing {
    /// A sized body: bytes left.
    Length(u64),
    /// A chunked body, through the codec's decoder (bounded size lines and
    /// trailers).
    Chunked(ChunkedDecoder),
    /// A body without a length: it ends when the writer is done.
    Close,
    /// Sent whole; anything more is ignored.
    Done,
}

/// HTTP/1.1 body bytes onto a stream's DATA frames.
pub struct BodySender {
    send: SendStream<Bytes>,
    framing: Framing,
    /// Chunked framing the decoder needs more of (a size line cut in two).
    carry: Vec<u8>,
}

impl BodySender {
    /// Sends a body framed by `content_length` (`None` with `chunked`: chunked;
    /// `None` without: until [`BodySender::end`]).
    pub fn new(send: SendStream<Bytes>, content_length: Option<u64>, chunked: bool) -> Self {
        let framing = if chunked {
            Framing::Chunked(ChunkedDecoder::default())
        } else {
            content_length.map_or(Framing::Close, Framing::Length)
        };
        Self {
            send,
            framing,
            carry: Vec::new(),
        }
    }

    /// Whether the body was sent whole.
    pub fn is_done(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    /// Takes body bytes as the writer writes them.
    pub async fn take(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match &mut self.framing {
                Framing::Length(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    let end = *left == 0;
                    if end {
                        self.framing = Framing::Done;
                    }
                    self.send_data(Bytes::copy_from_slice(&data[..n]), end)
                        .await?;
                    data = &data[n..];
                }
                Framing::Chunked(_) => return self.take_chunked(data).await,
                Framing::Close => {
                    self.send_data(Bytes::copy_from_slice(data), false).await?;
                    data = &[];
                }
                Framing::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// Takes chunked body bytes: de-chunked through the codec's decoder, the
    /// payload sent as DATA, the stream ended with the last chunk.
    async fn take_chunked(&mut self, data: &[u8]) -> io::Result<()> {
        let held;
        let mut input = if self.carry.is_empty() {
            data
        } else {
            self.carry.extend_from_slice(data);
            held = std::mem::take(&mut self.carry);
            held.as_slice()
        };
        while !input.is_empty() {
            let Framing::Chunked(decoder) = &mut self.framing else {
                return Ok(());
            };
            match decoder.step(input).map_err(io::Error::other)? {
                // Bounded by the decoder: a size line or trailer line that
                // grows past its limit is an error, not more to keep.
                Step::NeedMore => {
                    self.carry.extend_from_slice(input);
                    return Ok(());
                }
                Step::Progress { consumed, data } => {
                    if !data.is_empty() {
                        self.send_data(Bytes::copy_from_slice(&input[data]), false)
                            .await?;
                    }
                    input = &input[consumed..];
                }
                Step::Done { .. } => {
                    let trailers = decoder.take_trailers();
                    self.framing = Framing::Done;
                    let map = trailer_map(&trailers);
                    if map.is_empty() {
                        return self.send.send_data(Bytes::new(), true).map_err(broken);
                    }
                    return self.send.send_trailers(map).map_err(broken);
                }
            }
        }
        Ok(())
    }

    /// Ends a body without a length (the writer is done).
    pub fn end(&mut self) {
        if matches!(self.framing, Framing::Close) {
            self.framing = Framing::Done;
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }

    /// Resets the stream (a body the writer never finished: the peer must not
    /// take a truncated one for a whole one).
    pub fn reset(&mut self, reason: h2::Reason) {
        self.send.send_reset(reason);
    }

    /// Sends body bytes as the window allows; `end` ends the stream.
    async fn send_data(&mut self, mut data: Bytes, end: bool) -> io::Result<()> {
        let send = &mut self.send;
        let was_empty = data.is_empty();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
            let n = match granted {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(broken(e)),
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            if n == 0 {
                continue;
            }
            let piece = data.split_to(n.min(data.len()));
            send.send_data(piece, end && data.is_empty())
                .map_err(broken)?;
        }
        if end && was_empty {
            send.send_data(Bytes::new(), true).map_err(broken)?;
        }
        Ok(())
    }
}

/// Copies the start of `from` into `buf`'s iovecs, in order; returns how
/// many bytes (consumed from `from`).
pub fn copy_to_iovecs<T: IoVecBufMut>(from: &mut Bytes, buf: &mut T) -> usize {
    let mut total = 0;
    // SAFETY: `write_iovec_ptr` points at `write_iovec_len` iovecs, each
    // describing writable memory of `buf`; every copy stays within one.
    unsafe {
        let iovecs = std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len());
        for iov in iovecs {
            if from.is_empty() {
                break;
            }
            let n = from.len().min(iov.iov_len);
            std::ptr::copy_nonoverlapping(from.as_ptr(), iov.iov_base.cast::<u8>(), n);
            let _ = from.split_to(n);
            total += n;
        }
        buf.set_init(total);
    }
    total
}

/// Copies the start of `from` into `buf`; returns how many bytes (consumed
/// from `from`).
pub fn copy_to_buf<T: monoio::buf::IoBufMut>(from: &mut Bytes, buf: &mut T) -> usize {
    let n = from.len().min(buf.bytes_total());
    // SAFETY: `write_ptr` points at `bytes_total` writable bytes of `buf`,
    // and `n` is at most that; `from` holds at least `n` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(from.as_ptr(), buf.write_ptr(), n);
        buf.set_init(n);
    }
    let _ = from.split_to(n);
    n
}

/// The bytes a write hands over: `buf`'s initialised bytes.
pub fn written<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: `read_ptr` points at `bytes_init` initialised bytes of `buf`,
    // which the returned slice borrows (so `buf` lives, unmoved, as long).
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// The bytes a vectored write hands over, iovec by iovec.
pub fn written_iovecs<T: IoVecBuf>(buf: &T) -> impl Iterator<Item = &[u8]> {
    // SAFETY: `read_iovec_ptr` points at `read_iovec_len` iovecs of `buf`,
    // borrowed with it.
    let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
    iovecs.iter().map(|iov| {
        // SAFETY: each iovec describes `iov_len` initialised bytes of `buf`,
        // borrowed with it.
        unsafe { std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len) }
    })
}

/// Implements monoio's `AsyncReadRent` and `AsyncWriteRent` for a bridge
/// type: one with a field `pending: bytes::Bytes` (bytes to read),
/// `async fn fill(&mut self) -> std::io::Result<()>` (the next bytes into
/// `pending`; none at the end) and `async fn take(&mut self, data: &[u8]) ->
/// std::io::Result<()>` (what is written). A client's HTTP/2 stream and an
/// upstream's are such types; the caller's crate needs `monoio`.
#[macro_export]
macro_rules! bridge_io {
    ($ty:ty) => {
        impl ::monoio::io::AsyncReadRent for $ty {
            async fn read<T: ::monoio::buf::IoBufMut>(
                &mut self,
                mut buf: T,
            ) -> ::monoio::BufResult<usize, T> {
                if let Err(e) = self.fill().await {
                    return (Err(e), buf);
                }
                let n = $crate::http::bridge::copy_to_buf(&mut self.pending, &mut buf);
                (Ok(n), buf)
            }

            async fn readv<T: ::monoio::buf::IoVecBufMut>(
                &mut self,
                mut buf: T,
            ) -> ::monoio::BufResult<usize, T> {
                if let Err(e) = self.fill().await {
                    return (Err(e), buf);
                }
                let n = $crate::http::bridge::copy_to_iovecs(&mut self.pending, &mut buf);
                (Ok(n), buf)
            }
        }

        impl ::monoio::io::AsyncWriteRent for $ty {
            async fn write<T: ::monoio::buf::IoBuf>(
                &mut self,
                buf: T,
            ) -> ::monoio::BufResult<usize, T> {
                let data = $crate::http::bridge::written(&buf);
                let n = data.len();
                match self.take(data).await {
                    Ok(()) => (Ok(n), buf),
                    Err(e) => (Err(e), buf),
                }
            }

            async fn writev<T: ::monoio::buf::IoVecBuf>(
                &mut self,
                buf: T,
            ) -> ::monoio::BufResult<usize, T> {
                let mut total = 0;
                let mut failed = None;
                for data in $crate::http::bridge::written_iovecs(&buf) {
                    if let Err(e) = self.take(data).await {
                        failed = Some(e);
                        break;
                    }
                    total += data.len();
                }
                match failed {
                    Some(e) => (Err(e), buf),
                    None => (Ok(total), buf),
                }
            }

            async fn flush(&mut self) -> ::std::io::Result<()> {
                Ok(())
            }

            async fn shutdown(&mut self) -> ::std::io::Result<()> {
                Ok(())
            }
        }
    };
}
