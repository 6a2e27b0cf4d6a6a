#!/usr/bin/env bash
# Machine k8s: a single-node k3s cluster (installed from get.k3s.io), cmi's RBAC and a
# kubeconfig for cmi's ServiceAccount (for ctl), and the sample apps as real pods, from
# the openslb image built here. Idempotent.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${LAB_DIR:-/vagrant/deploy/lab}/lib.sh"
: "${LAB_K8S_IP:?set by the Vagrantfile}" "${LAB_POD_CIDR:?set by the Vagrantfile}"

IMAGE=localhost/openslb-lab:lab
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
iface="$(iface_of "$LAB_K8S_IP")"

apt_install buildah

if ! systemctl is-active --quiet k3s; then
  # No Traefik and no ServiceLB: openslb is the load balancer. The node's address and
  # flannel live on the lab network, not on the provider's NAT interface.
  log "k3s: installing (${K3S_VERSION:-channel ${K3S_CHANNEL:-stable}}) from get.k3s.io"
  curl -sfL https://get.k3s.io -o /tmp/k3s-install.sh
  INSTALL_K3S_VERSION="${K3S_VERSION:-}" INSTALL_K3S_CHANNEL="${K3S_CHANNEL:-stable}" \
    INSTALL_K3S_EXEC="server --node-ip $LAB_K8S_IP --advertise-address $LAB_K8S_IP \
--flannel-iface $iface --cluster-cidr $LAB_POD_CIDR --tls-san $LAB_K8S_IP --disable traefik --disable servicelb \
--write-kubeconfig-mode 600" \
    sh /tmp/k3s-install.sh
fi
log "k3s: waiting for node $(hostname) to be Ready"
wait_until 300 "node $(hostname) in the cluster" kubectl get node "$(hostname)"
kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=300s >/dev/null

# cmi's least-privilege role, and a long-lived token for its ServiceAccount: ctl's cmi
# runs under exactly what it would get in the cluster, not as cluster admin.
kubectl apply -f "$REPO/deploy/k8s/cmi-rbac.yaml" >/dev/null
kubectl apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Secret
metadata:
  name: openslb-cmi-token
  namespace: openslb-system
  annotations: {kubernetes.io/service-account.name: openslb-cmi}
type: kubernetes.io/service-account-token
EOF
token_of() { kubectl -n openslb-system get secret openslb-cmi-token -o 'jsonpath={.data.token}'; }
has_token() { [ -n "$(token_of)" ]; }
wait_until 60 "token for ServiceAccount openslb-cmi" has_token
token="$(token_of | base64 -d)"
ca="$(base64 -w0 < /var/lib/rancher/k3s/server/tls/server-ca.crt)"
mkdir -p "$STATE"
kubeconfig="$(cat <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: lab
    cluster: {server: "https://$LAB_K8S_IP:6443", certificate-authority-data: "$ca"}
users:
  - name: openslb-cmi
    user: {token: "$token"}
contexts:
  - name: openslb-cmi@lab
    context: {cluster: lab, user: openslb-cmi}
current-context: openslb-cmi@lab
EOF
)"
# Written with umask 077 and renamed into place: the shared folder may not keep owners.
if ! cmp -s <(printf '%s\n' "$kubeconfig") "$STATE/kubeconfig" 2>/dev/null; then
  (umask 077 && printf '%s\n' "$kubeconfig" > "$STATE/kubeconfig.tmp" \
    && mv -f "$STATE/kubeconfig.tmp" "$STATE/kubeconfig")
  log "kubeconfig: cmi's ServiceAccount -> ${STATE#"$REPO"/}/kubeconfig (for ctl)"
fi

# The sample apps run from the openslb image (deploy/image/Dockerfile), built here and
# handed to k3s's containerd: no registry involved. Rebuilt when the source changed.
mkdir -p /etc/containers/registries.conf.d
put_file /etc/containers/registries.conf.d/50-openslb-lab.conf 644 <<'EOF'
# The Dockerfile's FROM names its base image by a short name: look it up on Docker Hub.
unqualified-search-registries = ["docker.io"]
EOF
before=${#CHANGED[@]}
sync_source
if changed_since "$before" || ! k3s ctr -n k8s.io images ls -q | grep -qx "$IMAGE"; then
  log "image: building $IMAGE (a few minutes the first time)"
  buildah bud --quiet --layers -f "$SRC/deploy/image/Dockerfile" -t "$IMAGE" "$SRC" >/dev/null
  rm -f /var/tmp/openslb-lab.tar
  buildah push --quiet "$IMAGE" "docker-archive:/var/tmp/openslb-lab.tar:$IMAGE"
  k3s ctr -n k8s.io images import /var/tmp/openslb-lab.tar >/dev/null
  rm -f /var/tmp/openslb-lab.tar
  rebuilt=1
fi
kubectl apply -f "$REPO/deploy/lab/samples.yaml" >/dev/null
if [ -n "${rebuilt:-}" ]; then
  kubectl -n demo rollout restart deployment/grpc-echo deployment/tcp-echo >/dev/null
fi
log "samples: waiting for demo/grpc-echo and demo/tcp-echo"
kubectl -n demo rollout status deployment/grpc-echo --timeout=300s >/dev/null
kubectl -n demo rollout status deployment/tcp-echo --timeout=300s >/dev/null
kubectl -n demo get svc,pods -o wide
