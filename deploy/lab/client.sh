#!/usr/bin/env bash
# Machine client: calls the VIPs from outside the cluster. TCP with bash or nc, gRPC with
# grpc-who (deploy/lab/grpc-who.py, grpcio in a virtualenv of its own). Idempotent.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${LAB_DIR:-/vagrant/deploy/lab}/lib.sh"

apt_install netcat-openbsd
venv=/opt/grpc-who
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import grpc' 2>/dev/null || "$venv/bin/pip" install --quiet grpcio
sed "1i #!$venv/bin/python" "$LAB_DIR/grpc-who.py" | put_file /usr/local/bin/grpc-who 755
log "client: grpc-who VIP:50051 (gRPC), head -1 < /dev/tcp/VIP/9000 (TCP)"
