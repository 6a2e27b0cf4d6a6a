"""A small Kubernetes HTTP client that speaks raw JSON.

The `kubernetes` package is used for what it does well, reading kubeconfig and
in-cluster credentials; requests go through urllib3 directly and bodies stay plain
dicts. Turning every watched Service and EndpointSlice into generated model objects
costs milliseconds each, which a controller holding thousands of them cannot afford
(kopf makes the same choice).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Mapping
from typing import Any, cast
from urllib.parse import urlencode

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import Configuration

Body = Mapping[str, Any]
"""A Kubernetes object (or part of one) as the API server sends it: raw JSON, read-only.
cmi's one name for it, like kopf's raw bodies; a caller that edits a document it fetched
(a Lease to write back) holds the `dict` that `request` returns."""


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: Body | None = None) -> None:
        self.status = status
        self.reason = reason
        self.body = dict(body or {})
        message = self.body.get("message", "")
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")


REQUEST_ERRORS = (KubeError, OSError, urllib3.exceptions.HTTPError)
"""What a request can raise: an error status, or no answer (refused, timed out, cut)."""


class GoneError(KubeError):
    """410 Gone: the resourceVersion is too old to watch from; list again."""


POOL_SIZE = 32
"""Connections kept to the API server. Each watch holds one for its whole life (cmi runs
five informers); cmi's reporter writes from eight threads, beside the leader's lease, the
handoff and the controller. A request that finds no kept connection free opens one, TLS
handshake and all, and closes it after if the pool is full: with eight kept, cmi did so
every few seconds among 10,000 Services (#18; `tests/cmi/test_client.py`)."""


class KubeClient:
    """Authenticated JSON requests and watches against one API server."""

    def __init__(self, configuration: Configuration, pool_size: int = POOL_SIZE) -> None:
        self.configuration = configuration
        self.host = configuration.host.rstrip("/")
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        if not configuration.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False, ssl_context=context
        )

    @classmethod
    def from_kubeconfig(cls, path: str = "") -> KubeClient:
        """From a kubeconfig file; with no path, in-cluster credentials, else ~/.kube/config."""
        configuration = Configuration()
        if path:
            kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, client_configuration=configuration
            )
        else:
            try:
                kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except kube_config.ConfigException:
                kube_config.load_kube_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
        return cls(configuration)

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.configuration.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _url(self, path: str, query: Mapping[str, Any] | None) -> str:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        return f"{self.host}{path}" + (f"?{urlencode(params)}" if params else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        payload = None if body is None else json.dumps(body).encode()
        response = self.pool.request(
            method,
            self._url(path, query),
            body=payload,
            headers=self._headers(content_type if payload is not None else None),
            timeout=urllib3.Timeout(connect=5.0, read=timeout),
            retries=False,
        )
        if response.status >= 400:  # not always JSON: "404 page not found" for no such API
            try:
                data = json.loads(response.data) if response.data else {}
            except ValueError:
                data = {"message": response.data[:200].decode(errors="replace")}
            raise _error(response.status, response.reason or "", data)
        data = json.loads(response.data) if response.data else {}
        return cast(dict[str, Any], data)

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def watch(
        self,
        path: str,
        resource_version: str,
        timeout_s: int = 300,
        field_selector: str | None = None,
    ) -> Watch:
        """Watch events (dicts with type and object) from `resource_version`, with bookmarks;
        with `field_selector`, of the objects it selects only."""
        query = {
            "fieldSelector": field_selector,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_s,
        }
        response = self.pool.request(
            "GET",
            self._url(path, query),
            headers=self._headers(),
            preload_content=False,
            timeout=urllib3.Timeout(connect=5.0, read=timeout_s + 30),
            retries=False,
        )
        if response.status >= 400:
            data = response.data
            response.release_conn()
            raise _error(response.status, response.reason or "", json.loads(data or b"{}"))
        return Watch(response)

    def close(self) -> None:
        self.pool.clear()


class Watch:
    """One open watch: iterate its events; `stop()` from any thread ends the iteration.

    Iteration ends when the server closes the watch (after about its timeout). An ERROR
    event raises KubeError, and GoneError for 410.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._stopped = False

    def __iter__(self) -> Iterator[Body]:
        pending = b""
        try:
            for chunk in self._response.stream(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = cast(Body, json.loads(line))
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        raise _error(int(status.get("code", 500)), status.get("reason", ""), status)
                    yield event
        except (urllib3.exceptions.ProtocolError, OSError):
            if not self._stopped:
                raise
        finally:
            self._response.close()

    def stop(self) -> None:
        self._stopped = True
        self._response.shutdown()


def _error(status: int, reason: str, body: Body) -> KubeError:
    return (GoneError if status == 410 else KubeError)(status, reason, body)
