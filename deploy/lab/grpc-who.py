"""Call the lab's gRPC sample through a VIP: `grpc-who VIP:50051 [-n COUNT]`.

Every call goes over one channel, so one HTTP/2 connection: an L4 balancer would send
them all to one pod, while Envoy balances each call. The sample's methods take and return
raw bytes (no generated stubs), so this needs grpcio only; grpcurl cannot call them, as
the sample serves no reflection.
"""

from __future__ import annotations

import argparse

import grpc

WHO = "/openslb.test.Echo/Who"


def main() -> None:
    parser = argparse.ArgumentParser(prog="grpc-who", description=__doc__.splitlines()[0])
    parser.add_argument("target", help="HOST:PORT, e.g. the VIP and 50051")
    parser.add_argument("-n", "--count", type=int, default=6, help="calls (default 6)")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        who = channel.unary_unary(WHO)
        answers = [who(b"", timeout=5).decode() for _ in range(args.count)]
    print("answered by:", " ".join(answers))


if __name__ == "__main__":
    main()
