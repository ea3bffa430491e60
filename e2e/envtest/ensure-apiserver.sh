#!/usr/bin/env bash
# Makes sure the envtest kube-apiserver (../shared/envtest/kube-apiserver.sh) is built and
# usable. The v1.20.2 source vendors github.com/modern-go/reflect2 1.0.1, which corrupts
# memory under Go >= 1.18 (the script builds with Go 1.19): the apiserver dies with
# "fatal error: fault" on the first custom-resource create. This script swaps in Debian's
# reflect2 1.0.2 (golang-github-modern-go-reflect2-dev) and rebuilds once; a marker file
# in the cache records that it was done. Run by `make test` (`make envtest`).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
script=$(cd "$here/../../.." && pwd)/shared/envtest/kube-apiserver.sh
[ -f "$script" ] || { echo "envtest: $script not found (shared/ must sit beside the repo)" >&2; exit 1; }
CACHE=${ENVTEST_CACHE:-/var/cache/chatgateway-envtest}
bin=$(bash "$script" ensure)
marker=$CACHE/bin/.reflect2-1.0.2

log() { echo "envtest: $*" >&2; }

# A build from the source tarball (not a git checkout) reports v0.0.0-master on /version,
# which Helm's kubeVersion check (the chart says >=1.20.0-0) refuses. Stamp the version the
# way Kubernetes' own build does (hack/lib/version.sh), relinking only (seconds).
stamp_version() {
  "$CACHE/bin/kube-apiserver" --version 2>/dev/null | grep -q ' v1\.20\.2$' && return 0
  log "stamping kube-apiserver with version v1.20.2"
  local flags="" pkg
  for pkg in component-base/version client-go/pkg/version; do
    pkg=k8s.io/kubernetes/vendor/k8s.io/$pkg
    flags="$flags -X $pkg.gitVersion=v1.20.2 -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
  done
  (
    cd "$CACHE/gopath/src/k8s.io/kubernetes"
    GO111MODULE=off GOPATH=$CACHE/gopath GOCACHE=$CACHE/gocache CGO_ENABLED=0 \
      nice /usr/lib/go-1.19/bin/go build -ldflags "$flags" -o "$CACHE/bin/kube-apiserver.new" ./cmd/kube-apiserver >&2
  )
  mv "$CACHE/bin/kube-apiserver.new" "$CACHE/bin/kube-apiserver"
}
[ -f "$marker" ] && { stamp_version; echo "$bin"; exit 0; }

src=$(ls -d "$CACHE"/src/kubernetes-* 2>/dev/null | head -n1)
[ -n "$src" ] || { log "kubernetes source not found under $CACHE/src"; exit 1; }
if [ ! -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]; then
  log "installing golang-github-modern-go-reflect2-dev (reflect2 1.0.2)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-github-modern-go-reflect2-dev >&2 \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-github-modern-go-reflect2-dev >&2; }
fi
vendored=$src/vendor/github.com/modern-go/reflect2
log "replacing vendored reflect2 with 1.0.2 and rebuilding kube-apiserver (a few minutes)"
rm -rf "$vendored" && mkdir -p "$vendored"
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$vendored/"
rm -f "$vendored"/*_test.go
(
  cd "$CACHE/gopath/src/k8s.io/kubernetes"
  GO111MODULE=off GOPATH=$CACHE/gopath GOCACHE=$CACHE/gocache CGO_ENABLED=0 \
    nice /usr/lib/go-1.19/bin/go build -o "$CACHE/bin/kube-apiserver.new" ./cmd/kube-apiserver >&2
)
mv "$CACHE/bin/kube-apiserver.new" "$CACHE/bin/kube-apiserver"
touch "$marker"
log "kube-apiserver rebuilt with reflect2 1.0.2"
stamp_version
echo "$bin"
