"""An LB node in the lab VM: IPVS and its worker, sample pods and a client, on real networks.

The local platform and the end-to-end tests run one of these as a long-lived lab VM
(`LabNode.start()` on the host; inside the guest `python -m devbed.labnode`). In the
guest it builds:

  root namespace   eth0 198.18.255.15 (the host is 198.18.255.2), slb0 (VIPs, by the agent),
                   labcl0 198.18.250.1/24 and labpod0 198.18.251.1/24, forwarding on
  netns client     198.18.250.10, default route via the root namespace
  netns podN       198.18.251.(10+N), a TCP sample server on port 9000 named podN

so a client's packets to a VIP cross IPVS in the root namespace to a pod on another
network, and replies come back through it, as NAT needs. Real servers beyond the VM (the
one-node cluster's pods on the host, 198.18.128.0/24) are reached through eth0: qemu's user
networking carries only packets from the guest's own address, so what IPVS sends out there
is masqueraded (IPVS's conntrack on, an nftables table `openslb-lab`), and the host routes
it to the pod. It then starts the node's
Celery worker (`slb worker --node NAME`, the l4 agent inside) against the host's Redis,
and answers probes the host sends through Redis: TCP connections from the client
namespace (sockets made by threads that entered it), or a command in the root namespace.
(The guest reaches the host only from its root namespace: qemu's user networking forwards
only the guest's own address.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

import redis

from devbed.labvm import GUEST_ADDRESS, HOST_FROM_GUEST, LabVM
from devbed.netns import Netns, ask_tcp
from devbed.process import wait_until
from slb.config import host_port

CLIENT_NET, POD_NET = "198.18.250", "198.18.251"
CLIENT_ADDRESS = f"{CLIENT_NET}.10"
POD_PORT = 9000


def ipvs_weights(listing: str) -> dict[str, int]:
    """`ADDRESS:PORT` -> weight of each real server in `ipvsadm -Ln` output."""
    return {
        fields[1]: int(fields[3])
        for line in listing.splitlines()
        if (fields := line.split())[:1] == ["->"] and fields[1][0].isdigit()
    }


def pod_address(index: int) -> str:
    return f"{POD_NET}.{10 + index}"


def _keys(prefix: str, node: str) -> dict[str, str]:
    base = f"{prefix}:lab:{node}"
    return {
        "ready": f"{base}:ready",
        "tcp": f"{base}:probes:tcp",
        "exec": f"{base}:probes:exec",
        "result": f"{base}:result:",
    }


# -- in the guest ---------------------------------------------------------------------------


def _sh(command: str) -> None:
    subprocess.run(["sh", "-c", command], check=True)


def _build_networks(pods: int) -> None:
    _sh("sysctl -qw net.ipv4.ip_forward=1")
    _sh("modprobe ip_vs && sysctl -qw net.ipv4.vs.conntrack=1")  # NAT'd flows seen by nftables
    _sh(f"nft add table ip openslb-lab && nft 'add chain ip openslb-lab out "
        f"{{ type nat hook postrouting priority srcnat; }}' && nft add rule ip openslb-lab out "
        f"oifname eth0 ip saddr != {GUEST_ADDRESS} masquerade")  # fmt: skip
    for bridge, net in (("labcl0", CLIENT_NET), ("labpod0", POD_NET)):
        _sh(f"ip link add {bridge} type bridge && ip addr add {net}.1/24 dev {bridge} "
            f"&& ip link set {bridge} up")  # fmt: skip
    namespaces = [("client", "labcl0", CLIENT_ADDRESS, CLIENT_NET)]
    namespaces += [(f"pod{i}", "labpod0", pod_address(i), POD_NET) for i in range(1, pods + 1)]
    for ns, bridge, address, net in namespaces:
        _sh(
            f"ip netns add {ns} && ip link add v-{ns} type veth peer name eth0 netns {ns} "
            f"&& ip link set v-{ns} master {bridge} up "
            f"&& ip -n {ns} link set lo up && ip -n {ns} addr add {address}/24 dev eth0 "
            f"&& ip -n {ns} link set eth0 up && ip -n {ns} route add default via {net}.1"
        )


def guest_main(node: str, pods: int) -> None:
    redis_url = os.environ["OPENSLB_REDIS_URL"]
    prefix = os.environ.get("OPENSLB_REDIS_PREFIX", "openslb")
    client = redis.Redis.from_url(redis_url)
    keys = _keys(prefix, node)
    _build_networks(pods)
    client_ns = Netns("client", existing=True, threads=8)  # probes run side by side
    python = sys.executable
    children = [
        subprocess.Popen(["ip", "netns", "exec", f"pod{i}", python, "-m", "devbed.samples",
                          "tcp", "--listen", f"{pod_address(i)}:{POD_PORT}", "--name", f"pod{i}"])
        for i in range(1, pods + 1)
    ]  # fmt: skip
    children.append(
        subprocess.Popen([python, "-m", "slb.cli", "worker", "--node", node, "--log-level", "INFO"])
    )
    for i in range(1, pods + 1):  # ready means the pods answer
        target = f"{pod_address(i)}:{POD_PORT}"
        while _tcp_probe(client_ns, {"target": target})["answers"][0] != f"pod{i}":
            time.sleep(0.5)
    client.set(keys["ready"], json.dumps({"pods": pods, "at": time.time()}))

    def answer(queue: bytes, probe: dict[str, Any]) -> None:
        result = (
            _tcp_probe(client_ns, probe) if queue.decode() == keys["tcp"] else _exec_probe(probe)
        )
        deadline = time.monotonic() + 120
        while True:  # Redis may be restarting (the chaos scenarios): the answer must get out
            try:
                client.set(keys["result"] + probe["id"], json.dumps(result), ex=600)
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    while True:
        try:
            popped = client.blpop([keys["tcp"], keys["exec"]], timeout=2)
            if popped is None:
                continue
            queue, raw = popped  # each probe in a thread: a long load must not hold up the rest
            threading.Thread(target=answer, args=(queue, json.loads(raw)), daemon=True).start()
        except redis.ConnectionError:  # Redis restarts: wait for it, as the worker does
            time.sleep(1)


ATTEMPT_S = 0.2
"""How long one try at a first connection through a new VIP waits: a SYN the VIP guard
dropped (the port not open yet) would otherwise wait for the kernel's retransmit a second
later, and the benchmark would measure that instead of the platform."""
STAGGER_S = 0.05
"""A new try starts this often while the others wait (at most ATTEMPT_S / STAGGER_S at a
time): the first answer comes within STAGGER_S of the port opening, not within ATTEMPT_S."""


def _tcp_probe(client: Netns, probe: dict[str, Any]) -> dict[str, Any]:
    """From the client namespace: connect, read the greeting line, close; `count` times.

    With `until_s`, the first connection is tried afresh every STAGGER_S, each try waiting
    ATTEMPT_S, until one is answered or that many seconds pass (how the benchmark sees the
    first connection through a new VIP). With `for_s`, connections go on for that long,
    `count` at most (load for the chaos scenarios). Sockets, not a process per try: under
    emulation a process start costs tens of milliseconds, a Python start seconds.
    """
    host, port = host_port(probe["target"], "target")
    began = time.monotonic()
    until_s = float(probe.get("until_s", 0))
    answers: list[str] = []
    attempts = 0
    for _ in range(int(probe.get("count", 1))):
        if time.monotonic() - began > float(probe.get("for_s", "inf")):
            break
        if until_s and not answers:
            line, failure, tries = _first_answer(client, host, port, began + until_s)
        else:
            line, failure, tries = _answer(client, host, port, 2.0)
        attempts += tries
        answers.append(line or f"error: {failure}")
    return {"answers": answers, "attempts": attempts}


def _answer(client: Netns, host: str, port: int, timeout: float) -> tuple[str, str, int]:
    """One try: (the line, or "", why not, 1)."""
    try:
        line = client.call(ask_tcp, host, port, None, timeout)
    except OSError as error:
        return "", str(error) or type(error).__name__, 1
    return line, "no answer", 1


def _first_answer(client: Netns, host: str, port: int, deadline: float) -> tuple[str, str, int]:
    """Overlapping tries, one started every STAGGER_S until `deadline`: (the first line
    answered, or "", the last failure, tries started)."""
    pending: set[Future[str]] = set()
    failure, tries, next_try = "no answer", 0, time.monotonic()
    while pending or time.monotonic() < deadline:
        now = time.monotonic()
        if now >= next_try and now < deadline:
            pending.add(client.submit(ask_tcp, host, port, None, ATTEMPT_S))
            tries, next_try = tries + 1, now + STAGGER_S
        now = time.monotonic()
        timeout = max(next_try - now, 0) if now < deadline else None  # then: the last ones
        done, pending = wait(pending, timeout, FIRST_COMPLETED)
        for attempt in done:
            try:
                line = attempt.result()
            except OSError as error:
                failure = str(error) or type(error).__name__
                continue
            if line:
                return line, failure, tries  # the tries still waiting end within ATTEMPT_S
    return "", failure, tries


def _exec_probe(probe: dict[str, Any]) -> dict[str, Any]:
    """A command in the root namespace (e.g. ipvsadm), for tests and the demo."""
    done = subprocess.run(["sh", "-c", probe["command"]], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


# -- on the host ----------------------------------------------------------------------------


class LabNode:
    """The lab VM as LB node `node`, reached through the host's Redis."""

    def __init__(
        self, state_dir: Path, redis_url: str, prefix: str, node: str = "lb1", pods: int = 3
    ) -> None:
        self.state_dir, self.node, self.pods = state_dir, node, pods
        self.redis = redis.Redis.from_url(redis_url)
        self.prefix = prefix
        self.keys = _keys(prefix, node)
        self.guest_redis_url = redis_url.replace("127.0.0.1", HOST_FROM_GUEST)
        self.vm = LabVM(memory_mb=1536)
        self.qemu: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The node's address, as its node group must list it."""
        return GUEST_ADDRESS

    @property
    def pod_addresses(self) -> list[str]:
        """Where the sample TCP pods listen, inside the VM."""
        return [f"{pod_address(i)}:{POD_PORT}" for i in range(1, self.pods + 1)]

    @property
    def console_log(self) -> Path:
        return self.state_dir / "console.log"

    def start(self, timeout: float = 240.0) -> LabNode:
        self.redis.delete(self.keys["ready"], f"{self.keys['ready']}:failed")
        python = shlex.quote(sys.executable)
        command = f"exec {python} -m devbed.labnode guest --node {self.node} --pods {self.pods}"
        env = {"OPENSLB_REDIS_URL": self.guest_redis_url, "OPENSLB_REDIS_PREFIX": self.prefix,
               "OPENSLB_CONFIG": "", "OPENSLB_L4_METRICS_LISTEN": ""}  # fmt: skip
        self.vm.prepare(self.state_dir, command, env, cwd=Path(__file__).resolve().parents[1])
        self.qemu = self.vm.launch(self.state_dir, detach=True)

        def ready() -> bool:
            if self.qemu is not None and self.qemu.poll() is not None:
                raise RuntimeError(f"the lab VM stopped; see {self.console_log}")
            return bool(self.redis.exists(self.keys["ready"]))

        wait_until(ready, timeout, f"lab node {self.node}", interval=0.5)
        return self

    @property
    def pid(self) -> int:
        assert self.qemu is not None
        return self.qemu.pid

    def stop(self) -> None:
        if self.qemu is not None and self.qemu.poll() is None:
            self.qemu.kill()
            self.qemu.wait()

    def _send(self, queue: str, probe: dict[str, Any]) -> str:
        probe_id = uuid.uuid4().hex
        self.redis.rpush(self.keys[queue], json.dumps({**probe, "id": probe_id}))
        return probe_id

    def _ask(self, queue: str, probe: dict[str, Any], timeout: float) -> dict[str, Any]:
        key = self.keys["result"] + self._send(queue, probe)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.redis.get(key)
            if raw is not None:
                result: dict[str, Any] = json.loads(raw)
                return result
            time.sleep(0.05)
        raise TimeoutError(
            f"lab node {self.node} did not answer a {queue} probe in {timeout:.0f} s"
        )

    def tcp(
        self, target: str, count: int = 1, timeout: float = 60.0, until_s: float = 0.0
    ) -> list[str]:
        """Connect `count` times from the client namespace; who answered, or the error.

        `until_s`: keep trying the first connection until it is answered, that long.
        """
        probe = {"target": target, "count": count, "until_s": until_s}
        answers: list[str] = self._ask("tcp", probe, max(timeout, until_s + 30))["answers"]
        return answers

    def ask_tcp(self, target: str, until_s: float) -> str:
        """Send a probe that retries until answered; `answer(id)` collects it later."""
        return self._send("tcp", {"target": target, "count": 1, "until_s": until_s})

    def load(self, target: str, seconds: float, most: int = 5000) -> str:
        """Connections one after another for `seconds` (`most` at most); `answer(id)` has
        who answered each, or its error, once they are done."""
        return self._send("tcp", {"target": target, "count": most, "for_s": seconds})

    def restart_worker(
        self, prefix: str | None = None, redis_port: int | None = None, timeout: float = 90.0
    ) -> None:
        """Stop the node's worker (its agent releases the node) and start another, reading
        the store under `prefix`, through the host's `redis_port` (defaults: the platform's);
        it logs to the lab directory."""
        pattern = shlex.quote(f"[s]lb.cli worker --node {self.node}")
        prefixed = f"OPENSLB_REDIS_PREFIX={shlex.quote(prefix)} " if prefix else ""
        if redis_port is not None:
            prefixed += f"OPENSLB_REDIS_URL=redis://{HOST_FROM_GUEST}:{redis_port}/0 "
        command = (  # `[s]`, `$w`: this shell's own command line must not match the pattern
            f"w=worker; pkill -TERM -f {pattern}; n=0; while pgrep -f {pattern} >/dev/null; do "
            f"n=$((n+1)); [ $n -gt {int(timeout * 5)} ] && exit 1; sleep 0.2; done; "
            f"{prefixed}setsid {shlex.quote(sys.executable)} -m slb.cli $w --node "
            f"{self.node} --log-level INFO </dev/null >>/openslb-job/worker.log 2>&1 &"
        )
        done = self.run(command, timeout=timeout + 30)
        if done["returncode"] != 0:
            raise RuntimeError(f"restarting the worker of {self.node}: {done}")

    def kill_pod(self, index: int) -> None:
        """Stop TCP pod `index` (its server exits: connections to it are refused)."""
        self.run(f"pkill -f '[d]evbed.samples tcp --listen {pod_address(index)}:'")

    def start_pod(self, index: int) -> None:
        python, address = shlex.quote(sys.executable), f"{pod_address(index)}:{POD_PORT}"
        server = f"{python} -m devbed.samples tcp --listen {address} --name pod{index}"
        done = self.run(f"ip netns exec pod{index} setsid {server} </dev/null >/dev/null 2>&1 &")
        if done["returncode"] != 0:
            raise RuntimeError(f"starting pod{index}: {done}")

    def weights(self, target: str) -> dict[str, int]:
        """The real servers of virtual service `target` in the node's IPVS, and weights."""
        return ipvs_weights(self.run(f"ipvsadm -Ln -t {target}")["stdout"])

    def answer(self, probe_id: str) -> list[str] | None:
        """The answers of a probe sent with `ask_tcp`, or None while it runs."""
        raw = self.redis.get(self.keys["result"] + probe_id)
        return None if raw is None else list(json.loads(raw)["answers"])

    def run(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run a shell command as root in the guest's root namespace."""
        return self._ask("exec", {"command": command}, timeout)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devbed.labnode")
    sub = parser.add_subparsers(dest="role", required=True)
    guest = sub.add_parser("guest", help="inside the lab VM: networks, pods, worker, commands")
    guest.add_argument("--node", required=True)
    guest.add_argument("--pods", type=int, default=3)
    args = parser.parse_args()
    guest_main(args.node, args.pods)


if __name__ == "__main__":
    main()
