"""The built-in demo gRPC upstream (kind = "grpc"), with the official grpcio client over h2c.

Usage: demo_grpc_client.py DEMO FAILING_DEMO. DEMO is a demo gRPC upstream's
address; FAILING_DEMO one with fail_ratio = 0.5. Calls the health service
(Check, Watch), the echo service (Echo, Stream), an unknown method, a
compressed and an oversized request; prints what each call returned.
"""

import os
import queue
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdk_common import emit, gateway_address

TIMEOUT_SECONDS = 10
ECHO = "/hypergate.demo.Echo/Echo"
STREAM = "/hypergate.demo.Echo/Stream"


def status_name(status):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def code_of(call):
    try:
        call()
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}
    return {"code": "OK"}


def check(health, service):
    response, call = health.Check.with_call(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
    )
    return {
        "status": status_name(response.status),
        "upstream": dict(call.initial_metadata()).get("x-demo-upstream"),
    }


def stream_three(channel):
    """Sends each message only after the previous one came back, so each echo
    must arrive while the request stream is still open."""
    stream = channel.stream_stream(STREAM, request_serializer=None, response_deserializer=None)
    requests = queue.Queue()
    responses = stream(iter(requests.get, None), timeout=TIMEOUT_SECONDS)
    echoed = []
    for message in [b"one", b"two", b"three"]:
        requests.put(message)
        echoed.append(next(responses).decode())
    requests.put(None)  # half-close
    rest = list(responses)
    return {"echoed": echoed, "after_half_close": len(rest), "code": responses.code().name}


def watch(health):
    responses = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS)
    first = status_name(next(responses).status)
    time.sleep(0.3)
    still_open = responses.is_active()
    responses.cancel()
    return {"first": first, "open_after_first": still_open, "code": responses.code().name}


def main():
    demo = gateway_address()
    failing = sys.argv[2]
    channel = grpc.insecure_channel(demo)
    health = health_pb2_grpc.HealthStub(channel)
    echo = channel.unary_unary(ECHO, request_serializer=None, response_deserializer=None)
    payload = os.urandom(1 << 20)
    reply = echo(payload, timeout=TIMEOUT_SECONDS)
    unknown = channel.unary_unary("/hypergate.demo.Echo/Nope")
    failing_echo = grpc.insecure_channel(failing).unary_unary(
        ECHO, request_serializer=None, response_deserializer=None
    )
    emit(
        {
            "check_default": check(health, ""),
            "check_echo": check(health, "hypergate.demo.Echo"),
            "check_unknown": code_of(
                lambda: health.Check(
                    health_pb2.HealthCheckRequest(service="nope.Service"), timeout=TIMEOUT_SECONDS
                )
            ),
            "echo_1mib": {"length": len(reply), "same": reply == payload},
            "echo_empty": echo(b"", timeout=TIMEOUT_SECONDS) == b"",
            "stream": stream_three(channel),
            "unknown_method": code_of(lambda: unknown(b"", timeout=TIMEOUT_SECONDS)),
            "watch": watch(health),
            "compressed": code_of(
                lambda: echo(b"x" * 1000, timeout=TIMEOUT_SECONDS, compression=grpc.Compression.Gzip)
            ),
            "oversized": code_of(lambda: echo(bytes(9 << 20), timeout=TIMEOUT_SECONDS)),
            "failing": [code_of(lambda: failing_echo(b"hi", timeout=TIMEOUT_SECONDS)) for _ in range(4)],
        }
    )


if __name__ == "__main__":
    main()
