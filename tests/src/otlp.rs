//! An in-process OTLP/HTTP receiver (an OpenTelemetry Collector's stand-in): a `TcpListener` on an
//! ephemeral port, a thread per connection that parses HTTP/1.1 requests,
//! decodes their protobuf bodies and reports them on a channel, and answers
//! as the test scripted (status, framing, closing, stalling).

use crossbeam_channel::{unbounded, Receiver, Sender};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    /// This status, with a small `Content-Length` body.
    Status(u16),
    /// 200 with a chunked body (and a trailer).
    Chunked,
    /// 200, then the receiver closes the connection without saying so.
    SilentClose,
}

/// What the receiver saw.
#[derive(Debug)]
pub enum Event {
    /// A connection was accepted.
    Accepted,
    /// A trace export request.
    Traces {
        /// Its headers, names lowercase.
        headers: Vec<(String, String)>,
        /// Its body, decoded.
        request: ExportTraceServiceRequest,
    },
    /// A log export request.
    Logs {
        /// Its headers, names lowercase.
        headers: Vec<(String, String)>,
        /// Its body, decoded.
        request: ExportLogsServiceRequest,
    },
}

/// A running receiver.
pub struct MockCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw, in order.
    pub events: Receiver<Event>,
    /// Answers for the next requests, in order; 200 when none is queued.
    pub replies: Sender<Reply>,
}

impl MockCollector {
    /// Starts a receiver; with `stall`, each connection is accepted and then
    /// left unread until `stall` yields (or is closed).
    pub fn start(stall: Option<Receiver<()>>) -> MockCollector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events_tx, events) = unbounded();
        let (replies, replies_rx) = unbounded();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                if events_tx.send(Event::Accepted).is_err() {
                    return;
                }
                let events = events_tx.clone();
                let replies = replies_rx.clone();
                let stall = stall.clone();
                std::thread::spawn(move || {
                    if let Some(stall) = stall {
                        let _ = stall.recv();
                    }
                    serve(stream, &events, &replies);
                });
            }
        });
        MockCollector {
            addr,
            events,
            replies,
        }
    }

    /// The base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Collects the spans and log records of the exports that arrive until
    /// `done` says what came so far is enough (at most 20 s, then panics with
    /// what came).
    pub fn collect(
        &self,
        done: impl Fn(&[Span], &[LogRecord]) -> bool,
    ) -> (Vec<Span>, Vec<LogRecord>) {
        let (mut spans, mut logs) = (Vec::new(), Vec::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done(&spans, &logs) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Traces { request, .. }) => spans.extend(
                    request
                        .resource_spans
                        .into_iter()
                        .flat_map(|r| r.scope_spans)
                        .flat_map(|s| s.spans),
                ),
                Ok(Event::Logs { request, .. }) => logs.extend(
                    request
                        .resource_logs
                        .into_iter()
                        .flat_map(|r| r.scope_logs)
                        .flat_map(|s| s.log_records),
                ),
                Ok(Event::Accepted) => {}
                Err(_) => panic!(
                    "the exports so far are not enough: {} spans {:#?}, {} log records",
                    spans.len(),
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    logs.len()
                ),
            }
        }
        (spans, logs)
    }

    /// The next event, waiting at most 10 s.
    pub fn next(&self) -> Event {
        self.events
            .recv_timeout(Duration::from_secs(10))
            .expect("an event from the receiver")
    }
}

fn serve(mut stream: TcpStream, events: &Sender<Event>, replies: &Receiver<Reply>) {
    let mut buf = Vec::new();
    loop {
        // Read a head.
        let (path, headers, body_len, head_len) = loop {
            let mut parsed_headers = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut parsed_headers);
            if let Ok(httparse::Status::Complete(len)) = request.parse(&buf) {
                let headers: Vec<(String, String)> = request
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let body_len = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse::<usize>().ok())
                    .expect("content-length");
                break (
                    request.path.expect("path").to_string(),
                    headers,
                    body_len,
                    len,
                );
            }
            if !read_more(&mut stream, &mut buf) {
                return;
            }
        };
        while buf.len() < head_len + body_len {
            if !read_more(&mut stream, &mut buf) {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..head_len + body_len).skip(head_len).collect();
        let event = match path.as_str() {
            "/v1/traces" => Event::Traces {
                headers,
                request: ExportTraceServiceRequest::decode(&body[..]).expect("trace request"),
            },
            "/v1/logs" => Event::Logs {
                headers,
                request: ExportLogsServiceRequest::decode(&body[..]).expect("logs request"),
            },
            other => panic!("unexpected path {other}"),
        };
        let _ = events.send(event);
        let reply = replies.try_recv().unwrap_or(Reply::Status(200));
        let answer = match reply {
            Reply::Status(code) => {
                format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
                )
            }
            Reply::Chunked => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                               3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-Trailer: 1\r\n\r\n"
                .to_string(),
            Reply::SilentClose => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string(),
        };
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
        if matches!(reply, Reply::SilentClose) {
            return;
        }
    }
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}
