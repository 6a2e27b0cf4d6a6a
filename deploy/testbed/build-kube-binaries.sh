#!/usr/bin/env bash
# Build the Kubernetes binaries used by the test bed, once per version: etcd and
# kube-apiserver (the API-only fixture, devbed/kube.py), and for the one-node cluster
# (devbed/cluster.py) kubelet, kube-controller-manager, kube-scheduler, containerd 2 with
# ctr and its runc shim, and the static Go binaries of the test images (deploy/testbed/images,
# and the Gateway API conformance suite's echo-basic).
#
# No registry reachable here ships these, so they are built from Go modules. The module
# k8s.io/kubernetes replaces every staging module with a path inside its own tree, and a
# dependency's replace directives are ignored; a throwaway module points each staging
# module at its published v0.X.Y instead.
# Binaries land in $OPENSLB_CACHE/bin (outside the repository), keyed by version,
# so only the first run builds. First builds measured on 2 cores with the Go module cache
# already filled: kube-apiserver and etcd about 12 minutes; kubelet, kube-controller-manager and
# kube-scheduler together 18 minutes with an empty Go build cache (221 s once the
# apiserver's packages are in it); containerd, ctr and the shim 166 s. The test images'
# binaries are rebuilt every run (seconds: Go's build cache makes it a relink). The Gateway
# API's CRDs (standard and experimental channels) are copied out of the Go module
# sigs.k8s.io/gateway-api into $OPENSLB_CACHE/gateway-api-VERSION, and its conformance
# suite compiled (about 2 minutes).
set -euo pipefail

KUBE_VERSION="${OPENSLB_KUBE_VERSION:-v1.37.2}"
ETCD_VERSION="${OPENSLB_ETCD_VERSION:-v3.6.16}"
CONTAINERD_VERSION="${OPENSLB_CONTAINERD_VERSION:-v2.4.2}"
GATEWAY_API_VERSION="${OPENSLB_GATEWAY_API_VERSION:-v1.6.3}"
CACHE="${OPENSLB_CACHE:-$HOME/.cache/openslb}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

apiserver="$BIN/kube-apiserver-$KUBE_VERSION"
etcd="$BIN/etcd-$ETCD_VERSION"
node_binaries=(kubelet kube-controller-manager kube-scheduler)
containerd_dir="$BIN/containerd-$CONTAINERD_VERSION"
containerd_binaries=(containerd ctr containerd-shim-runc-v2)
echo_basic="$BIN/images/echo-basic-$GATEWAY_API_VERSION"
gateway_crds="$CACHE/gateway-api-$GATEWAY_API_VERSION"
conformance="$BIN/gateway-conformance-$GATEWAY_API_VERSION"
COREDNS_VERSION="${OPENSLB_COREDNS_VERSION:-v1.12.2}"
coredns="$BIN/images/coredns-$COREDNS_VERSION"
images_src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/images"
staging="v0.${KUBE_VERSION#v1.}"

log() { printf '[build-kube] %s\n' "$*" >&2; }

# go.mod of a throwaway module (named $1, in the current directory) that requires
# k8s.io/kubernetes with each staging module pointed at its published version.
write_kube_gomod() {
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  {
    echo "module $1"
    echo
    sed -n 's/^go \(.*\)$/go \1/p' "$gomod"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    grep -E '=> \./staging/src/' "$gomod" | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
  } > go.mod
}

build_apiserver() {
  local work="$CACHE/build/kube-$KUBE_VERSION"
  mkdir -p "$work"
  cd "$work"
  log "kube-apiserver $KUBE_VERSION (staging modules $staging): resolving modules"
  write_kube_gomod openslb.local/kubebuild
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

# One `go build` for the three: the packages they share compile once.
build_node() {
  local work="$CACHE/build/kube-node-$KUBE_VERSION"
  mkdir -p "$work"
  cd "$work"
  log "kubelet, kube-controller-manager, kube-scheduler $KUBE_VERSION: resolving modules"
  write_kube_gomod openslb.local/kubenodebuild
  cat > tools.go <<'GO'
//go:build tools

package kubenodebuild

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  go mod tidy -e >/dev/null 2>&1 || true
  local pkgs=() b
  for b in "${node_binaries[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  go get "${pkgs[@]/%/@$KUBE_VERSION}"
  log "kubelet, kube-controller-manager, kube-scheduler: compiling (18 minutes on 2 cores from an empty Go cache)"
  rm -rf out
  mkdir out
  # with -o DIR/ and several main packages, go build writes each binary into DIR
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION" \
    -o out/ "${pkgs[@]}"
  for b in "${node_binaries[@]}"; do mv "out/$b" "$BIN/$b-$KUBE_VERSION"; done
}

# Pure Go (no cgo): btrfs needs cgo and devmapper/zfs are not used, so their tags drop them.
build_containerd() {
  local work="$CACHE/build/containerd-$CONTAINERD_VERSION"
  local module=github.com/containerd/containerd/v2
  mkdir -p "$work"
  rm -rf "$work/out"
  log "containerd $CONTAINERD_VERSION, ctr, containerd-shim-runc-v2: compiling"
  # containerd's go.mod has no replace directives, so `go install pkg@version` works directly
  CGO_ENABLED=0 GOBIN="$work/out" go install -trimpath \
    -tags "no_btrfs no_devmapper no_zfs urfave_cli_no_docs osusergo netgo static_build" \
    -ldflags "-s -w -X $module/version.Version=$CONTAINERD_VERSION -X $module/version.Package=$module" \
    "$module/cmd/containerd@$CONTAINERD_VERSION" "$module/cmd/ctr@$CONTAINERD_VERSION" \
    "$module/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  mkdir -p "$containerd_dir"
  local b
  for b in "${containerd_binaries[@]}"; do mv "$work/out/$b" "$containerd_dir/$b"; done
}

# The test images' programs (pause, sample-http): static, standard library only; devbed/images.py
# packs each into a one-layer OCI image.
build_images() {
  mkdir -p "$BIN/images"
  cd "$images_src"
  local dir name
  for dir in */; do
    name=${dir%/}
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/images/$name.tmp" "./$name"
    mv "$BIN/images/$name.tmp" "$BIN/images/$name"
  done
}

# A throwaway module (in $CACHE/build/$1-VERSION, made the current directory) that
# requires the Gateway API's conformance module and imports package $2 of it. That
# module's replace of sigs.k8s.io/gateway-api is ignored in ours, so ours points it at the
# same release.
conformance_module() {
  local work="$CACHE/build/$1-$GATEWAY_API_VERSION"
  mkdir -p "$work"
  cd "$work"
  log "$1 $GATEWAY_API_VERSION: compiling"
  printf '%s\n' "module openslb.local/$1build" "" "go 1.26.0" "" \
    "require sigs.k8s.io/gateway-api/conformance $GATEWAY_API_VERSION" "" \
    "replace sigs.k8s.io/gateway-api => sigs.k8s.io/gateway-api $GATEWAY_API_VERSION" > go.mod
  printf '%s\n' "//go:build tools" "" "package tools" "" "import _ \"$2\"" > tools.go
  go mod tidy -e >/dev/null 2>&1 || true
}

# The Gateway API conformance suite's echo server (HTTP, h2c, gRPC, TCP, UDP echo), the
# image its manifests expect.
build_echo_basic() {
  mkdir -p "$BIN/images"
  conformance_module echo-basic sigs.k8s.io/gateway-api/conformance/echo-basic
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$echo_basic.tmp" \
    sigs.k8s.io/gateway-api/conformance/echo-basic
  mv "$echo_basic.tmp" "$echo_basic"
}

# The Gateway API conformance suite (its TestConformance, compiled as a test binary), which
# bench/gateway.py and tests/e2e run against the local platform.
build_conformance() {
  conformance_module conformance sigs.k8s.io/gateway-api/conformance
  go test -c -o "$conformance.tmp" sigs.k8s.io/gateway-api/conformance
  mv "$conformance.tmp" "$conformance"
}

# CoreDNS, the image of the conformance suite's UDP backend: its infra namespace must be
# ready before any test runs. Static, from the Go module proxy.
build_coredns() {
  mkdir -p "$BIN/images"
  log "coredns $COREDNS_VERSION: compiling"
  GOBIN="$BIN/images/coredns.tmp" CGO_ENABLED=0 \
    go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  mv "$BIN/images/coredns.tmp/coredns" "$coredns"
  rmdir "$BIN/images/coredns.tmp"
}

# The CRDs the test bed's API server installs (devbed/kube.py install_gateway_api).
copy_gateway_crds() {
  local dir
  dir=$(cd /tmp && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  rm -rf "$gateway_crds.tmp"
  mkdir -p "$gateway_crds.tmp"
  cp -r "$dir/config/crd/standard" "$dir/config/crd/experimental" "$gateway_crds.tmp/"
  chmod -R u+w "$gateway_crds.tmp"
  mv "$gateway_crds.tmp" "$gateway_crds"
}

all_present() {
  local f
  for f in "$@"; do [ -x "$f" ] || return 1; done
}

[ -x "$etcd" ] || build_etcd
[ -x "$apiserver" ] || build_apiserver
node_paths=()
for b in "${node_binaries[@]}"; do node_paths+=("$BIN/$b-$KUBE_VERSION"); done
all_present "${node_paths[@]}" || build_node
all_present "${containerd_binaries[@]/#/$containerd_dir/}" || build_containerd
build_images
[ -x "$echo_basic" ] || build_echo_basic
[ -d "$gateway_crds/standard" ] || copy_gateway_crds
[ -x "$conformance" ] || build_conformance
[ -x "$coredns" ] || build_coredns
log "ready: $apiserver $etcd ${node_paths[*]} $containerd_dir/ $BIN/images/"
