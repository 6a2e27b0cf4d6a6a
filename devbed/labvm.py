"""The lab VM: real kernel IPVS on a machine whose own kernel has none.

qemu boots Debian's packaged kernel (it builds IPVS as modules) with the host's root
filesystem shared read-only over 9p and a tmpfs overlay on top, so the guest runs the
host's Python, virtual environment and ipvsadm without an image to build. A tiny
initramfs (busybox plus the 9p and overlay modules) mounts that root and switches into
it; a per-run shared directory carries the command in and its output and exit code out.
The recipe and its pitfalls are in ../shared/notes/lab-vm.md of the project's notes.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devbed.kube import cache_dir
from devbed.process import StartError

GUEST_ADDRESS = "198.18.255.15"
HOST_FROM_GUEST = "198.18.255.2"
"""The guest reaches the host's loopback at this address (qemu user networking)."""

_SHARE = "security_model=none,multidevs=remap"
_BOOT_MODULES = ("9p", "9pnet_virtio", "overlay", "virtio_pci")
_PASSED_ENV = ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "PYTHONPATH", "TERM")

_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /modules.order); do
  insmod "/modules/$module" || echo "insmod $module failed"
done
mkdir -p /mnt/host /mnt/rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /mnt/host
mount -t tmpfs -o size=75% tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot
mkdir -p /newroot/openslb-job
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 job /newroot/openslb-job
umount /proc /sys /dev
exec switch_root /newroot /bin/sh /openslb-job/stage2.sh
"""

_STAGE2 = """#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/run 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
echo 1 > /proc/sys/kernel/sysrq
hostname lab
ip link set lo up
{network}
. /openslb-job/env.sh
date +%s.%N > /openslb-job/started
cd {cwd} 2>/dev/null || cd /
/bin/sh /openslb-job/command.sh > /openslb-job/stdout 2> /openslb-job/stderr
echo $? > /openslb-job/rc
sync
echo o > /proc/sysrq-trigger
sleep 30
"""

_NETWORK = f"""modprobe virtio_net
ip link set eth0 up
ip addr add {GUEST_ADDRESS}/24 dev eth0
ip route add default via {HOST_FROM_GUEST}
"""


class Writer(Protocol):
    """Where guest output is echoed: a text stream, or anything with write and flush."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class LabError(RuntimeError):
    """The VM did not run the command to the end (boot failure, timeout)."""


@dataclass(frozen=True)
class LabResult:
    returncode: int
    stdout: str
    stderr: str
    boot_s: float
    """From starting qemu to the command starting in the guest."""
    total_s: float
    files: dict[str, str]
    """What the command wrote into $OPENSLB_LAB_OUT, by file name."""


def kernel_version() -> str:
    """The newest Debian kernel installed under /boot (package linux-image-amd64)."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    if not kernels:
        raise StartError("no kernel in /boot: run deploy/testbed/install.sh (linux-image-amd64)")
    return kernels[-1].name.removeprefix("vmlinuz-")


def build_initramfs(version: str) -> Path:
    """The busybox initramfs for `version`, built once and cached."""
    digest = hashlib.sha256((_INIT + version).encode()).hexdigest()[:12]
    target = cache_dir() / "labvm" / f"initrd-{version}-{digest}.cpio.gz"
    if target.exists():
        return target
    busybox = shutil.which("busybox")
    if busybox is None:
        raise StartError("busybox not found: run deploy/testbed/install.sh (busybox-static)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("bin", "proc", "sys", "dev", "modules", "mnt"):
            (root / sub).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        order: list[str] = []
        for module in _BOOT_MODULES:
            deps = subprocess.run(
                ["modprobe", "-S", version, "--show-depends", module],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            for line in deps.splitlines():
                path = Path(line.split()[1])
                if path.name not in order:
                    order.append(path.name)
                    shutil.copy2(path, root / "modules" / path.name)
        (root / "modules.order").write_text("\n".join(order) + "\n")
        (root / "init").write_text(_INIT)
        (root / "init").chmod(0o755)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        archive = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input="\n".join(names).encode(), cwd=root, check=True, capture_output=True,
        ).stdout  # fmt: skip
        partial = target.with_suffix(".tmp")
        partial.write_bytes(gzip.compress(archive, compresslevel=1))
        partial.rename(target)
    return target


class LabVM:
    """Run shell commands as root in a fresh VM with the host's files and a real IPVS."""

    def __init__(self, memory_mb: int = 1024, cpus: int = 2, network: bool = True) -> None:
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.network = network
        self.version = kernel_version()
        self.qemu = shutil.which("qemu-system-x86_64")
        if self.qemu is None:
            raise StartError("qemu-system-x86_64 not found: run deploy/testbed/install.sh")

    def run(
        self,
        command: str,
        timeout: float = 900.0,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        echo: bool | Mapping[str, Writer] = False,
    ) -> LabResult:
        """Boot, run `command` with /bin/sh in `cwd` (default: the current directory), power off.

        With `echo`, the guest's stdout and stderr are copied to ours while it runs (or to
        the streams given for "stdout" and "stderr").
        """
        with tempfile.TemporaryDirectory(prefix="openslb-lab-") as tmp:
            job = Path(tmp)
            self.prepare(job, command, env, cwd)
            start = time.monotonic()
            qemu = self.launch(job)
            return self._wait(job, qemu, start, timeout, echo)

    def prepare(
        self,
        job: Path,
        command: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Write the job directory the guest boots with: its command, environment, stage 2."""
        job.mkdir(parents=True, exist_ok=True)
        passed = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
        passed.update(env or {})
        passed["OPENSLB_LAB_GUEST"] = "1"
        passed["OPENSLB_HOST_ADDRESS"] = HOST_FROM_GUEST
        passed["OPENSLB_LAB_OUT"] = "/openslb-job/out"
        for stale in ("started", "rc", "stdout", "stderr"):
            (job / stale).unlink(missing_ok=True)
        (job / "out").mkdir(exist_ok=True)
        (job / "env.sh").write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(passed.items()))
        )
        (job / "command.sh").write_text(command + "\n")
        (job / "stage2.sh").write_text(
            _STAGE2.format(
                network=_NETWORK if self.network else "",
                cwd=shlex.quote(str(cwd or Path.cwd())),
            )
        )

    def launch(self, job: Path, detach: bool = False) -> subprocess.Popen[bytes]:
        """Start qemu on a prepared job directory; the console goes to job/console.log.

        With `detach`, the VM runs in a session of its own and outlives its starter (the
        local platform's LB node).
        """
        assert self.qemu is not None
        argv = [
            self.qemu,
            "-accel", "tcg,thread=multi", "-cpu", "max",  # kvm hangs on these hosts
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
            "-kernel", f"/boot/vmlinuz-{self.version}",
            "-initrd", str(build_initramfs(self.version)),
            "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
            "-virtfs", f"local,path=/,mount_tag=host,{_SHARE},readonly=on",
            "-virtfs", f"local,path={job},mount_tag=job,{_SHARE}",
        ]  # fmt: skip
        if self.network:
            argv += [
                "-nic",
                f"user,model=virtio-net-pci,net=198.18.255.0/24,host={HOST_FROM_GUEST}",
            ]
        else:
            argv += ["-nic", "none"]
        with (job / "console.log").open("wb") as log:
            return subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=detach,
            )

    def _wait(
        self,
        job: Path,
        qemu: subprocess.Popen[bytes],
        start: float,
        timeout: float,
        echo: bool | Mapping[str, Writer],
    ) -> LabResult:
        console = job / "console.log"
        if echo is True:
            echo = {"stdout": sys.stdout, "stderr": sys.stderr}
        tail = _Tail(job, echo) if echo else None
        boot_s = None
        try:
            while qemu.poll() is None:
                if boot_s is None and (job / "started").exists():
                    boot_s = time.monotonic() - start
                if time.monotonic() - start > timeout:
                    raise LabError(f"lab VM still running after {timeout:.0f} s; killed it")
                time.sleep(0.1)
        finally:
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()
            if tail:
                tail.stop()
        total_s = time.monotonic() - start
        rc_file = job / "rc"
        if not rc_file.exists():
            log_tail = "\n".join(console.read_text(errors="replace").splitlines()[-40:])
            raise LabError(f"the lab VM stopped before the command finished; console:\n{log_tail}")
        return LabResult(
            returncode=int(rc_file.read_text().strip() or 255),
            stdout=(job / "stdout").read_text(errors="replace"),
            stderr=(job / "stderr").read_text(errors="replace"),
            boot_s=boot_s if boot_s is not None else total_s,
            total_s=total_s,
            files={p.name: p.read_text(errors="replace") for p in (job / "out").iterdir()},
        )


class _Tail:
    """Copy the guest's output to a stream while it runs: long lab runs show progress."""

    def __init__(self, job: Path, streams: Mapping[str, Writer]) -> None:
        self._job, self._streams = job, streams
        self._stop = threading.Event()
        self._offsets = dict.fromkeys(streams, 0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self._copy()
        self._copy()

    def _copy(self) -> None:
        for name, offset in self._offsets.items():
            with contextlib.suppress(FileNotFoundError), (self._job / name).open("rb") as f:
                f.seek(offset)
                data = f.read()
                if data:
                    self._offsets[name] = offset + len(data)
                    self._streams[name].write(data.decode(errors="replace"))
                    self._streams[name].flush()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
