#!/usr/bin/env bash
# Install everything the platform and its tests need, idempotently and without questions:
# Debian packages, the Python environment (.venv), and the Kubernetes and containerd binaries.
# A second run only checks and returns in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

APT_PACKAGES=(
  redis-server            # the store and the Celery broker
  qemu-system-x86         # the lab VM
  linux-image-amd64       # Debian's kernel, with IPVS as modules, booted by the lab VM
  busybox-static          # the lab VM's initramfs
  ipvsadm                 # the second IPVS driver, and for looking at IPVS by hand
  keepalived              # VRRP between LB nodes (the lab VM's failover tests)
  nftables                # libnftables and `nft`: the l4 agent's VIP guard (the lab VM uses the host's)
  curl                    # keepalived's Envoy health check on LB nodes
  haproxy                 # a real reverse proxy in front of the console (its tests)
  shellcheck              # lints deploy/'s shell scripts
  ruby vagrant            # `ruby -c` and `vagrant validate` check the Vagrantfile
  chromium                # the console's browser tests (driven by Playwright, headless)
  nodejs                  # npm installs the console's browser libraries (Chart.js, htmx)
  runc                    # the OCI runtime under the test bed's containerd (one-node cluster)
  containernetworking-plugins  # CNI bridge, host-local and loopback for the cluster's pods
  nghttp2-client nghttp2-server  # h2load and nghttpd: the peer benchmark's client and backends
  nginx-light             # a peer in the benchmark (bench/peers.py), never left running
  cpio kmod iproute2 procps
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Packages with a daemon (nginx, haproxy, redis) must not start it on install: the tests
  # start their own, on loopback. Debian asks policy-rc.d; 101 means "do not start".
  policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    made_policy=1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$made_policy" ] || $SUDO rm -f "$policy"
else
  step "apt: all packages present"
fi

PYTHON="${PYTHON:-python3}"
stamp=".venv/.openslb-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -x .venv/bin/python ]; then
  step "python: creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "python: installing openslb and its dependencies into .venv"
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[dev]'
  echo "$want" > "$stamp"
else
  step "python: .venv is up to date"
fi

step "console: Chart.js and htmx from npm into web/static/vendor (git-ignored)"
vendor="web/static/vendor"
lock_stamp="$vendor/.installed"
lock_want="$(sha256sum web/package-lock.json | cut -c1-16)"
if [ "$(cat "$lock_stamp" 2>/dev/null)" != "$lock_want" ]; then
  command -v npm >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"; $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null; }
  (cd web && npm ci --no-audit --no-fund --silent)
  mkdir -p "$vendor"
  cp web/node_modules/chart.js/dist/chart.umd.min.js web/node_modules/htmx.org/dist/htmx.min.js "$vendor/"
  echo "$lock_want" > "$lock_stamp"
fi

step "kubernetes: etcd, kube-apiserver, kubelet, controller manager, scheduler, containerd (built once, cached in ${OPENSLB_CACHE:-$HOME/.cache/openslb})"
"$ROOT/deploy/testbed/build-kube-binaries.sh"
