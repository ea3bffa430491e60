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
[ -f "$marker" ] && { echo "$bin"; exit 0; }

log() { echo "envtest: $*" >&2; }
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
echo "$bin"
