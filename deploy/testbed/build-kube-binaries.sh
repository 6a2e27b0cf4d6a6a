#!/usr/bin/env bash
# Build the Kubernetes API server and etcd used by the test bed, once per version.
#
# No registry reachable here ships kube-apiserver, so it is built from the Go module
# k8s.io/kubernetes. That module's go.mod replaces every staging module with a path
# inside its own tree, and a dependency's replace directives are ignored; a throwaway
# module points each staging module at its published v0.X.Y instead.
# Binaries land in $OPENSLB_CACHE/bin (outside the repository), keyed by version,
# so only the first run builds.
set -euo pipefail

KUBE_VERSION="${OPENSLB_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${OPENSLB_ETCD_VERSION:-v3.6.16}"
CACHE="${OPENSLB_CACHE:-$HOME/.cache/openslb}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

apiserver="$BIN/kube-apiserver-$KUBE_VERSION"
etcd="$BIN/etcd-$ETCD_VERSION"
staging="v0.${KUBE_VERSION#v1.}"

log() { printf '[build-kube] %s\n' "$*" >&2; }

build_apiserver() {
  local work="$CACHE/build/kube-$KUBE_VERSION"
  mkdir -p "$work"
  cd "$work"
  log "kube-apiserver $KUBE_VERSION (staging modules $staging): resolving modules"
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  {
    echo "module openslb.local/kubebuild"
    echo
    sed -n 's/^go \(.*\)$/go \1/p' "$gomod"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    grep -E '=> \./staging/src/' "$gomod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
  cat > tools.go <<'GO'
//go:build tools

package kubebuild

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  go mod tidy -e >/dev/null 2>&1 || true
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION"
  log "kube-apiserver: compiling (the first build takes a long while on 2 cores)"
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION" \
    -o "$apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
  mv "$apiserver.tmp" "$apiserver"
}

build_etcd() {
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  cd "$work"
  log "etcd $ETCD_VERSION: resolving modules"
  [ -f go.mod ] || go mod init openslb.local/etcdbuild >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  log "etcd: compiling"
  go build -trimpath -ldflags "-s -w" -o "$etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$etcd.tmp" "$etcd"
}

[ -x "$etcd" ] || build_etcd
[ -x "$apiserver" ] || build_apiserver
log "ready: $apiserver $etcd"
