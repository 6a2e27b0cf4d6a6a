#!/usr/bin/env bash
# Machine ctl: openslb's control plane as systemd services (deploy/lab/ctl/*.service):
# Redis with a user per role, cmi, the xDS server (mutual TLS), the console and the two
# control-plane workers. Makes the lab's secrets in .lab-state/ for the other machines,
# and reads the kubeconfig that k8s left there. Idempotent.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${LAB_DIR:-/vagrant/deploy/lab}/lib.sh"
: "${LAB_CTL_IP:?}" "${LAB_LB_NODES:?}" "${LAB_NODE_GROUP:?}" "${LAB_VIP_CIDR:?}"

UNITS=(openslb-cmi openslb-xds openslb-worker-control openslb-console)
slb=("$VENV/bin/slb" --config /etc/openslb/openslb.toml)

apt_install redis-server npm
getent passwd openslb >/dev/null \
  || useradd --system --user-group --no-create-home --home-dir /var/lib/openslb \
       --shell /usr/sbin/nologin openslb

# openslb, and the console's browser libraries (npm, as deploy/testbed/install.sh does).
sync_source
install_openslb
vendor="$SRC/web/static/vendor"
lock="$(sha256sum "$SRC/web/package-lock.json" | cut -c1-16)"
if [ "$(cat "$vendor/.installed" 2>/dev/null)" != "$lock" ]; then
  log "console: Chart.js and htmx from npm"
  (cd "$SRC/web" && npm ci --no-audit --no-fund --silent)
  mkdir -p "$vendor"
  cp "$SRC/web/node_modules/chart.js/dist/chart.umd.min.js" \
    "$SRC/web/node_modules/htmx.org/dist/htmx.min.js" "$vendor/"
  echo "$lock" > "$vendor/.installed"
fi

install -d -m 0750 -g openslb /etc/openslb /etc/openslb/redis /etc/openslb/pki
# The units name their own Redis user; operators' `slb` commands here run as cmi.
put_file /etc/openslb/openslb.toml 640 openslb <<EOF
# Written by deploy/lab/ctl.sh: the lab's control plane.
[redis]
url = "redis://127.0.0.1:6379/0"
username = "cmi"
password_file = "/etc/openslb/redis/cmi.password"

[kube]
kubeconfig = "/etc/openslb/kubeconfig"

[cmi]
node_group = "$LAB_NODE_GROUP"
pool_cidrs = "$LAB_VIP_CIDR"

[xds]
bind = "$LAB_CTL_IP:18000"
tls_cert = "/etc/openslb/pki/xds.crt"
tls_key = "/etc/openslb/pki/xds.key"
tls_client_ca = "/etc/openslb/pki/ca.crt"

[console]
bind = "$LAB_CTL_IP:8080"
secret_key_file = "/var/lib/openslb/console-secret-key"
# HTTPS only, with a certificate of the lab's CA (.lab-state/pki/ca.crt: trust it, or
# accept the browser's warning once).
tls_cert = "/etc/openslb/pki/console.crt"
tls_key = "/etc/openslb/pki/console.key"

[secrets]
# Encrypts certificates' private keys in Redis (root's, 0640: the group openslb reads it).
key_file = "/etc/openslb/secrets.keys"

[dev]
# Where slb worker --beat keeps its schedule.
state_dir = "/var/lib/openslb"
EOF

# Secrets, made once into the shared .lab-state/ (passwords kept on later runs): Redis
# users and their passwords, the CA with the xDS server's and each LB node's certificate,
# the key file that encrypts private keys in Redis.
node_users=()
for entry in $LAB_LB_NODES; do node_users+=(--node "${entry%%=*}"); done
"${slb[@]}" redis-acl --dir "$STATE/redis" "${node_users[@]}" >/dev/null
log "secret: Redis users cmi, xds, console and node-NAME per LB node in ${STATE#"$REPO"/}/redis/"
pki="$STATE/pki"
[ -f "$pki/ca.crt" ] || "${slb[@]}" pki init --dir "$pki" --name "openslb lab CA"
[ -f "$pki/xds.crt" ] \
  || "${slb[@]}" pki issue --dir "$pki" --name xds --kind server --san "$LAB_CTL_IP" --san ctl
[ -f "$pki/console.crt" ] \
  || "${slb[@]}" pki issue --dir "$pki" --name console --kind server --san "$LAB_CTL_IP" --san ctl
for entry in $LAB_LB_NODES; do
  node="${entry%%=*}"
  [ -f "$pki/$node.crt" ] || "${slb[@]}" pki issue --dir "$pki" --name "$node" --kind client
done
make_secret console-admin-password
[ -f "$STATE/secrets.keys" ] \
  || "${slb[@]}" secrets new-key --file "$STATE/secrets.keys" --name lab >/dev/null
for role in cmi xds console; do  # (node-NAME: each LB node's own, copied by lb.sh)
  put_copy "$STATE/redis/$role.password" "/etc/openslb/redis/$role.password" 640 openslb
done
put_copy "$pki/ca.crt" /etc/openslb/pki/ca.crt 644
put_copy "$pki/xds.crt" /etc/openslb/pki/xds.crt 644
put_copy "$pki/xds.key" /etc/openslb/pki/xds.key 640 openslb
put_copy "$pki/console.crt" /etc/openslb/pki/console.crt 644
put_copy "$pki/console.key" /etc/openslb/pki/console.key 640 openslb
put_copy "$STATE/secrets.keys" /etc/openslb/secrets.keys 640 openslb

# Redis: reachable from the LB nodes, the `default` user off (slb redis-acl's file), AOF.
before=${#CHANGED[@]}
put_copy "$STATE/redis/users.acl" /etc/redis/openslb-users.acl 640 redis
put_file /etc/redis/openslb.conf 640 redis <<EOF
# openslb lab (deploy/lab/ctl.sh), included at the end of redis.conf: last one wins.
bind 127.0.0.1 -::1 $LAB_CTL_IP
aclfile /etc/redis/openslb-users.acl
appendonly yes
appendfsync everysec
EOF
# It binds the lab address, so it starts once the network is up.
mkdir -p /etc/systemd/system/redis-server.service.d
put_file /etc/systemd/system/redis-server.service.d/openslb-lab.conf 644 <<'EOF'
[Unit]
Wants=network-online.target
After=network-online.target
EOF
if ! grep -qxF 'include /etc/redis/openslb.conf' /etc/redis/redis.conf; then
  echo 'include /etc/redis/openslb.conf' >> /etc/redis/redis.conf
  CHANGED+=(/etc/redis/redis.conf)
fi
if changed_since "$before"; then
  log "redis: restarting with the lab's settings and users"
  systemctl daemon-reload
  systemctl restart redis-server
fi
redis_ping() {
  REDISCLI_AUTH="$(cat /etc/openslb/redis/cmi.password)" redis-cli --user cmi --no-auth-warning ping \
    | grep -q PONG
}
wait_until 60 "answer from Redis as user cmi" redis_ping

# cmi reads the cluster through the kubeconfig of its ServiceAccount, made by k8s.sh.
wait_for_file "$STATE/kubeconfig"
put_copy "$STATE/kubeconfig" /etc/openslb/kubeconfig 640 openslb

# The LB nodes of the node group, by the addresses their Envoys are reached at; IPVS
# checks each Envoy's /ready (stats listener, :9902) so a dead node gets no new L7 flows.
read -ra lb_nodes <<< "$LAB_LB_NODES"
"${slb[@]}" node-group set "$LAB_NODE_GROUP" "${lb_nodes[@]}" --envoy-ready-port 9902 >/dev/null
log "node group $LAB_NODE_GROUP: ${lb_nodes[*]}"

before=${#CHANGED[@]}
for unit in "${UNITS[@]}"; do
  put_copy "$LAB_DIR/ctl/$unit.service" "/etc/systemd/system/$unit.service" 644
done
! changed_since "$before" || systemctl daemon-reload
# Anything changed in this run (code, settings, secrets, units): restart them all.
if changed_since 0; then run_units --restart "${UNITS[@]}"; else run_units "${UNITS[@]}"; fi

# The console's first admin (the password file stays in .lab-state/, never printed).
if out="$("${slb[@]}" console create-admin admin --password-stdin \
  < "$STATE/console-admin-password" 2>&1)"; then
  log "console: user admin created"
elif ! grep -q "exists" <<< "$out"; then
  echo "$out" >&2
  exit 1
fi
log "console: https://$LAB_CTL_IP:8080/ (user admin, password in .lab-state/console-admin-password)"
