"""Gateway errors as gRPC statuses, with the official grpcio client over h2c.

Usage: grpc_errors.py GATEWAY. Calls grpc.health.v1.Health/Check on a route that
needs an API key (none sent), a method no route matches, and a route whose
upstream is down; prints each call's status code name and details.
"""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdk_common import emit, gateway_address


def status_of(call):
    try:
        call()
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}
    return {"code": "OK"}


def main():
    channel = grpc.insecure_channel(gateway_address())
    health = health_pb2_grpc.HealthStub(channel)
    check = lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    unrouted = channel.unary_unary("/unknown.Service/Method")
    down = channel.unary_unary("/down.Service/Method")
    emit(
        {
            "unauthenticated": status_of(check),
            "unrouted": status_of(lambda: unrouted(b"", timeout=10)),
            "down": status_of(lambda: down(b"", timeout=10)),
        }
    )


if __name__ == "__main__":
    main()
