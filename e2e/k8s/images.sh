#!/usr/bin/env bash
# Container images for the local cluster, built on this machine with no registry:
#
#   images.sh bases    Debian bookworm root filesystems (debootstrap, from the machine's
#                      Debian mirror) imported into Docker as base images:
#                        chatgateway-local/debian:bookworm      runtime base (minbase)
#                        chatgateway-local/redis-base:bookworm  minbase + redis-server
#                        chatgateway-local/rust:VERSION         minbase + gcc + this
#                          machine's Rust toolchain + the workspace's crates, vendored
#                          (tag: toolchain version and a hash of Cargo.lock), so that
#                          cargo builds offline
#   images.sh build    bases, then the repository's Dockerfiles with those bases (build
#                      args BUILDER_IMAGE/RUNTIME_IMAGE/BASE_IMAGE) and --network none:
#                        ghcr.io/chatgateway/chat-gateway:APP_VERSION
#                        ghcr.io/chatgateway/chat-gateway-operator:APP_VERSION
#                        chatgateway-e2e/redis:bookworm          (e2e/images/redis)
#                        chatgateway-e2e/otlp-receiver:dev       (e2e/images/otlp-receiver)
#   images.sh list     the tags `build` makes, one per line
#
# Talks to the Docker engine in DOCKER_HOST (cluster.sh env sets the cluster's private one,
# whose data root is in $CHATGW_K8S_CACHE/docker: images and BuildKit's cache, with cargo's
# target dir as a cache mount, outlive the cluster). debootstrap's packages are cached in
# $CHATGW_K8S_CACHE/images/debs. An unchanged tree rebuilds nothing (BuildKit keys COPY on
# content); a changed one recompiles only what changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"

DOCKER=${DOCKER:-/usr/bin/docker}   # Debian's 20.10 client speaks BuildKit without buildx
export DOCKER_BUILDKIT=1
IMG=$K8S_CACHE/images
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/chat-gateway/Chart.yaml")
RUST_VERSION=$(rustc --version | awk '{print $2}')
BUILDER_RECIPE=2   # bump when the builder images' content changes

GATEWAY_IMAGE=ghcr.io/chatgateway/chat-gateway:$APP_VERSION
OPERATOR_IMAGE=ghcr.io/chatgateway/chat-gateway-operator:$APP_VERSION
REDIS_IMAGE=chatgateway-e2e/redis:bookworm
OTLP_IMAGE=chatgateway-e2e/otlp-receiver:dev

has_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror apt already uses (deb822 or one-line sources).
mirror() {
  local m
  m=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  [ -n "$m" ] || m=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# rootfs NAME [PACKAGES]: a debootstrapped bookworm (minbase) as a tarball, built once.
rootfs() {
  local name=$1 include=${2:-} tar=$IMG/$1.tar
  [ -f "$tar" ] && { echo "$tar"; return; }
  apt_install debootstrap
  local dir=$IMG/rootfs-$name
  rm -rf "$dir" && mkdir -p "$dir" "$IMG/debs"
  log "debootstrap $name${include:+ (+$include)}"
  # debootstrap replaces start-stop-daemon in the target while it installs, so package
  # scripts (redis-server's) start nothing.
  nice debootstrap --variant=minbase ${include:+--include="$include"} --cache-dir="$IMG/debs" \
    bookworm "$dir" "$(mirror)" >"$IMG/debootstrap-$name.log" 2>&1 \
    || { tail -n 20 "$IMG/debootstrap-$name.log" >&2; die "debootstrap $name failed"; }
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* \
    "$dir"/usr/share/man/* "$dir"/usr/share/locale/*
  tar -C "$dir" --numeric-owner -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
  rm -rf "$dir"
  echo "$tar"
}

# base_image TAG NAME [PACKAGES]: a debootstrapped rootfs imported as TAG, once (the tarball
# goes after the import: Docker's data root, in the cache too, keeps the image).
base_image() {
  local tag=$1 name=$2 include=${3:-}
  has_image "$tag" && return 0
  local tar; tar=$(rootfs "$name" "$include")
  log "importing $tag"
  "$DOCKER" import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$tar" "$tag" >/dev/null
  rm -f "$tar"
}

# The builder: the toolchain this machine builds the workspace with (no other can be
# fetched here) and every crate of Cargo.lock, with cargo pointed at them and offline.
builder() {
  local lock; lock=$(sha256sum "$root/Cargo.lock" | cut -c1-12)
  local tag=chatgateway-local/rust:$RUST_VERSION-r$BUILDER_RECIPE-$lock
  has_image "$tag" && { echo "$tag"; return; }
  local toolchain_tag=chatgateway-local/rust-toolchain:$RUST_VERSION-r$BUILDER_RECIPE
  if ! has_image "$toolchain_tag"; then
    base_image chatgateway-local/debian-build:bookworm build gcc,libc6-dev,make,pkg-config,ca-certificates
    local ctx=$IMG/ctx-toolchain sysroot
    sysroot=$(rustc --print sysroot)
    rm -rf "$ctx" && mkdir -p "$ctx/rust/bin"
    cp "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$ctx/rust/bin/"
    cp -a "$sysroot/lib" "$ctx/rust/lib"
    [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/rust/libexec"
    cat > "$ctx/Dockerfile" <<'DF'
FROM chatgateway-local/debian-build:bookworm
COPY rust /usr/local/rust
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The test machines have little disk: no debuginfo in the cached release target dir
# (the workspace profile asks for line tables), no incremental state.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_INCREMENTAL=0
DF
    docker_build rust-toolchain --network none -t "$toolchain_tag" "$ctx"
    rm -rf "$ctx"
  fi
  local ctx=$IMG/ctx-vendor-$lock
  rm -rf "$ctx" && mkdir -p "$ctx"
  log "vendoring the crates of Cargo.lock"
  (cd "$root" && cargo vendor --locked --versioned-dirs -q "$ctx/vendor" >/dev/null)
  cat > "$ctx/config.toml" <<'CFG'
[source.crates-io]
replace-with = "vendored"
[source.vendored]
directory = "/usr/local/cargo/vendor"
[net]
offline = true
CFG
  cat > "$ctx/Dockerfile" <<DF
FROM $toolchain_tag
COPY vendor /usr/local/cargo/vendor
COPY config.toml /usr/local/cargo/config.toml
DF
  docker_build rust-vendored --network none -t "$tag" "$ctx"
  rm -rf "$ctx"
  echo "$tag"
}

bases() {
  mkdir -p "$IMG"
  base_image chatgateway-local/debian:bookworm base ca-certificates
  base_image chatgateway-local/redis-base:bookworm redis redis-server
  builder >/dev/null
}

# docker_build NAME ARGS...: a build whose BuildKit log goes to $IMG/NAME.log (shown on failure).
docker_build() {
  local name=$1; shift
  log "building $name"
  "$DOCKER" build --progress=plain "$@" >"$IMG/$name.log" 2>&1 \
    || { tail -n 40 "$IMG/$name.log" >&2; die "docker build of $name failed (log: $IMG/$name.log)"; }
}

build() {
  bases
  local b; b=$(builder)
  local common=(--network none --build-arg "BUILDER_IMAGE=$b" --build-arg "RUNTIME_IMAGE=chatgateway-local/debian:bookworm")
  local started=$SECONDS
  docker_build gateway "${common[@]}" -f "$root/gateway/Dockerfile" -t "$GATEWAY_IMAGE" "$root"
  docker_build operator "${common[@]}" -f "$root/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$root"
  docker_build otlp-receiver "${common[@]}" -f "$root/e2e/images/otlp-receiver/Dockerfile" -t "$OTLP_IMAGE" "$root"
  docker_build redis --network none --build-arg BASE_IMAGE=chatgateway-local/redis-base:bookworm \
    -t "$REDIS_IMAGE" "$root/e2e/images/redis"
  log "images built in $((SECONDS - started)) s"
  prune "$b"
}

# Disk is scarce here: builders of an older Cargo.lock and images replaced by a rebuild go.
prune() {
  local keep=$1 tag
  for tag in $("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' chatgateway-local/rust); do
    [ "$tag" = "$keep" ] || "$DOCKER" image rm "$tag" >/dev/null 2>&1 || true
  done
  "$DOCKER" image prune -f >/dev/null
}

list() { printf '%s\n' "$GATEWAY_IMAGE" "$OPERATOR_IMAGE" "$REDIS_IMAGE" "$OTLP_IMAGE"; }

case "${1:-}" in
  bases) with_lock "$K8S_CACHE/.images.lock" bases ;;
  build) with_lock "$K8S_CACHE/.images.lock" build ;;
  list) list ;;
  *) echo "usage: $0 bases | build | list" >&2; exit 2 ;;
esac
