//! Upgrades: on a route that allows `websocket`, a `101 Switching Protocols`
//! passes through and the connection becomes a byte tunnel carrying WebSocket
//! frames both ways (tests/tests/security_upgrade.rs covers the refusals).

use hypergate_tests::mock::{ws_client_frame, ws_parse_frame};
use hypergate_tests::util::assert_bytes_eq;
use hypergate_tests::{cluster, preamble, route_all, Action, Conn, MockUpstream, TestGateway};

fn read_frame(conn: &mut Conn, pending: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if let Some((op, payload, used)) = ws_parse_frame(pending) {
            pending.drain(..used);
            return (op, payload);
        }
        let mut b = [0u8; 4096];
        let n = std::io::Read::read(conn.stream(), &mut b).expect("read from tunnel");
        assert!(n > 0, "tunnel closed while waiting for a frame");
        pending.extend_from_slice(&b[..n]);
    }
}

#[test]
fn websocket_upgrade_and_bidirectional_echo() {
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let gw = TestGateway::start(&format!(
        "{}{}{}",
        preamble(1),
        cluster("ws", &[mock.addr()], ""),
        route_all("ws", "ws", "upgrade = [\"websocket\"]")
    ));
    let mut conn = gw.conn();
    conn.send(
        b"GET /chat HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    let head = conn.read_head(false).expect("101 head");
    assert_eq!(
        head.status,
        101,
        "{:?}",
        String::from_utf8_lossy(&head.raw_head)
    );
    assert_eq!(
        head.header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert!(head
        .header("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));

    let seen = mock.last();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert!(seen
        .header("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    // Bytes the upstream wrote together with its 101 come through first.
    let mut pending = conn.leftover().to_vec();
    assert_eq!(
        read_frame(&mut conn, &mut pending),
        (0x1, b"hello".to_vec())
    );

    // Several frames in one write, including a large binary one, echoed in order.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let mut batch = ws_client_frame(0x1, b"one");
    batch.extend(ws_client_frame(0x2, &big));
    batch.extend(ws_client_frame(0x1, b"three"));
    conn.send(&batch);
    assert_eq!(read_frame(&mut conn, &mut pending), (0x1, b"one".to_vec()));
    let (op, payload) = read_frame(&mut conn, &mut pending);
    assert_eq!(op, 0x2);
    assert_bytes_eq(&payload, &big, "binary frame echoed through the tunnel");
    assert_eq!(
        read_frame(&mut conn, &mut pending),
        (0x1, b"three".to_vec())
    );

    conn.send(&ws_client_frame(0x8, &[0x03, 0xe8]));
    assert_eq!(read_frame(&mut conn, &mut pending), (0x8, vec![0x03, 0xe8]));
    assert!(
        conn.closed_within(std::time::Duration::from_secs(5)),
        "tunnel not closed after the upstream closed"
    );
}

#[test]
fn unexpected_101_without_an_upgrade_request_is_a_502() {
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let gw = TestGateway::start(&format!(
        "{}{}{}",
        preamble(1),
        cluster("ws", &[mock.addr()], ""),
        route_all("ws", "ws", "")
    ));
    let r = gw.get("/not-an-upgrade");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["type"], "bad_upstream_response");
}

#[test]
fn frames_sent_right_behind_the_upgrade_request_are_tunnelled() {
    let mock = MockUpstream::always(Action::WebSocketEcho);
    let gw = TestGateway::start(&format!(
        "{}{}{}",
        preamble(1),
        cluster("ws", &[mock.addr()], ""),
        route_all("ws", "ws", "upgrade = [\"websocket\"]")
    ));
    let mut conn = gw.conn();
    let mut raw = b"GET /chat HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n".to_vec();
    raw.extend(ws_client_frame(0x1, b"eager"));
    conn.send(&raw);
    let head = conn.read_head(false).expect("101 head");
    assert_eq!(head.status, 101);
    let mut pending = conn.leftover().to_vec();
    assert_eq!(
        read_frame(&mut conn, &mut pending),
        (0x1, b"hello".to_vec())
    );
    assert_eq!(
        read_frame(&mut conn, &mut pending),
        (0x1, b"eager".to_vec())
    );
}
