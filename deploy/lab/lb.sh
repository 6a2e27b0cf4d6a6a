#!/usr/bin/env bash
# Machine lb1/lb2: an LB node, set up from deploy/lb-node/ as an operator would: kernel
# modules and settings, keepalived, Envoy and the node's worker (the l4 agent inside) as
# systemd services. Reads its Redis password and certificate from ctl's .lab-state/.
# Idempotent.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${LAB_DIR:-/vagrant/deploy/lab}/lib.sh"
: "${LAB_NODE:?}" "${LAB_LB_NODES:?}" "${LAB_NODE_GROUP:?}" "${LAB_VRRP_PRIORITY:?}"
: "${LAB_CTL_IP:?}" "${LAB_K8S_IP:?}" "${LAB_POD_CIDR:?}"

LB_NODE="$REPO/deploy/lb-node"
address="" peers=()
for entry in $LAB_LB_NODES; do
  if [ "${entry%%=*}" = "$LAB_NODE" ]; then address="${entry#*=}"; else peers+=("${entry#*=}"); fi
done
[ -n "$address" ] || { echo "error: $LAB_NODE is not in LAB_LB_NODES" >&2; exit 1; }
iface="$(iface_of "$address")"
[ -n "$iface" ] || { echo "error: no interface holds $address" >&2; exit 1; }

apt_install ipvsadm keepalived iptables nftables kmod
getent passwd openslb-envoy >/dev/null \
  || useradd --system --user-group --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin openslb-envoy

sync_source
install_openslb

# Kernel: IPVS modules now and at boot, the node's sysctls.
put_copy "$LB_NODE/modules-load.d/openslb.conf" /etc/modules-load.d/openslb.conf 644
mapfile -t modules < <(grep -Ev '^[[:space:]]*(#|$)' /etc/modules-load.d/openslb.conf)
modprobe -a "${modules[@]}"
put_copy "$LB_NODE/sysctl.d/90-openslb.conf" /etc/sysctl.d/90-openslb.conf 644
sysctl -q -p /etc/sysctl.d/90-openslb.conf

# The lab's wiring, not an LB node's: the pods are reached through k8s, and IPVS NAT
# traffic leaves with this node's address, so the pods' replies come back through it
# (they would go straight to the client otherwise: same subnet).
masq="-d $LAB_POD_CIDR -m ipvs --ipvs --vdir ORIGINAL --vmethod MASQ -j MASQUERADE"
before=${#CHANGED[@]}
put_file /etc/systemd/system/openslb-lab-net.service 644 <<EOF
[Unit]
Description=openslb lab: route to the pods via k8s, SNAT of IPVS NAT traffic
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/ip route replace $LAB_POD_CIDR via $LAB_K8S_IP
ExecStart=/bin/sh -c 'iptables -t nat -C POSTROUTING $masq 2>/dev/null || iptables -t nat -A POSTROUTING $masq'

[Install]
WantedBy=multi-user.target
EOF
lab_net_changed=""
changed_since "$before" && lab_net_changed=1

# Secrets from ctl: the Redis password of this node's user, its client certificate.
wait_for_file "$STATE/redis/node-$LAB_NODE.password"
wait_for_file "$STATE/pki/$LAB_NODE.key"
install -d -m 0755 /etc/openslb
install -d -m 0750 -g openslb-envoy /etc/openslb/pki
put_copy "$STATE/redis/node-$LAB_NODE.password" /etc/openslb/redis-node.password 600
put_copy "$STATE/pki/ca.crt" /etc/openslb/pki/ca.crt 644
put_copy "$STATE/pki/$LAB_NODE.crt" "/etc/openslb/pki/$LAB_NODE.crt" 644
put_copy "$STATE/pki/$LAB_NODE.key" "/etc/openslb/pki/$LAB_NODE.key" 640 openslb-envoy

# Settings (deploy/lb-node/openslb.toml.example) and the node's identity.
put_file /etc/openslb/lb-node.env 644 <<EOF
# Written by deploy/lab/lb.sh (see deploy/lb-node/lb-node.env.example).
OPENSLB_L4_NODE=$LAB_NODE
OPENSLB_L4_NODE_GROUP=$LAB_NODE_GROUP
OPENSLB_LB_NODE_ADDRESS=$address
EOF
put_file /etc/openslb/openslb.toml 600 <<EOF
# Written by deploy/lab/lb.sh for $LAB_NODE (see deploy/lb-node/openslb.toml.example).
[redis]
url = "redis://$LAB_CTL_IP:6379/0"
username = "node-$LAB_NODE"
password_file = "/etc/openslb/redis-node.password"

[xds]
bind = "$LAB_CTL_IP:18000"
client_cert = "/etc/openslb/pki/$LAB_NODE.crt"
client_key = "/etc/openslb/pki/$LAB_NODE.key"
server_ca = "/etc/openslb/pki/ca.crt"

[l4]
node = "$LAB_NODE"
node_group = "$LAB_NODE_GROUP"
interface = "slb0"
vrrp_config = "/etc/keepalived/openslb.conf"
vrrp_interface = "$iface"
vrrp_priority = $LAB_VRRP_PRIORITY
vrrp_peers = "$(IFS=,; echo "${peers[*]}")"
vrrp_router_id = 51
vrrp_advert_ms = 200
vrrp_check = "curl -sf -m 1 http://127.0.0.1:9901/ready"
vrrp_pidfile = "/run/keepalived.pid"
conn_sync_interface = "$iface"
EOF

# keepalived: the static part; the agent writes the included file and reloads it.
before=${#CHANGED[@]}
put_copy "$LB_NODE/keepalived.conf" /etc/keepalived/keepalived.conf 644
[ -e /etc/keepalived/openslb.conf ] || : > /etc/keepalived/openslb.conf
keepalived_changed=""
changed_since "$before" && keepalived_changed=1

put_copy "$LB_NODE/openslb-envoy.service" /etc/systemd/system/openslb-envoy.service 644
put_copy "$LB_NODE/openslb-l4-worker.service" /etc/systemd/system/openslb-l4-worker.service 644
put_copy "$LB_NODE/openslb-envoy-stats.service" /etc/systemd/system/openslb-envoy-stats.service 644
systemctl daemon-reload
if [ -n "$lab_net_changed" ]; then run_units --restart openslb-lab-net; else run_units openslb-lab-net; fi
if [ -n "$keepalived_changed" ]; then run_units --restart keepalived; else run_units keepalived; fi
# Anything else changed in this run (code, settings, secrets, units): restart them.
if changed_since 0; then
  run_units --restart openslb-envoy openslb-envoy-stats openslb-l4-worker
else
  run_units openslb-envoy openslb-envoy-stats openslb-l4-worker
fi
# Envoy's link to xDS (mutual TLS): its admin API says whether it is up.
xds_connected() {
  curl -sf -m 1 'http://127.0.0.1:9901/stats?filter=^control_plane.connected_state$' \
    | grep -qx 'control_plane.connected_state: 1'
}
wait_until 120 "xDS connection from Envoy (is openslb-xds running on ctl?)" xds_connected
log "$LAB_NODE: keepalived, openslb-envoy, openslb-envoy-stats and openslb-l4-worker running; VRRP on $iface"
