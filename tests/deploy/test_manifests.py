"""deploy/k8s: every object the kustomization lists is accepted by a real API server
(server-side dry run, as `kubectl apply --dry-run=server` does), and every container runs
an `slb` command that exists."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmi.k8s.client import KubeClient, KubeError
from devbed.kube import KubeAPI
from slb.config import ENV_PREFIX, Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
PLURALS = {
    "Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps",
    "Service": "services", "Secret": "secrets", "StatefulSet": "statefulsets",
    "Deployment": "deployments", "ClusterRole": "clusterroles",
    "ClusterRoleBinding": "clusterrolebindings", "Role": "roles", "RoleBinding": "rolebindings",
    "NetworkPolicy": "networkpolicies",
}  # fmt: skip


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / resource).read_text()) if d]
    return docs


def collection(body: dict[str, Any]) -> str:
    group_version = body["apiVersion"]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    namespace = body["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{scope}/{PLURALS[body['kind']]}"


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.fixture
def admin(kube: KubeAPI) -> KubeClient:
    return KubeClient.from_kubeconfig(str(kube.kubeconfig))


def test_the_api_server_accepts_every_object(admin: KubeClient) -> None:
    docs = documents()
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == ["openslb-system"]
    for namespace in namespaces:  # a dry run cannot create into a namespace that is not there
        try:
            admin.request("POST", collection(namespace), body=namespace)
        except KubeError as exc:
            if exc.status != 409:
                raise
    refused = []
    for body in docs:
        if body["kind"] == "Namespace":
            continue
        try:
            admin.request("POST", collection(body), body=body, query={"dryRun": "All"})
        except KubeError as exc:
            if exc.status != 409:  # already there (cmi's RBAC, applied by other tests)
                refused.append(f"{body['kind']}/{body['metadata']['name']}: {exc}")
    assert not refused, refused
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "NetworkPolicy", "ClusterRole"} <= kinds


def test_every_container_runs_an_slb_command_that_exists() -> None:
    commands = [
        c["command"]
        for d in documents()
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["command"][0] == "slb"
    ]
    assert len(commands) == 4  # cmi, xds, console, the control worker
    for command in commands:
        done = subprocess.run([sys.executable, "-m", "slb.cli", *command[1:], "--help"],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, (command, done.stderr)


def test_every_container_port_is_opened_by_a_network_policy() -> None:
    """Under default-deny, a port no policy names is dead: a scrape or a probe times out."""
    docs = documents()
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
    assert any(p["podSelector"] == {} and "ingress" not in p for p in policies)  # default deny
    closed = []
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        template = doc["spec"]["template"]
        labels = template["metadata"]["labels"]
        opened = {
            port.get("port", "*")
            for policy in policies
            if policy["podSelector"].get("matchLabels", {}).items() <= labels.items()
            for rule in policy.get("ingress", [])
            for port in rule.get("ports", [{}])
        }
        for container in template["spec"]["containers"]:
            for port in container.get("ports", []):
                if not opened & {"*", port["containerPort"], port.get("name")}:
                    closed.append(f"{doc['metadata']['name']}: {port}")
    assert closed == []


def test_every_openslb_variable_names_a_setting() -> None:
    """A misspelt OPENSLB_ variable would be ignored silently: each must be a setting."""
    defaults = Settings()
    known = {
        f"{ENV_PREFIX}{section.name}_{f.name}".upper()
        for section in fields(Settings)
        for f in fields(getattr(defaults, section.name))
    }
    used = {
        env["name"]
        for doc in documents()
        if doc["kind"] in ("Deployment", "StatefulSet")
        for c in doc["spec"]["template"]["spec"]["containers"]
        for env in c.get("env", [])
        if env["name"].startswith(ENV_PREFIX)
    }
    assert "OPENSLB_REDIS_PASSWORD_FILE" in used
    assert used - known == set()
