"""Every kind of gRPC call through the gateway, with the official grpcio client.

Usage: grpc_calls.py GATEWAY. Talks to tests/python/grpc_server.py behind the
gateway (service `test.Calls`, and `capped.Calls` on a route whose
`max_timeout` is 300 ms) over h2c, and prints one JSON line with what each
call came to: unary (small and 4 MB), client streaming, server streaming,
bidirectional ping-pong (each echo awaited before the next message: only a
full-duplex proxy answers it), errors with details, deadlines (the client's,
and the route's cap), a cancelled server stream, and a server that resets
its stream.
"""

import json
import queue
import time

import grpc

from sdk_common import emit, gateway_address

MAX_MESSAGE = 16 * 1024 * 1024


def status_of(call):
    started = time.monotonic()
    try:
        result = call()
    except grpc.RpcError as error:
        return {
            "code": error.code().name,
            "details": error.details(),
            "seconds": time.monotonic() - started,
        }
    return {"code": "OK", "result": result, "seconds": time.monotonic() - started}


def main():
    channel = grpc.insecure_channel(
        gateway_address(),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    unary = channel.unary_unary("/test.Calls/Unary")
    capped = channel.unary_unary("/capped.Calls/Unary")
    client_stream = channel.stream_unary("/test.Calls/ClientStream")
    server_stream = channel.unary_stream("/test.Calls/ServerStream")
    bidi = channel.stream_stream("/test.Calls/Bidi")
    reset = channel.unary_stream("/test.Calls/Reset")
    stats = channel.unary_unary("/test.Calls/Stats")
    out = {}

    answer, call = unary.with_call(b"hello", timeout=10)
    out["unary"] = {
        "answer": answer.decode(),
        "trailing": dict(call.trailing_metadata()),
    }

    big = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    out["unary_4mb"] = unary(big, timeout=30) == big

    def chunks():
        for i in range(10):
            yield bytes([i]) * 100_000

    out["client_stream"] = json.loads(client_stream(chunks(), timeout=30))

    messages = list(server_stream(b"5:1000:0", timeout=10))
    out["server_stream"] = [len(m) for m in messages]

    # Ping-pong: the next message is sent only once the echo of the last
    # one arrived.
    outgoing = queue.Queue()

    def requests():
        while True:
            item = outgoing.get()
            if item is None:
                return
            yield item

    echoes = []
    outgoing.put(b"ping-0")
    responses = bidi(requests(), timeout=10)
    for echo in responses:
        echoes.append(echo.decode())
        if len(echoes) == 3:
            outgoing.put(None)
        else:
            outgoing.put(f"ping-{len(echoes)}".encode())
    out["bidi"] = echoes

    out["not_found"] = status_of(lambda: unary(b"fail:NOT_FOUND:no such order 42", timeout=10))
    out["unavailable"] = status_of(
        lambda: unary(b"fail:UNAVAILABLE:backend draining", timeout=10)
    )
    out["client_deadline"] = status_of(lambda: unary(b"sleep:3000", timeout=0.3))
    out["route_cap"] = status_of(lambda: capped(b"sleep:3000", timeout=30))

    stream = server_stream(b"100:10:50", timeout=30)
    got = [next(stream), next(stream)]
    stream.cancel()
    out["cancelled_after"] = len(got)
    seen = []
    for _ in range(100):
        seen = json.loads(stats(b"", timeout=10))["cancelled"]
        if "ServerStream" in seen:
            break
        time.sleep(0.05)
    out["server_saw_cancel"] = "ServerStream" in seen

    def read_reset():
        return [m.decode() for m in reset(b"", timeout=10)]

    out["reset"] = status_of(read_reset)
    emit(out)


if __name__ == "__main__":
    main()
