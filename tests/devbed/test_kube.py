"""The real kube-apiserver fixture: objects, watches and RBAC behave as in a cluster."""

from __future__ import annotations

import threading
import uuid

import pytest
from kubernetes import watch
from kubernetes.client import (
    ApiClient,
    CoreV1Api,
    DiscoveryV1Api,
    RbacAuthorizationV1Api,
    RbacV1Subject,
    V1Namespace,
    V1ObjectMeta,
    V1PolicyRule,
    V1Role,
    V1RoleBinding,
    V1Service,
    V1ServicePort,
    V1ServiceSpec,
)
from kubernetes.client.exceptions import ApiException

from devbed.kube import SERVICE_CIDR, KubeAPI
from devbed.process import wait_until


def _namespace(core: CoreV1Api) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=name)))
    return name


def _service(name: str, labels: dict[str, str] | None = None) -> V1Service:
    return V1Service(
        metadata=V1ObjectMeta(name=name, labels=labels or {}),
        spec=V1ServiceSpec(ports=[V1ServicePort(name="grpc", port=50051, app_protocol="grpc")]),
    )


def test_a_watch_sees_a_created_service(kube_client: ApiClient) -> None:
    core = CoreV1Api(kube_client)
    namespace = _namespace(core)
    listed = core.list_namespaced_service(namespace)
    events: list[tuple[str, str]] = []
    seen = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_service,
            namespace,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=20,
        ):
            events.append((event["type"], event["object"].metadata.name))
            if event["object"].metadata.name == "echo":
                seen.set()
                w.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    created = core.create_namespaced_service(namespace, _service("echo", {"app": "echo"}))
    assert seen.wait(15), events
    thread.join()
    assert events[0] == ("ADDED", "echo")
    assert created.spec.cluster_ip.startswith(SERVICE_CIDR.split(".0.0/")[0])


def test_endpointslices_are_served(kube_client: ApiClient) -> None:
    core, discovery = CoreV1Api(kube_client), DiscoveryV1Api(kube_client)
    namespace = _namespace(core)
    core.create_namespaced_service(namespace, _service("echo"))
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "echo-1", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["198.18.1.10"], "conditions": {"ready": True}}],
    }
    discovery.create_namespaced_endpoint_slice(namespace, body)  # type: ignore[arg-type]
    slices = discovery.list_namespaced_endpoint_slice(
        namespace, label_selector="kubernetes.io/service-name=echo"
    )
    assert [s.endpoints[0].addresses for s in slices.items] == [["198.18.1.10"]]


def test_rbac_is_enforced_for_service_accounts(kube: KubeAPI, kube_client: ApiClient) -> None:
    core = CoreV1Api(kube_client)
    namespace = _namespace(core)
    kubeconfig = kube.service_account_kubeconfig(namespace, "reader")
    with kube.client(kubeconfig) as as_reader:
        reader = CoreV1Api(as_reader)
        with pytest.raises(ApiException) as denied:
            reader.list_namespaced_service(namespace)
        assert denied.value.status == 403

        rbac = RbacAuthorizationV1Api(kube_client)
        rbac.create_namespaced_role(
            namespace,
            V1Role(
                metadata=V1ObjectMeta(name="read-services"),
                rules=[V1PolicyRule(api_groups=[""], resources=["services"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            V1RoleBinding(
                metadata=V1ObjectMeta(name="reader"),
                role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                          "name": "read-services"},
                subjects=[RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)],
            ),
        )  # fmt: skip

        def may_list() -> bool:
            # The authorizer learns of the binding through its own informer, a beat later.
            try:
                return reader.list_namespaced_service(namespace).items == []
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False

        wait_until(may_list, 10, "the role binding takes effect", interval=0.1)
        with pytest.raises(ApiException) as still_denied:
            reader.create_namespaced_service(namespace, _service("nope"))
        assert still_denied.value.status == 403
