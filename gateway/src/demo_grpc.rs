//! The built-in demo gRPC upstream (`kind = "grpc"`): a small gRPC server over
//! HTTP/2 cleartext (h2c, prior knowledge) for examples, tests and benchmarks.
//!
//! It serves:
//! - `grpc.health.v1.Health/Check`: SERVING for the service `""` and for
//!   `hypergate.demo.Echo`, NOT_FOUND for any other;
//! - `grpc.health.v1.Health/Watch`: one status message, then the stream stays
//!   open until the client cancels or the connection closes;
//! - `hypergate.demo.Echo/Echo` (unary): the request message back, unchanged;
//! - `hypergate.demo.Echo/Stream` (bidirectional): every message back as soon
//!   as it arrives, then OK when the client half-closes;
//! - any other path: UNIMPLEMENTED, trailers-only.
//!
//! How it works:
//! 1. One thread runs a monoio runtime; the listener is bound before the
//!    thread starts, so a taken port fails the gateway's start.
//! 2. Each connection is a task: the `h2` crate speaks HTTP/2 over the socket
//!    through `monoio-compat`'s adapter, and accepting streams also drives the
//!    connection's frames in and out.
//! 3. Each stream is a task: it checks the content type (`application/grpc*`,
//!    else HTTP 415), reads length-prefixed messages (uncompressed, else
//!    UNIMPLEMENTED; at most 8 MiB, else RESOURCE_EXHAUSTED), releasing the
//!    bytes to the client's flow-control window as it takes them, and answers
//!    HEADERS, DATA (as the client's window allows), then TRAILERS with
//!    `grpc-status`.
//!
//! `fail_ratio` answers that share of Echo calls (both methods, spread
//! evenly) with UNAVAILABLE; every response carries `x-demo-upstream: <name>`.
//! Not a data-plane component: it shares nothing with the shards.
//!
//! Depends on `config` (the demo's settings) and, outside this crate, `h2`,
//! `monoio`, `monoio-compat` and `hypergate-core` (the `grpc-message` encoder).

use crate::config::raw::DemoUpstreamConfig;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::Duration;

/// The demo's own service; the health service reports it SERVING too.
const ECHO_SERVICE: &[u8] = b"hypergate.demo.Echo";

/// Largest request message accepted.
const MAX_MESSAGE: usize = 8 << 20;

/// A gRPC message's prefix: compressed flag (1 byte), length (4 bytes, big-endian).
const PREFIX: usize = 5;

/// Each stream's receive window (the connection's is four times it), so a
/// 1 MiB echo needs few window-update round trips.
const STREAM_WINDOW: u32 = 1 << 20;

/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The gRPC status codes this server answers with.
mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const NOT_FOUND: u32 = 5;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// `HealthCheckResponse.ServingStatus` values.
mod serving_status {
    pub const SERVING: u8 = 1;
    /// What `Watch` reports for a service it does not know (`Check` answers NOT_FOUND).
    pub const SERVICE_UNKNOWN: u8 = 3;
}

/// Why a call ends without OK.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// The call is answered with this gRPC status.
    #[error("grpc-status {code}: {message}")]
    Status { code: u32, message: String },
    /// The stream or the connection is gone (the client cancelled, reset or
    /// hung up): nothing more can be sent.
    #[error(transparent)]
    Stream(#[from] h2::Error),
}

fn status(code: u32, message: impl Into<String>) -> CallError {
    CallError::Status {
        code,
        message: message.into(),
    }
}

/// What every stream of one demo upstream shares (all on its one thread).
struct Demo {
    /// Its name, in injected failures' messages.
    name: String,
    /// The same, as the `x-demo-upstream` value.
    header: HeaderValue,
    /// Fail every n-th Echo call.
    fail_every: Option<u64>,
    echo_calls: Cell<u64>,
}

impl Demo {
    /// Counts an Echo call; every `fail_every`-th fails with UNAVAILABLE.
    fn injected_failure(&self) -> Result<(), CallError> {
        let n = self.echo_calls.get() + 1;
        self.echo_calls.set(n);
        if self.fail_every.is_some_and(|every| n % every == 0) {
            return Err(status(
                code::UNAVAILABLE,
                format!("{}: injected failure", self.name),
            ));
        }
        Ok(())
    }
}

/// Binds `cfg.address` and serves on a thread of its own; returns once it
/// listens. `fail_every`: fail every n-th Echo call with UNAVAILABLE.
pub fn start(cfg: &DemoUpstreamConfig, fail_every: Option<u64>) -> io::Result<()> {
    let header = HeaderValue::from_bytes(cfg.name.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "name {:?} cannot be sent in a header (control characters)",
                cfg.name
            ),
        )
    })?;
    let listener = listen(&cfg.address)?;
    // The runtime's epoll driver needs a non-blocking socket (io_uring does not mind).
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let demo = Demo {
        name: cfg.name.clone(),
        header,
        fail_every,
        echo_calls: Cell::new(0),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("demo-{}", cfg.name))
        .spawn(move || run(listener, demo, ready_tx))?;
    ready_rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the demo gRPC thread ended before it listened",
        ))
    })?;
    tracing::info!(name = %cfg.name, %address, "demo gRPC upstream listening");
    Ok(())
}

/// The demo's thread: a monoio runtime (io_uring where the kernel offers it,
/// epoll otherwise) that serves until the process ends. Says on `ready`
/// whether it could start.
fn run(
    listener: std::net::TcpListener,
    demo: Demo,
    ready: std::sync::mpsc::SyncSender<io::Result<()>>,
) {
    let runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match monoio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let demo = Rc::new(demo);
        loop {
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    monoio::spawn(serve_connection(stream, demo.clone()));
                }
                Err(_) => monoio::time::sleep(ACCEPT_BACKOFF).await,
            }
        }
    });
}

/// Serves one HTTP/2 connection until it closes: a task per stream.
async fn serve_connection(stream: monoio::net::TcpStream, demo: Rc<Demo>) {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(STREAM_WINDOW * 4);
    let io = monoio_compat::StreamWrapper::new(stream);
    let Ok(mut connection) = builder.handshake::<_, Bytes>(io).await else {
        return;
    };
    // Accepting also drives the connection: every stream's frames go in and out here.
    while let Some(Ok((request, respond))) = connection.accept().await {
        monoio::spawn(serve_stream(request, respond, demo.clone()));
    }
}

/// Serves one call.
async fn serve_stream(request: Request<RecvStream>, respond: SendResponse<Bytes>, demo: Rc<Demo>) {
    let mut reply = Reply {
        respond,
        send: None,
        name: demo.header.clone(),
    };
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        let _ = reply.refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        return;
    }
    let (head, body) = request.into_parts();
    let mut messages = Messages {
        body,
        buffered: BytesMut::new(),
    };
    let outcome = match head.uri.path() {
        "/grpc.health.v1.Health/Check" => check(&mut messages, &mut reply).await,
        "/grpc.health.v1.Health/Watch" => watch(&mut messages, &mut reply).await,
        "/hypergate.demo.Echo/Echo" => match demo.injected_failure() {
            Ok(()) => echo(&mut messages, &mut reply).await,
            Err(e) => Err(e),
        },
        "/hypergate.demo.Echo/Stream" => match demo.injected_failure() {
            Ok(()) => echo_stream(&mut messages, &mut reply).await,
            Err(e) => Err(e),
        },
        path => Err(status(
            code::UNIMPLEMENTED,
            format!("unknown method {path}"),
        )),
    };
    let sent = match outcome {
        Ok(()) => reply.finish(code::OK, ""),
        Err(CallError::Status { code, message }) => reply.finish(code, &message),
        Err(CallError::Stream(e)) => Err(e),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "demo gRPC call ended by the client or the connection");
    }
}

/// `grpc.health.v1.Health/Check`.
async fn check(messages: &mut Messages, reply: &mut Reply) -> Result<(), CallError> {
    let request = messages.only().await?;
    let service = health_service(&request)?;
    if !known_service(service) {
        return Err(status(
            code::NOT_FOUND,
            format!("unknown service {:?}", String::from_utf8_lossy(service)),
        ));
    }
    reply
        .message(&health_response(serving_status::SERVING))
        .await?;
    Ok(())
}

/// `grpc.health.v1.Health/Watch`: the status now, then nothing until the
/// client cancels (the service's status never changes).
async fn watch(messages: &mut Messages, reply: &mut Reply) -> Result<(), CallError> {
    let request = messages.only().await?;
    let status = if known_service(health_service(&request)?) {
        serving_status::SERVING
    } else {
        serving_status::SERVICE_UNKNOWN
    };
    let send = reply.message(&health_response(status)).await?;
    let reason = std::future::poll_fn(|cx| send.poll_reset(cx)).await?;
    Err(CallError::Stream(reason.into()))
}

/// `hypergate.demo.Echo/Echo`: the request message back.
async fn echo(messages: &mut Messages, reply: &mut Reply) -> Result<(), CallError> {
    let request = messages.only().await?;
    reply.message(&request).await?;
    Ok(())
}

/// `hypergate.demo.Echo/Stream`: each request message back as it arrives.
async fn echo_stream(messages: &mut Messages, reply: &mut Reply) -> Result<(), CallError> {
    while let Some(message) = messages.next().await? {
        reply.message(&message).await?;
    }
    Ok(())
}

fn known_service(service: &[u8]) -> bool {
    service.is_empty() || service == ECHO_SERVICE
}

/// `HealthCheckResponse { status }`: field 1, wire type 0 (varint); the
/// values used fit one byte (SERVING is `08 01`).
fn health_response(status: u8) -> [u8; 2] {
    [0x08, status]
}

/// The `service` of a `HealthCheckRequest { string service = 1; }`, decoded by
/// hand: the message is one length-delimited field, so no protobuf crate is
/// needed. Fields it does not know are skipped, as protobuf requires, and the
/// last `service` wins.
fn health_service(mut message: &[u8]) -> Result<&[u8], CallError> {
    let malformed = || status(code::INVALID_ARGUMENT, "malformed HealthCheckRequest");
    let mut service: &[u8] = b"";
    while !message.is_empty() {
        let key = varint(&mut message).ok_or_else(malformed)?;
        let skip = match key & 7 {
            0 => varint(&mut message).map(|_| 0),
            1 => Some(8),
            2 => varint(&mut message).and_then(|len| usize::try_from(len).ok()),
            5 => Some(4),
            _ => None,
        };
        let value = skip
            .and_then(|len| message.get(..len))
            .ok_or_else(malformed)?;
        message = &message[value.len()..];
        if key == (1 << 3) | 2 {
            service = value;
        }
    }
    Ok(service)
}

/// Takes a base-128 varint off the front of `input`.
fn varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The request's length-prefixed messages, cut from its DATA frames.
struct Messages {
    body: RecvStream,
    /// Received bytes not yet taken: at most one message and one frame.
    buffered: BytesMut,
}

impl Messages {
    /// The next message; `None` once the client half-closed.
    async fn next(&mut self) -> Result<Option<Bytes>, CallError> {
        loop {
            if let Some(message) = self.cut()? {
                return Ok(Some(message));
            }
            match self.body.data().await {
                Some(Ok(data)) => {
                    // The bytes are ours now: the client may send more.
                    let _ = self.body.flow_control().release_capacity(data.len());
                    self.buffered.extend_from_slice(&data);
                }
                Some(Err(e)) => return Err(e.into()),
                None if self.buffered.is_empty() => return Ok(None),
                None => return Err(status(code::INTERNAL, "the request ended inside a message")),
            }
        }
    }

    /// A unary call's one request message, once the client half-closed.
    async fn only(&mut self) -> Result<Bytes, CallError> {
        let message = self
            .next()
            .await?
            .ok_or_else(|| status(code::INTERNAL, "no request message"))?;
        if self.next().await?.is_some() {
            return Err(status(
                code::INTERNAL,
                "more than one request message in a unary call",
            ));
        }
        Ok(message)
    }

    /// The first buffered message, if it is all there; refuses a compressed
    /// or oversized one as soon as its prefix is in.
    fn cut(&mut self) -> Result<Option<Bytes>, CallError> {
        let Some(prefix) = self.buffered.get(..PREFIX) else {
            return Ok(None);
        };
        if prefix[0] != 0 {
            return Err(status(
                code::UNIMPLEMENTED,
                "compressed messages are not supported",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(status(
                code::RESOURCE_EXHAUSTED,
                format!("a message of {len} bytes is over the limit of {MAX_MESSAGE}"),
            ));
        }
        if self.buffered.len() < PREFIX + len {
            self.buffered.reserve(PREFIX + len - self.buffered.len());
            return Ok(None);
        }
        self.buffered.advance(PREFIX);
        Ok(Some(self.buffered.split_to(len).freeze()))
    }
}

/// The response side of one call: HEADERS with the first message, then DATA,
/// then TRAILERS; trailers-only when no message was sent.
struct Reply {
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    /// The `x-demo-upstream` value.
    name: HeaderValue,
}

impl Reply {
    fn head(&self, status: StatusCode) -> Response<()> {
        let mut head = Response::new(());
        *head.status_mut() = status;
        head.headers_mut()
            .insert("x-demo-upstream", self.name.clone());
        if status == StatusCode::OK {
            head.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        }
        head
    }

    /// Answers with a bare HTTP status and no body (not a gRPC request).
    fn refuse(&mut self, status: StatusCode) -> Result<(), h2::Error> {
        let head = self.head(status);
        self.respond.send_response(head, true).map(drop)
    }

    /// Sends one message (after the HEADERS, the first time) as the client's
    /// window allows; returns the stream.
    async fn message(&mut self, message: &[u8]) -> Result<&mut SendStream<Bytes>, h2::Error> {
        let send = match self.send.take() {
            Some(send) => send,
            None => {
                let head = self.head(StatusCode::OK);
                self.respond.send_response(head, false)?
            }
        };
        let send = self.send.insert(send);
        let mut framed = BytesMut::with_capacity(PREFIX + message.len());
        framed.put_u8(0);
        framed.put_u32(message.len() as u32);
        framed.extend_from_slice(message);
        let mut data = framed.freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = std::future::poll_fn(|cx| send.poll_capacity(cx)).await;
            let n = granted.ok_or(h2::Reason::STREAM_CLOSED)??;
            if n > 0 {
                send.send_data(data.split_to(n.min(data.len())), false)?;
            }
        }
        Ok(send)
    }

    /// Ends the call with a gRPC status: in TRAILERS after messages, else
    /// trailers-only (HEADERS with END_STREAM).
    fn finish(mut self, code: u32, message: &str) -> Result<(), h2::Error> {
        let mut fields = HeaderMap::new();
        fields.insert("grpc-status", HeaderValue::from(code));
        if !message.is_empty() {
            let mut encoded = Vec::with_capacity(message.len());
            hypergate_core::http::percent_encode(&mut encoded, message.as_bytes(), |b| {
                (0x20..0x7f).contains(&b) && b != b'%'
            });
            // Printable ASCII once encoded, so always a valid header value.
            if let Ok(value) = HeaderValue::from_bytes(&encoded) {
                fields.insert("grpc-message", value);
            }
        }
        match self.send.take() {
            Some(mut send) => send.send_trailers(fields),
            None => {
                let mut head = self.head(StatusCode::OK);
                head.headers_mut().extend(fields);
                self.respond.send_response(head, true).map(drop)
            }
        }
    }
}

/// A listener on `address` with a deep accept queue: a proxy that opens a
/// connection per call (nginx's `grpc_pass`) opens hundreds at once, and the
/// standard library's 128 would overflow (the benchmark saw resets).
fn listen(address: &str) -> io::Result<std::net::TcpListener> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(address)?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{address}: no address"),
            )
        })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_requests_decode_by_hand() {
        assert_eq!(health_service(b"").ok(), Some(&b""[..]));
        let echo = [&[0x0a, 19][..], ECHO_SERVICE].concat();
        assert_eq!(health_service(&echo).ok(), Some(ECHO_SERVICE));
        // An unknown varint field (2) and fixed32 field (3) around it are skipped.
        let padded = [&[0x10, 0x96, 0x01][..], &echo, &[0x1d, 1, 2, 3, 4]].concat();
        assert_eq!(health_service(&padded).ok(), Some(ECHO_SERVICE));
        // A length past the end, a truncated varint, an unknown wire type.
        for bad in [&[0x0a, 5, b'a'][..], &[0x0a, 0x80], &[0x0b]] {
            assert!(
                matches!(health_service(bad), Err(CallError::Status { code: 3, .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn serving_is_08_01() {
        assert_eq!(health_response(serving_status::SERVING), [0x08, 0x01]);
    }

    #[test]
    fn every_nth_echo_call_fails() {
        let demo = Demo {
            name: "v2".into(),
            header: HeaderValue::from_static("v2"),
            fail_every: Some(4),
            echo_calls: Cell::new(0),
        };
        let failed: Vec<bool> = (0..8).map(|_| demo.injected_failure().is_err()).collect();
        assert_eq!(
            failed,
            [false, false, false, true, false, false, false, true]
        );
    }
}
