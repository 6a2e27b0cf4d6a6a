"""The one-node cluster's container images, made here: no registry is reachable.

Each image is one static Go binary (built by deploy/testbed/build-kube-binaries.sh from
deploy/testbed/images/NAME) packed as a single-layer image in an OCI-layout tar, which
`ctr images import` loads into containerd's `k8s.io` namespace, where the kubelet finds it.
Pods name these images with `imagePullPolicy: Never` (or IfNotPresent on these tags).
The archives are deterministic (fixed times and owners): the same binary, the same digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devbed.kube import BUILD_SCRIPT, cache_dir
from devbed.process import StartError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class Image:
    """An image of one program: `ref` runs `entrypoint`, the binary built as `program`."""

    ref: str
    program: str
    entrypoint: tuple[str, ...]

    @property
    def binary(self) -> Path:
        return cache_dir() / "bin" / "images" / self.program


PAUSE = Image("openslb.local/pause:1", "pause", ("/pause",))
"""Every pod's sandbox (containerd pins it, so image garbage collection never removes it)."""
SAMPLE_HTTP = Image("openslb.local/sample-http:v1", "sample-http", ("/sample-http",))
"""Answers `POD_NAME $VERSION` on :8080 ($PORT) and `ok` on /healthz; with $TCP_PORT set,
greets each TCP connection there with `POD_NAME` (for L4 listeners)."""
ECHO_BASIC = Image("openslb.local/echo-basic:v1.6.3", "echo-basic-v1.6.3", ("/echo-basic",))
"""The Gateway API conformance suite's echo server: with GRPC_ECHO_SERVER set, gRPC
`gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo` on :3000 ($HTTP_PORT), its
reply naming $POD_NAME; otherwise HTTP echo on :3000 and h2c on :3001."""
CONFORMANCE_ECHO = tuple(
    Image(f"registry.k8s.io/gateway-api/echo-basic:{tag}", ECHO_BASIC.program, ("/echo-basic",))
    for tag in ("v1.5.1", "v1.6.0-dev.2", "v1.6.0-dev.3")
)
"""The same echo server under the names the conformance suite's manifests (v1.6.3) give
it: with no registry, the kubelet finds these (IfNotPresent) instead of pulling."""
COREDNS = Image("registry.k8s.io/coredns/coredns:v1.12.2", "coredns-v1.12.2", ("/coredns",))
"""CoreDNS, the conformance suite's UDP backend (its infra namespace's readiness needs it)."""
IMAGES = (PAUSE, SAMPLE_HTTP, ECHO_BASIC, *CONFORMANCE_ECHO, COREDNS)


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o755) -> None:
    """A member with fixed owner and time, so archives of the same bytes are identical."""
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    info.mode = mode
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _layer(image: Image, binary: bytes) -> bytes:
    """The root file system: the binary, a passwd/group for uid 0 lookups, mount points."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("dev", "etc", "proc", "sys", "tmp"):
            _add(tar, directory)
        _add(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/false\n", 0o644)
        _add(tar, "etc/group", b"root:x:0:\n", 0o644)
        _add(tar, image.entrypoint[0].lstrip("/"), binary)
    return raw.getvalue()


def oci_archive(image: Image, binary: bytes) -> bytes:
    """`binary` as a single-layer OCI image named `image.ref`, in OCI-layout tar form."""
    layer_tar = _layer(image, binary)
    layer = gzip.compress(layer_tar, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": list(image.entrypoint), "Env": ["PATH=/"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer_tar)]},
    }
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, Any]:
        digest = _digest(data)
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": blob(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG),
        "layers": [blob(layer, OCI_LAYER)],
    }
    descriptor = blob(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
    descriptor["platform"] = {"architecture": "amd64", "os": "linux"}
    descriptor["annotations"] = {
        "io.containerd.image.name": image.ref,  # the name `ctr images import` gives it
        "org.opencontainers.image.ref.name": image.ref.rsplit(":", 1)[1],
    }
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)
        _add(tar, "index.json", json.dumps(index, sort_keys=True).encode(), 0o644)
        _add(tar, "blobs")
        _add(tar, "blobs/sha256")
        for digest, data in blobs.items():
            _add(tar, f"blobs/sha256/{digest.removeprefix('sha256:')}", data, 0o644)
    return out.getvalue()


def _digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def import_image(image: Image, ctr: Path, socket: Path, work_dir: Path) -> None:
    """Pack `image` from its built binary and load it into containerd's `k8s.io` namespace."""
    if not image.binary.exists():
        raise StartError(f"not built yet: {image.binary}; run {BUILD_SCRIPT}")
    archive = work_dir / f"{image.program}.oci.tar"
    archive.write_bytes(oci_archive(image, image.binary.read_bytes()))
    result = subprocess.run(
        [str(ctr), "--address", str(socket), "--namespace", "k8s.io", "images", "import",
         str(archive)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    archive.unlink()
    if result.returncode != 0:
        raise StartError(f"ctr could not import {image.ref}: {result.stderr.strip()}")
