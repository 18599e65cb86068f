"""One server-streaming gRPC call with the official grpcio client.

Usage: grpc_stream.py GATEWAY METHOD. Calls METHOD with an empty request and
prints the messages received and the status the call ended with.
"""

import sys

import grpc

from sdk_common import emit, gateway_address


def main():
    channel = grpc.insecure_channel(gateway_address())
    call = channel.unary_stream(sys.argv[2])(b"", timeout=10)
    messages = []
    try:
        for message in call:
            messages.append(message.decode())
        emit({"messages": messages, "code": "OK"})
    except grpc.RpcError as error:
        emit({"messages": messages, "code": error.code().name, "details": error.details()})


if __name__ == "__main__":
    main()
