#!/usr/bin/env bash
# Builds Kubernetes v1.20.2 from Debian bookworm's `kubernetes` source package (fully
# vendored) with Debian's Go 1.19, once, into a cache outside the repository. No prebuilt
# Kubernetes binary or image can be downloaded on the machines this runs on.
#
#   build.sh ensure            kube-apiserver + etcd (what envtest needs); prints the bin dir
#   build.sh ensure all        also kube-controller-manager, kube-scheduler, kubelet,
#                              kube-proxy, kubectl and the pause binary (the cluster)
#
# Cache: $CHATGW_K8S_CACHE (default /var/cache/chatgateway-k8s). Cold on 2 cores: about
# 10 minutes for kube-apiserver, a few more for the rest (they share most packages).
# Needs root for apt (golang-1.19-go, etcd-server, the reflect2 fix, gcc for pause).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

# Bump when the recipe below changes what a binary contains: everything is rebuilt.
RECIPE=2
VERSION=v1.20.2
SRC_STAMP=$K8S_CACHE/src/.prepared-$RECIPE

# Debian's source package, through a private apt setup that reads the deb-src indexes of
# the mirrors the system already uses (the system's apt configuration is not changed).
fetch_source() {
  local apt=$K8S_CACHE/apt
  mkdir -p "$apt/lists/partial" "$apt/parts" "$apt/src"
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed 's/^Types: deb$/Types: deb-src/' "$f" > "$apt/parts/$(basename "$f")"
  done
  if [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$apt/parts/base.list"
  fi
  local opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt/parts"
              -o Dir::State::Lists="$apt/lists" -o Debug::NoLocking=1)
  if ! ls "$apt/src"/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    log "downloading Debian's kubernetes source package"
    apt-get "${opts[@]}" update -qq >&2
    (cd "$apt/src" && apt-get "${opts[@]}" source --download-only -qq kubernetes >&2)
  fi
  ls "$apt/src"/kubernetes_*.orig.tar.gz >/dev/null 2>&1 || die "kubernetes source not downloaded"
}

# The tree under GOPATH (the source predates Go modules for its own build), with Debian's
# patches, the reflect2 fix and the generated OpenAPI definitions the tarball lacks.
prepare_source() {
  [ -f "$SRC_STAMP" ] && return 0
  fetch_source
  local apt=$K8S_CACHE/apt src
  rm -rf "$K8S_CACHE/src" && mkdir -p "$K8S_CACHE/src" "$K8S_CACHE/gopath/src/k8s.io"
  log "unpacking the source"
  tar -xzf "$apt/src"/kubernetes_*.orig.tar.gz -C "$K8S_CACHE/src"
  src=$(ls -d "$K8S_CACHE"/src/kubernetes-*/)
  src=${src%/}
  # Debian's own patches (kubectl printing fixes, CVE-2021-25743), in series order.
  local deb=$K8S_CACHE/src/debian-pkg p
  mkdir -p "$deb" && tar -xJf "$apt/src"/kubernetes_*.debian.tar.xz -C "$deb"
  while read -r p; do
    [ -n "$p" ] && [ "${p#\#}" = "$p" ] || continue
    patch -d "$src" -p1 -s --forward < "$deb/debian/patches/$p" >&2 || die "Debian patch $p does not apply"
  done < "$deb/debian/patches/series"
  # v1.20.2 vendors github.com/modern-go/reflect2 1.0.1, which corrupts memory under
  # Go >= 1.18: the apiserver dies with "fatal error: fault" on the first custom-resource
  # create. Debian packages reflect2 1.0.2, which fixes it (same API).
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2 vendored=$src/vendor/github.com/modern-go/reflect2
  [ -d "$r2" ] || die "$r2 missing (golang-github-modern-go-reflect2-dev)"
  rm -rf "$vendored" && mkdir -p "$vendored"
  cp "$r2"/*.go "$r2"/*.s "$vendored/" && rm -f "$vendored"/*_test.go
  ln -sfn "$src" "$K8S_CACHE/gopath/src/k8s.io/kubernetes"
  (
    go_env
    cd "$K8S_CACHE/gopath/src/k8s.io/kubernetes"
    log "building openapi-gen"
    nice "$GO" build -o "$K8S_CACHE/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
    log "generating pkg/generated/openapi (the source package does not ship it)"
    local dirs
    dirs=$(grep -Rl --include='*.go' '+k8s:openapi-gen=' pkg vendor/k8s.io/ \
           | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
           | xargs -n1 dirname | LC_ALL=C sort -u | sed 's#^#k8s.io/kubernetes/#' | paste -sd,)
    "$K8S_CACHE/openapi-gen" -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi \
      -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
      -r "$K8S_CACHE/violations.report" >&2
  )
  touch "$SRC_STAMP"
}

go_env() {
  export GO111MODULE=off GOPATH=$K8S_CACHE/gopath GOCACHE=$K8S_CACHE/gocache CGO_ENABLED=0
}

# The version the binaries report (`kubectl version`, the node's kubelet version, Helm's
# kubeVersion checks): without these the build says v0.0.0-master.
ldflags() {
  local pkg k v flags=()
  for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
    for kv in gitVersion=$VERSION gitMajor=1 gitMinor=20 gitTreeState=clean \
              gitCommit=debian-bookworm buildDate=2021-01-13T00:00:00Z; do
      k=${kv%%=*} v=${kv#*=}
      flags+=("-X $pkg.$k=$v")
    done
  done
  echo "-s -w ${flags[*]}"
}

build_go() {
  local name=$1 out=$K8S_BIN/$1
  [ -x "$out" ] && [ -f "$out.recipe-$RECIPE" ] && return 0
  prepare_source
  log "building $name"
  (
    go_env
    cd "$K8S_CACHE/gopath/src/k8s.io/kubernetes"
    nice "$GO" build -ldflags "$(ldflags)" -o "$out.new" "./cmd/$name"
  )
  mv "$out.new" "$out"
  rm -f "$out".recipe-* && touch "$out.recipe-$RECIPE"
}

# The pod sandbox's pause process, from the same tree (static, so it runs in an empty image).
build_pause() {
  local out=$K8S_BIN/pause
  [ -x "$out" ] && [ -f "$out.recipe-$RECIPE" ] && return 0
  prepare_source
  log "building pause"
  gcc -Os -static -o "$out" "$K8S_CACHE/gopath/src/k8s.io/kubernetes/build/pause/linux/pause.c"
  rm -f "$out".recipe-* && touch "$out.recipe-$RECIPE"
}

ensure() {
  local what=${1:-apiserver}
  case "$what" in apiserver|all) ;; *) die "usage: build.sh ensure [apiserver|all]" ;; esac
  apt_install golang-1.19-go etcd-server golang-github-modern-go-reflect2-dev openssl patch xz-utils
  [ "$what" = all ] && apt_install gcc libc6-dev
  mkdir -p "$K8S_BIN"
  build_go kube-apiserver
  ln -sfn "$(command -v etcd)" "$K8S_BIN/etcd"
  if [ "$what" = all ]; then
    local c
    for c in kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do build_go "$c"; done
    build_pause
    # Everything is built: the unpacked tree and Go's build cache (about 2 GB) go, since
    # these machines have little disk. A recipe change rebuilds from the source package.
    rm -rf "$K8S_CACHE/src" "$K8S_CACHE/gopath" "$K8S_CACHE/gocache"
  fi
}

case "${1:-}" in
  ensure)
    started=$SECONDS
    with_lock "$K8S_CACHE/.build.lock" ensure "${2:-apiserver}"
    [ $((SECONDS - started)) -gt 5 ] && log "build took $((SECONDS - started)) s"
    echo "$K8S_BIN" ;;
  *) echo "usage: $0 ensure [apiserver|all]" >&2; exit 2 ;;
esac
