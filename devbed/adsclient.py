"""A client that speaks ADS the way Envoy does, for tests of the server's protocol (as
Contour's feature tests do) and for fan-out benchmarks with many clients."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from l7.translate.common import CLUSTER, ENDPOINT, LISTENER, ROUTE


class AdsClient:
    def __init__(self, target: str, node_id: str, group: str, delta: bool = True) -> None:
        self.node_id, self.group, self.delta = node_id, group, delta
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self._requests: queue.Queue[Any] = queue.Queue()
        self.responses: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self._call = method(iter(self._requests.get, None))
        self._first = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self.responses.put(response)
        except grpc.RpcError as exc:
            self.error = exc
        self.responses.put(None)

    def _node(self, request: Any) -> Any:
        if self._first:
            request.node.id = self.node_id
            request.node.cluster = self.group
            self._first = False
        return request

    def subscribe(
        self, type_url: str, names: list[str] | None = None, holding: dict[str, str] | None = None
    ) -> None:
        """`holding`: resources (name -> version) the client says it has, as an Envoy that
        reconnects does (SotW: the version it last accepted)."""
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, resource_names_subscribe=names or [],
                initial_resource_versions=holding or {},
            )  # fmt: skip
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=names or [],
                version_info=max(holding.values()) if holding else "",
            )  # fmt: skip
        self._requests.put(self._node(request))

    def ack(self, response: Any, names: list[str] | None = None, nack: str = "") -> None:
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=response.type_url, response_nonce=response.nonce
            )
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=response.type_url,
                response_nonce=response.nonce,
                resource_names=names or [],
                version_info="" if nack else response.version_info,
            )
        if nack:
            request.error_detail.CopyFrom(status_pb2.Status(code=13, message=nack))
        self._requests.put(self._node(request))

    def receive(self, timeout: float = 10.0) -> Any:
        response = self.responses.get(timeout=timeout)
        if response is None:
            raise AssertionError(f"stream ended: {self.error}")
        return response

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
        self.channel.close()


class AckingClient(AdsClient):
    """A Delta client that behaves like an Envoy that takes everything: it asks for all
    clusters and listeners, ACKs every response, and subscribes to the endpoints of each
    cluster and the routes of each listener it receives (named as openslb names them: a
    cluster's endpoints and a listener's route configuration carry its name). The server
    reports it programmed like any Envoy; a thread answers until `close`."""

    def __init__(self, target: str, node_id: str, group: str) -> None:
        super().__init__(target, node_id, group, delta=True)
        self._names: dict[str, set[str]] = {}
        self._answering = threading.Thread(target=self._answer, daemon=True)
        self._answering.start()
        self.subscribe(CLUSTER)
        self.subscribe(LISTENER)

    def _answer(self) -> None:
        while (response := self.responses.get()) is not None:
            by_name = {CLUSTER: ENDPOINT, LISTENER: ROUTE}.get(response.type_url)
            if by_name is not None:
                new = {r.name for r in response.resources} - self._names.setdefault(by_name, set())
                if new:
                    self._names[by_name] |= new
                    self.subscribe(by_name, sorted(new))
            self.ack(response)
