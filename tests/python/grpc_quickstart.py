"""The quickstart's gRPC route, with the official grpcio and grpcio-health-checking clients.

Usage: grpc_quickstart.py GATEWAY. Asks grpc.health.v1.Health/Check about the
server and about the demo echo service, and echoes a message; prints what
each call returned.
"""

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdk_common import emit, gateway_address


def main():
    channel = grpc.insecure_channel(gateway_address())
    health = health_pb2_grpc.HealthStub(channel)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name
    server = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    echo_service = health.Check(
        health_pb2.HealthCheckRequest(service="hypergate.demo.Echo"), timeout=10
    )
    echo = channel.unary_unary("/hypergate.demo.Echo/Echo")
    emit(
        {
            "server": name(server.status),
            "echo_service": name(echo_service.status),
            "echo": echo(b"hello over grpc", timeout=10).decode(),
        }
    )


if __name__ == "__main__":
    main()
