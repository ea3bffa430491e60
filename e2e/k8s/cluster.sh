#!/usr/bin/env bash
# A single-node Kubernetes v1.20.2 cluster on this machine, for the cluster suite
# (e2e/cluster). Every binary is built from Debian's source by build.sh; every image is
# built locally (images.sh); nothing is pulled and no pod reaches beyond the machine.
#
#   cluster.sh up      start (idempotent: starts what is not running), print the env file
#   cluster.sh down    stop what up started and remove what it created
#   cluster.sh env     print `export` lines: KUBECONFIG, DOCKER_HOST, PATH (kubectl)
#   cluster.sh status  which components run
#
# What runs: a private dockerd (own socket, data root and exec root; its runtime is
# runc-wrapper), etcd, kube-apiserver (aggregation layer on), kube-controller-manager (HPA
# with a short sync period, disruption controller, garbage collector, service-account
# tokens), kube-scheduler, kubelet (dockershim, bridge CNI), kube-proxy (iptables),
# dnsmasq serving Service names (dns-sync.py). Network: bridge chatgw0 with the node at
# 10.244.0.1 (pods 10.244.0.0/24, Services 10.96.0.0/24); FORWARD accepts pod-to-pod
# and a mangle rule drops anything forwarded between the bridge and another interface
# (the egress guard). Every iptables rule it adds carries the comment "chatgateway-k8s".
#
# State: $CHATGW_CLUSTER_DIR (default /var/lib/chatgateway-cluster), wiped by down.
# Docker's images persist in $CHATGW_K8S_CACHE/docker (warm image builds).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

STATE=${CHATGW_CLUSTER_DIR:-/var/lib/chatgateway-cluster}
RUN=$STATE/run
LOGS=$STATE/logs
PKI=$STATE/pki
BRIDGE=chatgw0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/24
KUBERNETES_SVC_IP=10.96.0.1
NODE_NAME=chatgw-node
API_PORT=6443
TAG=chatgateway-k8s
DOCKER_SOCK=$RUN/docker.sock
DOCKER=/usr/bin/docker   # Debian's 20.10 client (a newer client may sit first on PATH)
PAUSE_IMAGE=k8s.gcr.io/pause:3.2

running() { pidfile_pid "$RUN/$1.pid" >/dev/null; }

# spawn NAME CMD...: start a component in its own session, logging to $LOGS/NAME.log.
spawn() {
  local name=$1; shift
  running "$name" && return 0
  log "starting $name"
  # fd 9 is the cluster lock: the component must not hold it after up returns.
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null 9>&- &
  write_pidfile "$RUN/$name.pid" $!
}

wait_for() {
  local what=$1 secs=$2 i; shift 2
  for i in $(seq 1 $((secs * 2))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "$what did not come up within ${secs}s; its errors (klog E/F lines) and last lines:"
  { grep -E '^[EF][0-9]{4}' "$LOGS/$what.log" | tail -n 15; tail -n 5 "$LOGS/$what.log"; } >&2 2>/dev/null || true
  return 1
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$STATE/admin.kubeconfig" "$@"; }

sysctl_set() {
  local key=$1 want=$2 file=/proc/sys/${1//.//}
  [ "$(cat "$file")" = "$want" ] && return 0
  grep -q "^$key " "$STATE/sysctl.saved" 2>/dev/null || echo "$key $(cat "$file")" >> "$STATE/sysctl.saved"
  echo "$want" > "$file"
}

kubeconfig() {  # kubeconfig FILE USER(cert name)
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: chatgw
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: chatgw
  context: {cluster: chatgw, user: $2}
current-context: chatgw
KC
}

pki() {
  [ -f "$PKI/.done" ] && return 0
  mkdir -p "$PKI"
  pki_ca "$PKI" ca
  pki_cert "$PKI" ca apiserver kube-apiserver "" \
    "IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    serverAuth
  pki_cert "$PKI" ca admin admin system:masters
  pki_cert "$PKI" ca apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  pki_cert "$PKI" ca controller-manager system:kube-controller-manager
  pki_cert "$PKI" ca scheduler system:kube-scheduler
  pki_cert "$PKI" ca kubelet "system:node:$NODE_NAME" system:nodes
  pki_cert "$PKI" ca kube-proxy system:kube-proxy
  pki_ca "$PKI" front-proxy-ca
  pki_cert "$PKI" front-proxy-ca front-proxy-client front-proxy-client
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  local u
  for u in admin controller-manager scheduler kubelet kube-proxy; do kubeconfig "$STATE/$u.kubeconfig" "$u"; done
  touch "$PKI/.done"
}

network() {
  sysctl_set net.ipv4.ip_forward 1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || modprobe br_netfilter 2>/dev/null || true
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || die "br_netfilter is not available (Service traffic between pods on the bridge needs it)"
  sysctl_set net.bridge.bridge-nf-call-iptables 1
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # Pod to pod on the bridge (a Docker engine elsewhere on the machine may have set the
  # FORWARD policy to DROP).
  rule filter FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  # The egress guard: nothing is forwarded between the pods' bridge and any other
  # interface, either way. mangle runs before filter, so no later ACCEPT (kube-proxy's)
  # can let it through. Service traffic is DNAT'ed to pod addresses before routing and
  # stays on the bridge; the node itself is reached without forwarding.
  rule mangle FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  rule mangle FORWARD ! -i "$BRIDGE" -o "$BRIDGE" -j DROP
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/networks" "$STATE/cni/cache"
  cat > "$STATE/cni/net.d/10-chatgw.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "chatgw",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$STATE/cni/networks",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}
  ]
}
CNI
}

# rule TABLE CHAIN ARGS...: insert once, tagged so down removes exactly these.
rule() {
  local table=$1 chain=$2; shift 2
  iptables -w -t "$table" -C "$chain" "$@" -m comment --comment "$TAG" 2>/dev/null \
    || iptables -w -t "$table" -I "$chain" 1 "$@" -m comment --comment "$TAG"
}

dockerd_up() {
  mkdir -p "$STATE/docker-exec" "$K8S_CACHE/docker"
  install -m 0755 "$here/runc-wrapper" "$STATE/runc-wrapper"
  echo '{}' > "$STATE/docker-daemon.json"   # not /etc/docker/daemon.json
  spawn dockerd /usr/sbin/dockerd --config-file "$STATE/docker-daemon.json" \
    -H "unix://$DOCKER_SOCK" --data-root "$K8S_CACHE/docker" --exec-root "$STATE/docker-exec" \
    --pidfile "$RUN/dockerd.docker-pid" --iptables=false --ip-masq=false --ip-forward=false \
    --bridge=none --storage-driver=overlay2 --exec-opt native.cgroupdriver=cgroupfs \
    --add-runtime "chatgw-runc=$STATE/runc-wrapper" --default-runtime chatgw-runc
  wait_for dockerd 60 "$DOCKER" -H "unix://$DOCKER_SOCK" info
  if [ ! -d "$STATE/etcd" ]; then
    # A new cluster: containers left in the engine's data root by one whose processes
    # were ended without `down` belong to pods that no longer exist.
    local old; old=$("$DOCKER" -H "unix://$DOCKER_SOCK" ps -aq)
    [ -z "$old" ] || "$DOCKER" -H "unix://$DOCKER_SOCK" rm -f $old >/dev/null
  fi
  # The pod sandbox image, under kubelet's default name so nothing is pulled.
  if ! "$DOCKER" -H "unix://$DOCKER_SOCK" image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
    log "importing $PAUSE_IMAGE (built from build/pause/linux/pause.c)"
    local t; t=$(mktemp -d)
    cp "$K8S_BIN/pause" "$t/pause"
    tar -C "$t" -c pause | "$DOCKER" -H "unix://$DOCKER_SOCK" import -c 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null
    rm -rf "$t"
  fi
}

control_plane() {
  local etcd_port=${ETCD_PORT:-}
  [ -f "$STATE/etcd.port" ] || { free_port > "$STATE/etcd.port"; free_port > "$STATE/etcd-peer.port"; }
  etcd_port=$(cat "$STATE/etcd.port")
  spawn etcd "$K8S_BIN/etcd" --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$(cat "$STATE/etcd-peer.port")"
  spawn apiserver "$K8S_BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=false \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true
  wait_for apiserver 120 curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$NODE_IP:$API_PORT/readyz"
  # Short HPA periods so the suite sees scaling within a minute; the ChatGateway's own
  # behavior (stabilization windows) still applies.
  spawn controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig="$STATE/controller-manager.kubeconfig" --leader-elect=false \
    --bind-address=127.0.0.1 --port=0 --secure-port=0 \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --use-service-account-credentials=true --service-cluster-ip-range="$SERVICE_CIDR" \
    --allocate-node-cidrs=false --controllers='*' \
    --horizontal-pod-autoscaler-sync-period=5s \
    --horizontal-pod-autoscaler-downscale-stabilization=30s \
    --horizontal-pod-autoscaler-initial-readiness-delay=10s
  spawn scheduler "$K8S_BIN/kube-scheduler" --kubeconfig="$STATE/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=0
}

dns() {
  mkdir -p "$STATE/dns/hosts.d"
  touch "$STATE/dns/hosts.d/services"
  spawn dns-sync python3 "$here/dns-sync.py" "https://$NODE_IP:$API_PORT" "$PKI/ca.crt" \
    "$PKI/admin.crt" "$PKI/admin.key" "$STATE/dns/hosts.d/services"
  # Only cluster names: pods get no resolver of the machine (they could not use it).
  spawn dnsmasq /usr/sbin/dnsmasq --keep-in-foreground --no-daemon --log-facility=- \
    --conf-file=/dev/null --no-resolv --no-hosts --no-poll --bind-interfaces \
    --listen-address="$NODE_IP" --except-interface=lo --hostsdir="$STATE/dns/hosts.d" \
    --local=/cluster.local/ --domain-needed --bogus-priv --pid-file= --user=root
}

node() {
  mkdir -p "$STATE/kubelet" "$STATE/kubelet-plugins" "$STATE/dockershim"
  : > "$STATE/resolv.conf"  # pods resolve cluster names only (search list from kubelet)
  spawn kubelet "$K8S_BIN/kubelet" --kubeconfig="$STATE/kubelet.kubeconfig" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --address="$NODE_IP" \
    --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" \
    --volume-plugin-dir="$STATE/kubelet-plugins" --experimental-dockershim-root-directory="$STATE/dockershim" \
    --container-runtime=docker --docker-endpoint="unix://$DOCKER_SOCK" \
    --pod-infra-container-image="$PAUSE_IMAGE" \
    --network-plugin=cni --cni-bin-dir=/usr/lib/cni --cni-conf-dir="$STATE/cni/net.d" \
    --cni-cache-dir="$STATE/cni/cache" \
    --cluster-dns="$NODE_IP" --cluster-domain=cluster.local --resolv-conf="$STATE/resolv.conf" \
    --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
    --fail-swap-on=false --eviction-hard= --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
    --client-ca-file="$PKI/ca.crt" --authentication-token-webhook=false --anonymous-auth=false \
    --read-only-port=0 --healthz-port=0 --serialize-image-pulls=false
  spawn kube-proxy "$K8S_BIN/kube-proxy" --kubeconfig="$STATE/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" --bind-address="$NODE_IP" --proxy-mode=iptables \
    --cluster-cidr="$POD_CIDR" --conntrack-max-per-core=0 \
    --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249
}

node_ready() {
  kubectl_admin get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True
}

write_env() {
  cat > "$STATE/env" <<ENV
export KUBECONFIG=$STATE/admin.kubeconfig
export DOCKER_HOST=unix://$DOCKER_SOCK
export CHATGW_CLUSTER_DIR=$STATE
export CHATGW_CLUSTER_NODE=$NODE_NAME
export PATH=$K8S_BIN:\$PATH
ENV
}

up() {
  local started=$SECONDS
  bash "$here/build.sh" ensure all >/dev/null
  # apparmor: docker.io only recommends it, but where the kernel has AppArmor on (Debian's
  # default) Docker loads its profile with apparmor_parser and no container starts without
  # it. kmod for modprobe, iproute2 for ip.
  apt_install docker.io containernetworking-plugins iptables conntrack socat dnsmasq-base curl openssl \
    ethtool util-linux python3 apparmor kmod iproute2
  mkdir -p "$RUN" "$LOGS"
  pki
  network
  dockerd_up
  control_plane
  dns
  node
  wait_for kubelet 120 node_ready
  # The token controller has made the default ServiceAccount: pods can be created.
  wait_for controller-manager 60 kubectl_admin -n default get serviceaccount default
  wait_for kube-proxy 60 iptables -w -t nat -n -L KUBE-SERVICES
  write_env
  log "cluster up in $((SECONDS - started)) s: source $STATE/env"
  echo "$STATE/env"
}

down() {
  local started=$SECONDS c
  [ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; return 0; }
  stop_pidfile "$RUN/kube-proxy.pid"
  stop_pidfile "$RUN/kubelet.pid"
  if running dockerd; then
    # Every container of this private engine is a pod's (or a build's): all ours.
    c=$("$DOCKER" -H "unix://$DOCKER_SOCK" ps -aq 2>/dev/null || true)
    [ -n "$c" ] && "$DOCKER" -H "unix://$DOCKER_SOCK" rm -f $c >/dev/null 2>&1 || true
  fi
  [ -x "$K8S_BIN/kube-proxy" ] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  for c in scheduler controller-manager dnsmasq dns-sync apiserver etcd; do stop_pidfile "$RUN/$c.pid"; done
  stop_pidfile "$RUN/dockerd.pid" 60
  # Volumes kubelet mounted (Secrets, ServiceAccount tokens) before the directory goes.
  { grep -o " $STATE/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  local table
  for table in filter mangle; do
    { iptables -w -t "$table" -S 2>/dev/null | grep -- "--comment $TAG" || true; } | sed 's/^-A /-D /' \
      | while read -r r; do eval "iptables -w -t $table $r" || true; done
  done
  # The KUBE-* chains of our kubelet (KUBE-FIREWALL, KUBE-MARK-*, canaries), which
  # kube-proxy --cleanup leaves: no other Kubernetes runs on these machines.
  local ipt chain
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      { "$ipt" -w -t "$table" -S 2>/dev/null | grep -E -- '^-A [A-Z]+ .*-j KUBE-' | grep -v -- '^-A KUBE-' || true; } \
        | sed 's/^-A /-D /' | while read -r r; do eval "$ipt -w -t $table $r" || true; done
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do
        "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -w -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[^ ]*\)$/\1/p'); do
        "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  if [ -f "$STATE/sysctl.saved" ]; then
    local key val
    while read -r key val; do echo "$val" > "/proc/sys/${key//.//}"; done < "$STATE/sysctl.saved"
  fi
  rm -rf "$STATE"
  log "cluster down in $((SECONDS - started)) s"
}

status() {
  local c
  for c in dockerd etcd apiserver controller-manager scheduler dns-sync dnsmasq kubelet kube-proxy; do
    if running "$c"; then echo "$c: running (pid $(pidfile_pid "$RUN/$c.pid"))"; else echo "$c: stopped"; fi
  done
}

[ "$(id -u)" = 0 ] || die "cluster.sh needs root (network, dockerd, kubelet)"
case "${1:-}" in
  up) with_lock "$K8S_CACHE/.cluster.lock" up ;;
  down) with_lock "$K8S_CACHE/.cluster.lock" down ;;
  env) [ -f "$STATE/env" ] || die "the cluster is not up (cluster.sh up)"; cat "$STATE/env" ;;
  status) status ;;
  *) echo "usage: $0 up | down | env | status" >&2; exit 2 ;;
esac
