//! Socket I/O helpers for the proxy: timed reads and writes with owned buffers,
//! and the body pump that streams a message body between two sockets.
//!
//! monoio passes buffer ownership to the kernel for each operation, so the
//! helpers take the connection's buffer out, run the operation, and put it back;
//! buffers are reused for the connection's lifetime. On a timeout the in-flight
//! operation is cancelled and its buffer is lost with it, so a connection that
//! timed out is always closed, never reused.
//!
//! [`split`] lends a stream's read and write sides to two futures at once
//! (a full-duplex exchange: a gRPC call's request streams while its response
//! does).

use crate::http::chunked::{
    write_chunk_header, write_last_chunk, ChunkedDecoder, Step, LAST_CHUNK,
};
use crate::http::codec::BodyFraming;
use bytes::{Buf, BytesMut};
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Split};
use monoio::BufResult;
use std::io;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// The read side of a stream lent by [`split`].
pub struct ReadHalf<'a, T> {
    stream: *mut T,
    _lent: PhantomData<&'a mut T>,
}

/// The write side of a stream lent by [`split`].
pub struct WriteHalf<'a, T> {
    stream: *mut T,
    _lent: PhantomData<&'a mut T>,
}

/// Lends `stream`'s read and write sides separately, for as long as the
/// borrow lasts (monoio's own split takes the stream by value). The halves
/// are `!Send`: both stay on the shard's thread.
pub fn split<T: Split>(stream: &mut T) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
    let stream: *mut T = stream;
    (
        ReadHalf {
            stream,
            _lent: PhantomData,
        },
        WriteHalf {
            stream,
            _lent: PhantomData,
        },
    )
}

impl<T: AsyncReadRent> AsyncReadRent for ReadHalf<'_, T> {
    async fn read<B: IoBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: the pointer comes from a `&mut T` borrowed for `'_`, so the
        // stream outlives this half and nothing else uses it meanwhile but the
        // other half; `T: Split` promises its reads and writes touch
        // independent state, so the read half's `&mut` never aliases what
        // the write half changes.
        unsafe { &mut *self.stream }.read(buf).await
    }

    async fn readv<B: IoVecBufMut>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: as in `read`.
        unsafe { &mut *self.stream }.readv(buf).await
    }
}

impl<T: AsyncWriteRent> AsyncWriteRent for WriteHalf<'_, T> {
    async fn write<B: IoBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: as in `ReadHalf::read`, for the write side.
        unsafe { &mut *self.stream }.write(buf).await
    }

    async fn writev<B: IoVecBuf>(&mut self, buf: B) -> BufResult<usize, B> {
        // SAFETY: as in `ReadHalf::read`, for the write side.
        unsafe { &mut *self.stream }.writev(buf).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        // SAFETY: as in `ReadHalf::read`, for the write side.
        unsafe { &mut *self.stream }.flush().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        // SAFETY: as in `ReadHalf::read`, for the write side.
        unsafe { &mut *self.stream }.shutdown().await
    }
}

/// Outcome of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Bytes arrived.
    Data,
    /// The peer closed its side.
    Eof,
    /// Nothing arrived in time.
    Timeout,
    /// The socket failed (reset and the like).
    Failed,
}

/// Reads more bytes into `buf` (appending), waiting at most `timeout`.
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    timeout: Duration,
) -> ReadOutcome {
    read_sized(stream, buf, timeout, HEAD_READ).await
}

/// Reads the first bytes of a request on an idle connection into `buf`: the
/// room made is small, since an idle connection holds its read buffer for as
/// long as it waits (thousands of idle connections stay cheap); most request
/// heads fit, and a larger one grows the buffer on the next read.
pub async fn read_idle<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    timeout: Duration,
) -> ReadOutcome {
    read_sized(stream, buf, timeout, IDLE_READ).await
}

/// Room made for the read that waits for a request on an idle connection.
const IDLE_READ: usize = 2 * 1024;
/// Room made for a read of request and response heads (and small bodies).
const HEAD_READ: usize = 16 * 1024;
/// Buffers larger than this (a body went through them) are let go when their
/// connection goes idle, so idle connections do not keep body-sized buffers.
pub const IDLE_BUFFER_MAX: usize = 32 * 1024;
/// Room made for a read while streaming a body: fewer, larger reads and writes
/// for big bodies (one read buffer of this size per busy connection).
pub const BODY_READ: usize = 64 * 1024;
/// Room made for a read from an HTTP/2 stream: one DATA frame of the
/// default size (16 KiB) and its chunk framing.
pub const FRAME_READ: usize = 16 * 1024 + 64;

/// The instant `after` from now, on the coarse clock
/// ([`coarse_now`](crate::clock::coarse_now)): what a read or write waits for
/// at most. A timeout too large to add waits for about thirty years.
pub fn deadline_in(after: Duration) -> monoio::time::Instant {
    let now = crate::clock::coarse_now();
    let at = now
        .checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
    monoio::time::Instant::from_std(at)
}

/// Reads more bytes into `buf`, making room for at least `room` bytes first.
async fn read_sized<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut BytesMut,
    timeout: Duration,
    room: usize,
) -> ReadOutcome {
    if buf.capacity() - buf.len() < room / 4 {
        buf.reserve(room);
    }
    // monoio reads into a buffer from its start; read into the spare capacity
    // instead, so bytes not consumed yet (a partial head, a split chunk-size
    // line) are kept.
    let len = buf.len();
    let owned = std::mem::take(buf).slice_mut(len..);
    match monoio::time::timeout_at(deadline_in(timeout), stream.read(owned)).await {
        Ok((res, b)) => {
            *buf = b.into_inner();
            match res {
                Ok(0) => ReadOutcome::Eof,
                Ok(_) => ReadOutcome::Data,
                Err(_) => ReadOutcome::Failed,
            }
        }
        Err(_) => ReadOutcome::Timeout,
    }
}

/// A buffer written whole and then reused empty.
pub trait ReusableBuf: monoio::buf::IoBuf + Default {
    /// Empties it, keeping its capacity.
    fn clear_keep(&mut self);
}

impl ReusableBuf for Vec<u8> {
    fn clear_keep(&mut self) {
        self.clear();
    }
}

impl ReusableBuf for BytesMut {
    fn clear_keep(&mut self) {
        self.clear();
    }
}

/// Writes all of `buf` and clears it, waiting at most `timeout`. The buffer's
/// allocation comes back for reuse unless the write timed out.
pub async fn write_out<S: AsyncWriteRent, B: ReusableBuf>(
    stream: &mut S,
    buf: &mut B,
    timeout: Duration,
) -> io::Result<()> {
    if buf.bytes_init() == 0 {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    match monoio::time::timeout_at(deadline_in(timeout), stream.write_all(owned)).await {
        Ok((res, mut b)) => {
            b.clear_keep();
            *buf = b;
            res.map(|_| ())
        }
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// How the pump re-frames the body for the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Payload bytes as they are (Content-Length or close-delimited).
    Raw,
    /// Chunked transfer coding.
    Chunked,
}

/// Why a body could not be streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpError {
    /// The source closed before the body ended.
    SourceClosed,
    /// The source stalled longer than its timeout.
    SourceTimeout,
    /// The source socket failed.
    SourceFailed,
    /// The source sent invalid chunked framing.
    Framing,
    /// The body exceeded the size limit.
    TooLarge,
    /// Writing to the destination failed or timed out.
    Destination,
}

/// Timeouts and limits of one pump.
#[derive(Debug, Clone, Copy)]
pub struct PumpLimits {
    /// Longest pause reading the source.
    pub read_timeout: Duration,
    /// Longest pause writing the destination.
    pub write_timeout: Duration,
    /// Largest payload (0: unlimited).
    pub max_bytes: u64,
    /// When the whole body must have arrived (a request body's total upload time).
    pub deadline: Option<Instant>,
    /// Room made in the read buffer for each read: [`BODY_READ`] for a
    /// socket; [`FRAME_READ`] for an HTTP/2 stream, whose reads bring one
    /// DATA frame each (a stream's buffers serve one exchange: a large one
    /// would be allocated, and faulted in, per request).
    pub read_room: usize,
}

/// Keeps the first bytes of the payload a pump carries, for a call whose
/// body is captured (sampled; `None` costs one branch per buffer).
pub struct Tap<'a> {
    /// Where the bytes go.
    pub buf: &'a mut Vec<u8>,
    /// How many to keep at most.
    pub max: usize,
}

impl Tap<'_> {
    /// Keeps what fits of `bytes`.
    pub fn keep(&mut self, bytes: &[u8]) {
        let room = self.max.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Flush threshold for the re-framing buffer.
const FLUSH_AT: usize = 64 * 1024;

/// What a pump carried.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Payload bytes.
    pub bytes: u64,
    /// A chunked body's trailer section, as the decoder kept it (forwarded
    /// when the destination is chunked too).
    pub trailers: Vec<u8>,
}

/// Streams one body from `src` (with already-read bytes in `sbuf`) to `dst`.
/// Returns the payload size and trailers. Memory stays flat: at most one read buffer and
/// one re-framing buffer are held, whatever the body size. `tap` keeps the
/// first payload bytes (de-chunked) for body capture.
#[allow(clippy::too_many_arguments)]
pub async fn pump<R: AsyncReadRent, W: AsyncWriteRent>(
    src: &mut R,
    sbuf: &mut BytesMut,
    dst: &mut W,
    out: &mut Vec<u8>,
    framing: BodyFraming,
    encoding: Encoding,
    limits: PumpLimits,
    mut tap: Option<Tap<'_>>,
) -> Result<Pumped, PumpError> {
    let mut total: u64 = 0;
    let mut remaining = match framing {
        BodyFraming::None => return Ok(Pumped::default()),
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    let mut decoder = ChunkedDecoder::default();
    let check = |total: u64| {
        if limits.max_bytes > 0 && total > limits.max_bytes {
            Err(PumpError::TooLarge)
        } else {
            Ok(())
        }
    };
    loop {
        let mut finished = false;
        if !sbuf.is_empty() {
            match framing {
                BodyFraming::Length(_) | BodyFraming::UntilClose => {
                    let take = if let BodyFraming::Length(_) = framing {
                        remaining.min(sbuf.len() as u64) as usize
                    } else {
                        sbuf.len()
                    };
                    total += take as u64;
                    check(total)?;
                    if let Some(t) = tap.as_mut() {
                        t.keep(&sbuf[..take]);
                    }
                    if encoding == Encoding::Raw && take == sbuf.len() && out.is_empty() {
                        // Zero-copy: the whole read buffer is payload.
                        write_out(dst, sbuf, limits.write_timeout)
                            .await
                            .map_err(|_| PumpError::Destination)?;
                    } else {
                        emit(out, &sbuf[..take], encoding);
                        sbuf.advance(take);
                    }
                    if let BodyFraming::Length(_) = framing {
                        remaining -= take as u64;
                        finished = remaining == 0;
                    }
                }
                BodyFraming::Chunked => loop {
                    match decoder.step(sbuf).map_err(|_| PumpError::Framing)? {
                        Step::Progress { consumed, data } => {
                            total += data.len() as u64;
                            check(total)?;
                            if !data.is_empty() {
                                if let Some(t) = tap.as_mut() {
                                    t.keep(&sbuf[data.clone()]);
                                }
                                emit(out, &sbuf[data], encoding);
                            }
                            sbuf.advance(consumed);
                            if out.len() >= FLUSH_AT {
                                write_out(dst, out, limits.write_timeout)
                                    .await
                                    .map_err(|_| PumpError::Destination)?;
                            }
                        }
                        Step::NeedMore => break,
                        Step::Done { consumed } => {
                            sbuf.advance(consumed);
                            finished = true;
                            break;
                        }
                    }
                },
                BodyFraming::None => finished = true,
            }
        } else if let BodyFraming::Length(0) = framing {
            finished = true;
        }
        if finished || (matches!(framing, BodyFraming::Length(_)) && remaining == 0) {
            if encoding == Encoding::Chunked {
                write_last_chunk(out, decoder.trailers());
            }
            write_out(dst, out, limits.write_timeout)
                .await
                .map_err(|_| PumpError::Destination)?;
            return Ok(Pumped {
                bytes: total,
                trailers: decoder.take_trailers(),
            });
        }
        if out.len() >= FLUSH_AT || (!out.is_empty() && sbuf.is_empty()) {
            write_out(dst, out, limits.write_timeout)
                .await
                .map_err(|_| PumpError::Destination)?;
        }
        let wait = match limits.deadline {
            None => limits.read_timeout,
            Some(d) => {
                let left = d.saturating_duration_since(crate::clock::coarse_now());
                if left.is_zero() {
                    return Err(PumpError::SourceTimeout);
                }
                left.min(limits.read_timeout)
            }
        };
        match read_sized(src, sbuf, wait, limits.read_room).await {
            ReadOutcome::Data => {}
            ReadOutcome::Eof if framing == BodyFraming::UntilClose => {
                if encoding == Encoding::Chunked {
                    out.extend_from_slice(LAST_CHUNK);
                }
                write_out(dst, out, limits.write_timeout)
                    .await
                    .map_err(|_| PumpError::Destination)?;
                return Ok(Pumped {
                    bytes: total,
                    trailers: Vec::new(),
                });
            }
            ReadOutcome::Eof => return Err(PumpError::SourceClosed),
            ReadOutcome::Timeout => return Err(PumpError::SourceTimeout),
            ReadOutcome::Failed => return Err(PumpError::SourceFailed),
        }
    }
}

fn emit(out: &mut Vec<u8>, data: &[u8], encoding: Encoding) {
    match encoding {
        Encoding::Raw => out.extend_from_slice(data),
        Encoding::Chunked => {
            write_chunk_header(out, data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Reads a whole request body (`Content-Length` or chunked) into memory, for a
/// phase that needs all of it (the LLM gateway parses JSON): at most `limit`
/// bytes, at most `idle` between reads, all of it by `deadline`. `rbuf` holds
/// what already arrived; bytes after the body stay in it.
pub async fn read_body<S: AsyncReadRent>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    framing: BodyFraming,
    limit: u64,
    idle: Duration,
    deadline: Instant,
) -> Result<Vec<u8>, PumpError> {
    let mut body = Vec::new();
    match framing {
        BodyFraming::Length(n) => {
            if n > limit {
                return Err(PumpError::TooLarge);
            }
            let n = n as usize;
            body.reserve(n);
            while body.len() < n {
                if rbuf.is_empty() {
                    read_body_more(stream, rbuf, idle, deadline).await?;
                }
                let take = (n - body.len()).min(rbuf.len());
                body.extend_from_slice(&rbuf[..take]);
                rbuf.advance(take);
            }
        }
        BodyFraming::Chunked => {
            let mut dec = ChunkedDecoder::default();
            loop {
                if !rbuf.is_empty() {
                    match dec.step(rbuf).map_err(|_| PumpError::Framing)? {
                        Step::Progress { consumed, data } => {
                            body.extend_from_slice(&rbuf[data]);
                            rbuf.advance(consumed);
                            if body.len() as u64 > limit {
                                return Err(PumpError::TooLarge);
                            }
                            continue;
                        }
                        Step::Done { consumed } => {
                            rbuf.advance(consumed);
                            break;
                        }
                        Step::NeedMore => {}
                    }
                }
                read_body_more(stream, rbuf, idle, deadline).await?;
            }
        }
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
    Ok(body)
}

/// Reads until `rbuf` holds at least `n` bytes (a small request body whose
/// length is declared), with at most `idle` of silence per read and never
/// past `deadline`.
pub async fn read_at_least<S: AsyncReadRent>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    n: usize,
    idle: Duration,
    deadline: Instant,
) -> Result<(), PumpError> {
    while rbuf.len() < n {
        read_body_more(stream, rbuf, idle, deadline).await?;
    }
    Ok(())
}

/// Reads more of a request body: at most `idle` of silence, and never past `deadline`.
async fn read_body_more<S: AsyncReadRent>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    idle: Duration,
    deadline: Instant,
) -> Result<(), PumpError> {
    let left = deadline.saturating_duration_since(crate::clock::coarse_now());
    if left.is_zero() {
        return Err(PumpError::SourceTimeout);
    }
    match read_more(stream, rbuf, idle.min(left)).await {
        ReadOutcome::Data => Ok(()),
        ReadOutcome::Timeout => Err(PumpError::SourceTimeout),
        ReadOutcome::Eof => Err(PumpError::SourceClosed),
        ReadOutcome::Failed => Err(PumpError::SourceFailed),
    }
}
