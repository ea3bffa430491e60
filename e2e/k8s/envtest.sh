#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver v1.20.2) on loopback for operator
# and chart tests, like controller-runtime's envtest: no controllers, no kubelet. The
# binaries come from build.sh (built once from Debian's source, cached).
#
#   envtest.sh start DIR   start etcd + apiserver on free loopback ports; writes
#                          DIR/kubeconfig (admin token, CA-verified) and DIR/env
#   envtest.sh stop DIR    stop what start started (by pid)
#
# DIR/env (shell `export` lines) publishes what tests need besides the kubeconfig:
#   ENVTEST_SERVER, ENVTEST_TOKEN           the API server URL and the admin token
#   ENVTEST_CA                              CA of the serving certificate
#   ENVTEST_FRONT_PROXY_CA                  CA an extension API server (APIService) must
#                                           trust for the aggregator's client certificate
#   ENVTEST_FRONT_PROXY_CLIENT_CERT/_KEY    that client certificate (CN front-proxy-client)
# The aggregation layer is on (requestheader flags, --enable-aggregator-routing=true): an
# APIService backed by a Service whose Endpoints name an address of this machine is
# proxied to it. Limits of v1.20: no autoscaling/v2 and no policy/v1 (v2beta2 and v1beta1
# are served), CEL rules in CRDs are ignored.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

TOKEN=envtest-admin-token

start() {
  local dir=${1:?usage: start DIR}; mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  apt_install curl openssl
  local bin; bin=$(bash "$here/build.sh" ensure)
  local ep pp ap; ep=$(free_port); pp=$(free_port); ap=$(free_port)
  local pki=$dir/pki; mkdir -p "$pki"
  pki_ca "$pki" ca
  pki_cert "$pki" ca apiserver kube-apiserver "" "IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc" serverAuth
  pki_ca "$pki" front-proxy-ca
  pki_cert "$pki" front-proxy-ca front-proxy-client front-proxy-client
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  echo "$TOKEN,admin,admin,system:masters" > "$dir/tokens.csv"

  "$bin/etcd" --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$ep" \
    --advertise-client-urls "http://127.0.0.1:$ep" --listen-peer-urls "http://127.0.0.1:$pp" \
    >"$dir/etcd.log" 2>&1 &
  write_pidfile "$dir/etcd.pid" $!
  "$bin/kube-apiserver" --etcd-servers="http://127.0.0.1:$ep" --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 --secure-port="$ap" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" --authorization-mode=RBAC \
    --token-auth-file="$dir/tokens.csv" --service-cluster-ip-range=10.0.0.0/24 \
    --disable-admission-plugins=ServiceAccount \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" --proxy-client-key-file="$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true >"$dir/apiserver.log" 2>&1 &
  write_pidfile "$dir/apiserver.pid" $!

  cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster: {server: "https://127.0.0.1:$ap", certificate-authority-data: "$(base64 -w0 < "$pki/ca.crt")"}
users:
- name: admin
  user: {token: $TOKEN}
contexts:
- name: envtest
  context: {cluster: envtest, user: admin, namespace: default}
current-context: envtest
KC
  cat > "$dir/env" <<ENV
export KUBECONFIG=$dir/kubeconfig
export ENVTEST_SERVER=https://127.0.0.1:$ap
export ENVTEST_TOKEN=$TOKEN
export ENVTEST_CA=$pki/ca.crt
export ENVTEST_FRONT_PROXY_CA=$pki/front-proxy-ca.crt
export ENVTEST_FRONT_PROXY_CLIENT_CERT=$pki/front-proxy-client.crt
export ENVTEST_FRONT_PROXY_CLIENT_KEY=$pki/front-proxy-client.key
ENV
  local i
  for i in $(seq 1 240); do
    if curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$ap/readyz" >/dev/null 2>&1; then
      log "envtest ready: KUBECONFIG=$dir/kubeconfig"; return 0
    fi
    pidfile_pid "$dir/apiserver.pid" >/dev/null || break
    sleep 0.5
  done
  log "kube-apiserver did not become ready; last lines of $dir/apiserver.log:"
  tail -n 20 "$dir/apiserver.log" >&2 || true
  stop "$dir"; return 1
}

stop() {
  local dir=${1:?usage: stop DIR}
  stop_pidfile "$dir/apiserver.pid"
  stop_pidfile "$dir/etcd.pid"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start DIR | stop DIR" >&2; exit 2 ;;
esac
