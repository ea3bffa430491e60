#!/usr/bin/env bash
# `make e2e-cluster`: the cluster suite (e2e/cluster, pytest).
#   - KUBECONFIG set: runs against that cluster (its images must be there already).
#   - otherwise: starts the local single-node cluster (cluster.sh up), builds the images
#     into its Docker engine (images.sh build), runs the suite, and stops the cluster
#     again (unless it was already up, or CHATGW_KEEP_CLUSTER=1).
# Prints how long each phase took. Extra arguments go to pytest (e.g. -k rolling).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
cd "$root"
PY=${PYTHON:-$root/.venv/bin/python}
CARGO=${CARGO:-cargo}

phase() { log "$1: $(($SECONDS - $2)) s"; }

# The reference clients, built on the host; their target dir is in the cache so that a
# fresh clone (CI) rebuilds only the workspace's own crates.
fleet() {
  local t=$SECONDS target=$K8S_CACHE/cargo-target
  nice "$CARGO" build --release -q -p e2e --bin chat-fleet --target-dir "$target"
  export CHATGW_FLEET_BIN=$target/release/chat-fleet
  phase "chat-fleet built" "$t"
}

run_pytest() {
  local t=$SECONDS rc=0
  "$PY" -m pytest -p no:cacheprovider e2e/cluster -v -rs "$@" || rc=$?
  phase "cluster suite" "$t"
  return "$rc"
}

if [ -n "${KUBECONFIG:-}" ]; then
  fleet
  run_pytest "$@"
  exit
fi

was_up=false
# (Not `status | grep -q`: grep leaving early fails the pipeline under pipefail.)
status=$(bash "$here/cluster.sh" status 2>/dev/null || true)
if grep -q "^apiserver: running" <<<"$status"; then
  was_up=true
else
  # Leftovers of a cluster whose processes were ended (a finished session): start clean.
  bash "$here/cluster.sh" down
fi
started=$SECONDS
# Set before `up`: an `up` that fails half way leaves processes, rules and mounts behind,
# and the next run would take that cluster for a running one.
if ! $was_up && [ "${CHATGW_KEEP_CLUSTER:-0}" != 1 ]; then
  trap 'bash "$here/cluster.sh" down || true' EXIT
  # Bash runs the EXIT trap on a signal only through an `exit`: a CI timeout's TERM would
  # otherwise leave the cluster's daemons (setsid) running for the next run to reuse.
  trap 'exit 143' TERM
  trap 'exit 130' INT
  trap 'exit 129' HUP
fi
t=$SECONDS
env_file=$(bash "$here/cluster.sh" up)
phase "cluster up" "$t"
# shellcheck disable=SC1090
. "$env_file"
t=$SECONDS
bash "$here/images.sh" build
phase "images" "$t"
fleet
while read -r image; do
  case "$image" in
    *chat-gateway-operator:*) export CHATGW_OPERATOR_IMAGE=$image ;;
    *chat-gateway:*) export CHATGW_GATEWAY_IMAGE=$image ;;
    *redis:*) export CHATGW_REDIS_IMAGE=$image ;;
    *otlp-receiver:*) export CHATGW_OTLP_IMAGE=$image ;;
  esac
done < <(bash "$here/images.sh" list)
rc=0
run_pytest "$@" || rc=$?
phase "total" "$started"
exit "$rc"
