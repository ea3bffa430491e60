# Shared by the e2e/k8s scripts (sourced, not run): the cache location, logging, apt
# installs on demand and a small PKI with openssl. Nothing here touches the repository.

# Everything built or downloaded lives here, outside the repository, and survives clones.
K8S_CACHE=${CHATGW_K8S_CACHE:-/var/cache/chatgateway-k8s}
K8S_BIN=$K8S_CACHE/bin
GO=/usr/lib/go-1.19/bin/go

log() { echo "k8s: $*" >&2; }
die() { log "error: $*"; exit 1; }

# apt_install PKG...: installs the packages that are not installed yet (Debian; root).
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "need root to install: ${missing[*]}"
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
}

# free_port: a free port on 127.0.0.1 for a server started next. Drawn from 20000-29999, as
# e2e::process::free_port does: below the ephemeral ports every outgoing connection takes
# one of (the tests open thousands meanwhile) and below NodePorts (kube-proxy holds them).
free_port() {
  python3 -c '
import random, socket
for _ in range(10000):
    port = random.randrange(20000, 30000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in 20000-29999")
'
}

# with_lock FILE CMD...: one builder at a time (tests start envtests in parallel).
with_lock() {
  local file=$1; shift
  mkdir -p "$(dirname "$file")"
  ( flock 9; "$@" ) 9>"$file"
}

# pki_ca DIR NAME: a self-signed CA DIR/NAME.crt + DIR/NAME.key.
pki_ca() {
  local dir=$1 name=$2
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.crt" 2>/dev/null
}

# pki_cert DIR CA NAME CN [O] [SANS] [USAGE]: a certificate signed by DIR/CA.crt.
#   SANS: "DNS:a,IP:1.2.3.4" (server certificates); USAGE: serverAuth or clientAuth.
pki_cert() {
  local dir=$1 ca=$2 name=$3 cn=$4 org=${5:-} sans=${6:-} usage=${7:-clientAuth}
  local subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org$subj"
  local ext="$dir/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } > "$ext"
  openssl req -new -newkey rsa:2048 -nodes -subj "$subj" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" \
    -CAcreateserial -days 3650 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
}

# proc_start PID: the process's start time (field 22 of /proc/PID/stat, counted after the
# parenthesised command name, which may hold spaces); empty when there is no such process.
proc_start() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# write_pidfile FILE PID: the PID with its start time. PIDs wrap (a test run spawns
# thousands of processes): a later reader must not take another process for ours.
write_pidfile() { echo "$2 $(proc_start "$2")" > "$1"; }

# pidfile_pid FILE: the PID in FILE if that process still runs and is the one written
# there (same start time; a file written with the PID alone is taken at its word).
pidfile_pid() {
  local pid start
  [ -f "$1" ] || return 1
  read -r pid start < "$1" || [ -n "${pid:-}" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ -z "${start:-}" ] || [ "$(proc_start "$pid")" = "$start" ] || return 1
  echo "$pid"
}

# stop_pidfile FILE [SECONDS]: SIGTERM the process in FILE, wait, SIGKILL if it lingers.
stop_pidfile() {
  local file=$1 secs=${2:-20} pid i
  [ -f "$file" ] || return 0
  if pid=$(pidfile_pid "$file") && kill "$pid" 2>/dev/null; then
    for i in $(seq 1 $((secs * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}
