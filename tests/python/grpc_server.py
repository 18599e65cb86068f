"""A real gRPC server (the official grpcio package) for the gateway's gRPC tests.

Usage: grpc_server.py [CERT KEY]. Listens on 127.0.0.1 (an ephemeral port;
with TLS when given a PEM certificate and key), prints {"port": N} on one
line, and serves until its stdin closes. It has no health service. Every method
carries raw bytes (no generated code) and works under any service name, so
routes can tell calls apart by their service:

- Unary: echoes the request; `fail:CODE:DETAILS` aborts with that status
  and details; `sleep:MS` answers after MS milliseconds.
- ClientStream: answers with the number of messages and bytes received.
- ServerStream: request `COUNT:SIZE:GAP_MS` streams COUNT messages of SIZE
  bytes, GAP_MS apart.
- Bidi: echoes each message as soon as it arrives.
- Reset: sends one message, then cancels the call (RST_STREAM).
- Stats: answers JSON with the calls the server saw cancelled.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

MAX_MESSAGE = 16 * 1024 * 1024
cancelled = []
lock = threading.Lock()


def unary(request, context):
    if request.startswith(b"fail:"):
        _, code, details = request.decode().split(":", 2)
        context.abort(getattr(grpc.StatusCode, code), details)
    if request.startswith(b"sleep:"):
        deadline = time.monotonic() + int(request[6:]) / 1000
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.01)
        if not context.is_active():
            with lock:
                cancelled.append("Unary")
    context.set_trailing_metadata((("x-served", "unary"),))
    return request


def client_stream(requests, context):
    count = 0
    total = 0
    for message in requests:
        count += 1
        total += len(message)
    return json.dumps({"messages": count, "bytes": total}).encode()


def server_stream(request, context):
    count, size, gap = (int(x) for x in request.decode().split(":"))
    completed = False
    try:
        for i in range(count):
            if not context.is_active():
                return
            yield bytes([65 + i % 26]) * size
            if gap:
                # Waits in small steps so a cancelled call is noticed.
                deadline = time.monotonic() + gap / 1000
                while time.monotonic() < deadline and context.is_active():
                    time.sleep(0.005)
        completed = True
    finally:
        # Also when grpcio closes the generator at a `yield` (a cancelled
        # call): the call did not complete.
        if not completed:
            with lock:
                cancelled.append("ServerStream")


def bidi(requests, context):
    for message in requests:
        yield message


def reset(request, context):
    yield b"first"
    time.sleep(0.05)
    context.cancel()


def stats(request, context):
    with lock:
        return json.dumps({"cancelled": list(cancelled)}).encode()


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    "Reset": grpc.unary_stream_rpc_method_handler(reset),
    "Stats": grpc.unary_unary_rpc_method_handler(stats),
}


class AnyService(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return HANDLERS.get(method)


def main():
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    server.add_generic_rpc_handlers((AnyService(),))
    if len(sys.argv) == 3:
        with open(sys.argv[1], "rb") as cert, open(sys.argv[2], "rb") as key:
            credentials = grpc.ssl_server_credentials(((key.read(), cert.read()),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
