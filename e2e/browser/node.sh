#!/usr/bin/env bash
# Prints the path of a Node.js for the tests of /client.js (`e2e/tests/client_js.rs`):
# version 20 or newer, which has a global WebSocket (behind --experimental-websocket on
# 20). $NODE or the `node` on PATH when new enough; otherwise one from the npm registry
# (the package node-linux-<arch>, a plain binary) installed once into a cache outside the
# repository. Debian 12 ships Node 18, which has no WebSocket.
set -euo pipefail
version=22.23.5
cache=${CHATGW_NODE_CACHE:-/var/cache/chatgateway-node}
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64) arch=arm64 ;;
  *) echo "node.sh: no npm node package for $(uname -m): install Node 20+ and set NODE" >&2; exit 1 ;;
esac
cached=$cache/node_modules/node-linux-$arch/bin/node

new_enough() {
  [ -n "$1" ] && [ -x "$1" ] \
    && "$1" -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null
}

for node in "${NODE:-}" "$(command -v node || true)" "$cached"; do
  if new_enough "$node"; then
    echo "$node"
    exit 0
  fi
done

if ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
  echo "node.sh: installing npm (Debian) to fetch Node $version" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends npm >&2
fi
echo "node.sh: installing Node $version from the npm registry into $cache" >&2
mkdir -p "$cache"
npm install --prefix "$cache" --no-audit --no-fund --no-save --silent "node-linux-$arch@$version" >&2
new_enough "$cached" || { echo "node.sh: $cached does not run" >&2; exit 1; }
echo "$cached"
