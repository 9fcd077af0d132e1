#!/usr/bin/env bash
# hack/testbed.sh: two UMS "systems", a and b, on this machine, for live-migration tests.
#
#   hack/testbed.sh up [--rate RATE|off] [--build]   bring everything up (idempotent)
#   hack/testbed.sh down                             remove everything `up` made
#   hack/testbed.sh status                           each component up/down (exit 0 = all up)
#   hack/testbed.sh env                              shell exports: eval "$(hack/testbed.sh env)"
#   hack/testbed.sh check                            ping, a ctr container and a CRI pod (runtime
#                                                    ums) on each system, throughput a->b
#   hack/testbed.sh coordinator a|b start|stop|kill  start or stop (SIGTERM; kill: SIGKILL, a
#                                                    crash) one system's coordinator
#
# Layout (run as root):
#   network namespaces ums-a / ums-b joined by a veth pair veth-ums-a (10.77.0.1/24, in ums-a)
#   and veth-ums-b (10.77.0.2/24, in ums-b), loopback up in each.
#   /run/ums-testbed/<sys>/   config.toml, containerd.sock (+.ttrpc), root/, state/, cni/ (CNI
#                             conf dir), cni-ipam/, logs/, containerd.log, coordinator.log, *.pid
#   a: containerd 1.6 (/usr/bin), b: containerd 2.1 ($UMS_CONTAINERD2_PREFIX/usr/bin, default
#   /opt/ums/containerd2), each running INSIDE its network namespace, detached (setsid), stdio
#   to its log; CRI with runtime handler `ums` (io.containerd.ums.v1) and
#   restrict_oom_score_adj; pods on a CNI bridge: a: umsbr-a 10.78.1.0/24, b: umsbr-b
#   10.78.2.0/24 (the bridges live in the namespaces); sandbox image localhost/ums/pause:1.
#   Images in both systems, namespaces default and k8s.io: localhost/ums/busybox:1,
#   localhost/ums/pause:1, localhost/ums/memhog:1, localhost/ums/counter:1,
#   localhost/ums/multiproc:1 (busybox + the static workload, entrypoint the workload).
#   Coordinators (if $UMS_BIN_DIR/ums exists): `ums coordinator --listen <ip>:7400 ...` in each
#   namespace, with the shared token /run/ums-testbed/token, over TLS (https://<ip>:7400) with
#   the certificates of /run/ums-testbed/tls/: ca.pem (the test bed's own CA, made once), a.pem /
#   a.key and b.pem / b.key (each for its system's IP, signed by that CA). Clients: `ums ...
#   --tls-ca tls/ca.pem --token-file token`, or the UMS_TLS_CA / UMS_TOKEN_FILE that `env` prints.
#
# Options of `up`:
#   --rate RATE   shape the veth in both directions with tc tbf (e.g. 1gbit, 500mbit); `off`
#                 removes the shaping; without --rate the link is left unshaped.
#   --build       cargo build first: the shim and `ums` (release), the tools, the workloads.
#
# What `up` builds by itself: only the test tools when they are missing (ums-mkimage and
# ums-testbed, `cargo build -p ums-tests`, in target/debug) and the workloads when missing
# (hack/build-workloads.sh). It never builds the shim or the coordinator unless --build is given:
# a missing shim is an error.
#
# Environment:
#   UMS_BIN_DIR             containerd-shim-ums-v1 and ums (default: target/release if the shim
#                           is there, else target/debug); first on containerd's PATH
#   UMS_CONTAINERD2_PREFIX  containerd 2.1's prefix (default /opt/ums/containerd2)
#   UMS_TESTBED_DIR         base dir (default /run/ums-testbed)
#   UMS_TOOLS_DIR           ums-mkimage and ums-testbed (default target/debug)
#   UMS_WORKLOADS_DIR       static memhog/counter/multiproc (default: hack/build-workloads.sh)
#   UMS_TESTBED_TBF_BURST   tbf burst for --rate (default 512k)
#   UMS_TESTBED_NETNS_PREFIX  namespaces <prefix>-a/-b, veths veth-<prefix>-a/-b (default ums):
#                           with another UMS_TESTBED_DIR, a second test bed next to the first
#   UMS_TESTBED_TLS         0: coordinators on plain HTTP (default 1: TLS when `ums coordinator`
#                           has --tls-cert)
#
# Why nsenter and not `ip netns exec`: `ip netns exec` also unshares the mount namespace and
# remounts /sys, which hides /sys/fs/cgroup from containerd, runc and CRIU (checked on this
# machine: the cgroup mounts are gone inside). The daemons are started with
# `nsenter --net=/run/netns/ums-<sys>`: the network namespace of the system, the host's mounts.
#
# cgroups: both systems share this host's cgroup hierarchies. ctr sets a container's cgroup to
# /<namespace>/<id> on the client side, so containers with the same namespace and id on a and b
# SHARE a cgroup (and `ctr tasks kill --all` on one kills both): use distinct ids across the
# systems. The coordinators get --cgroup-parent /<prefix>-testbed-<sys> (when they have the
# option) for the containers they create.
#
# `down` kills every process that belongs to the test bed: the containerds, shims and
# coordinators, every process whose argv names a path under the base dir, whose root is under it
# (containers), that lives in ums-a/ums-b or in a container's cgroup. Then it unmounts
# everything under the base dir, removes the containers' cgroups, the namespaces (with the veth,
# the CNI bridges and the iptables rules CNI made in them) and the base dir.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${UMS_TESTBED_DIR:-/run/ums-testbed}
BASE=${BASE%/}
C2_PREFIX=${UMS_CONTAINERD2_PREFIX:-/opt/ums/containerd2}
TOOLS_DIR=${UMS_TOOLS_DIR:-$REPO/target/debug}
LOCK=$BASE.lock
# A second, independent test bed can run next to the default one with another prefix and dir
# (UMS_TESTBED_NETNS_PREFIX=umsv UMS_TESTBED_DIR=/run/umsv-testbed): its namespaces are
# umsv-a/umsv-b; addresses, bridges and ports live inside the namespaces and do not clash.
PREFIX=${UMS_TESTBED_NETNS_PREFIX:-ums}
[[ $PREFIX =~ ^[a-z0-9]{1,8}$ ]] || { echo "testbed.sh: UMS_TESTBED_NETNS_PREFIX: 1-8 of [a-z0-9]" >&2; exit 2; }
PORT=7400
SYSTEMS=(a b)
declare -A NETNS=([a]=$PREFIX-a [b]=$PREFIX-b)
declare -A IP=([a]=10.77.0.1 [b]=10.77.0.2)
declare -A VETH=([a]=veth-$PREFIX-a [b]=veth-$PREFIX-b)
declare -A SUBNET=([a]=10.78.1.0/24 [b]=10.78.2.0/24)
declare -A BRIDGE=([a]=umsbr-a [b]=umsbr-b)
declare -A VERSION=([a]=1.6 [b]=2.1)
IMAGES=(busybox pause memhog counter multiproc)
WORKLOADS=(memhog counter multiproc)
NAMESPACES=(default k8s.io)
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[testbed] %s\n' "$*" >&2; }
warn() { printf '[testbed] WARNING: %s\n' "$*" >&2; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root"; }

bin_dir_of() { # where containerd and ctr of system $1 live
  if [ "${VERSION[$1]}" = 1.6 ]; then echo /usr/bin; else echo "$C2_PREFIX/usr/bin"; fi
}
ctr_of() { echo "$(bin_dir_of "$1")/ctr --address $BASE/$1/containerd.sock"; }
sys_dir() { echo "$BASE/$1"; }

resolve_bin_dir() {
  if [ -n "${UMS_BIN_DIR:-}" ]; then
    BIN_DIR=$UMS_BIN_DIR
  elif [ -x "$REPO/target/release/containerd-shim-ums-v1" ]; then
    BIN_DIR=$REPO/target/release
  else
    BIN_DIR=$REPO/target/debug
  fi
  BIN_DIR=$(cd "$BIN_DIR" 2>/dev/null && pwd || echo "$BIN_DIR")
}

# The PATH containerd (and so its shims) gets: the UMS binaries, this release's own binaries
# (its containerd-shim-runc-v2), then the system (runc; criu in /usr/local/sbin).
daemon_path() {
  echo "$BIN_DIR:$(bin_dir_of "$1"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
}

# Runs "$@" detached: own session, stdin /dev/null, stdout+stderr appended to $1, no inherited
# fds besides 0-2 (a detached process keeps the caller's stdio and pipes open otherwise). Prints
# the pid (setsid and nsenter exec, so it is the daemon's pid).
detach() {
  local logf=$1
  shift
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid "$@" </dev/null >>"$logf" 2>&1
  ) &
  echo $!
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# pid of the running containerd of system $1 (by its --config), or nothing.
containerd_pid() {
  local cfg pid
  cfg=$(sys_dir "$1")/config.toml
  for pid in $(pgrep -x containerd 2>/dev/null); do
    if grep -qxF "$cfg" <<<"$({ tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null)"; then
      echo "$pid"
      return 0
    fi
  done
  return 0
}

# pid of the coordinator of system $1 (argv has --containerd <its socket>), or nothing.
coordinator_pid() {
  local sock pid
  sock=$(sys_dir "$1")/containerd.sock
  for pid in $(pgrep -f -- "coordinator" 2>/dev/null); do
    if grep -qF -- "--containerd $sock " <<<"$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null)"; then
      echo "$pid"
      return 0
    fi
  done
  return 0
}

# The cgroup parent of system $1's coordinator-made containers and of the smoke-test pods.
cgroup_parent() { echo "/$PREFIX-testbed-$1"; }

in_netns() { local s=$1; shift; nsenter --net="/run/netns/${NETNS[$s]}" -- "$@"; }

# Whether the coordinators serve TLS: asked for (UMS_TESTBED_TLS, default 1) and supported by
# this `ums`.
tls_on() {
  [ "${UMS_TESTBED_TLS:-1}" != 0 ] && [ -x "$BIN_DIR/ums" ] &&
    "$BIN_DIR/ums" coordinator --help 2>/dev/null | grep -q -- '--tls-cert'
}
scheme() { if tls_on; then echo https; else echo http; fi; }
TLS_DIR=$BASE/tls

# The test bed's CA and a certificate per system for its IP (EC P-256), made once: kept while
# they exist and verify against the CA, remade otherwise.
ensure_certs() {
  local s ip
  command -v openssl >/dev/null || die "openssl not found (hack/install-deps.sh)"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  if [ ! -s "$TLS_DIR/ca.pem" ] || [ ! -s "$TLS_DIR/ca.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=UMS test bed CA ($PREFIX)" -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" \
      >/dev/null 2>&1 || die "openssl: cannot make the test bed CA in $TLS_DIR"
    rm -f "$TLS_DIR"/[ab].pem
    log "made the test bed CA $TLS_DIR/ca.pem"
  fi
  for s in "${SYSTEMS[@]}"; do
    ip=${IP[$s]}
    if [ -s "$TLS_DIR/$s.pem" ] && [ -s "$TLS_DIR/$s.key" ] &&
      openssl verify -CAfile "$TLS_DIR/ca.pem" "$TLS_DIR/$s.pem" >/dev/null 2>&1 &&
      openssl x509 -in "$TLS_DIR/$s.pem" -noout -ext subjectAltName 2>/dev/null | grep -qF "IP Address:$ip"; then
      continue
    fi
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=ums coordinator $s" -keyout "$TLS_DIR/$s.key" -out "$TLS_DIR/$s.csr" >/dev/null 2>&1 &&
      printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$ip" >"$TLS_DIR/$s.ext" &&
      openssl x509 -req -in "$TLS_DIR/$s.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 3650 -extfile "$TLS_DIR/$s.ext" -out "$TLS_DIR/$s.pem" >/dev/null 2>&1 ||
      die "openssl: cannot make the certificate of system $s in $TLS_DIR"
    rm -f "$TLS_DIR/$s.csr" "$TLS_DIR/$s.ext"
    log "made the certificate of system $s ($ip) $TLS_DIR/$s.pem"
  done
}

listening() { # system $1 has a TCP listener on $IP:$PORT
  [ -n "$(in_netns "$1" ss -Hltn "sport = :$PORT" 2>/dev/null)" ]
}

stop_pid() { # pid, name, seconds before SIGKILL
  local pid=$1 what=$2 secs=${3:-10} i
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    alive "$pid" || { log "stopped $what (pid $pid)"; return 0; }
    sleep 0.1
  done
  warn "$what (pid $pid) ignored SIGTERM for ${secs}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Building

cargo_build() {
  command -v cargo >/dev/null || die "cargo not found (needed to build $*)"
  log "cargo build $*"
  (cd "$REPO" && cargo build -q "$@") || die "cargo build $* failed"
}

build_all() {
  local pkgs=(-p ums-shim)
  if [ -f "$REPO/coordinator/Cargo.toml" ]; then pkgs+=(-p ums-coordinator); fi
  cargo_build --release "${pkgs[@]}"
  cargo_build -p ums-tests --bin ums-mkimage --bin ums-testbed
  "$REPO/hack/build-workloads.sh" >/dev/null
}

ensure_tools() {
  if [ ! -x "$TOOLS_DIR/ums-mkimage" ] || [ ! -x "$TOOLS_DIR/ums-testbed" ]; then
    [ -z "${UMS_TOOLS_DIR:-}" ] || die "ums-mkimage/ums-testbed missing in UMS_TOOLS_DIR=$UMS_TOOLS_DIR"
    cargo_build -p ums-tests --bin ums-mkimage --bin ums-testbed
  fi
  MKIMAGE=$TOOLS_DIR/ums-mkimage
  TB=$TOOLS_DIR/ums-testbed
}

ensure_workloads() {
  local w
  if [ -n "${UMS_WORKLOADS_DIR:-}" ]; then
    WL_DIR=$UMS_WORKLOADS_DIR
  else
    WL_DIR=$REPO/target/$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')/release
    for w in memhog counter multiproc tcpblast; do
      if [ ! -x "$WL_DIR/$w" ]; then
        log "building the static workloads (hack/build-workloads.sh)"
        WL_DIR=$("$REPO/hack/build-workloads.sh") || die "hack/build-workloads.sh failed"
        break
      fi
    done
  fi
  for w in memhog counter multiproc tcpblast; do
    [ -x "$WL_DIR/$w" ] || die "workload $WL_DIR/$w missing (hack/build-workloads.sh)"
  done
}

# ---------------------------------------------------------------------------------------------
# up

preflight() {
  local f
  for f in /usr/bin/containerd /usr/bin/ctr "$C2_PREFIX/usr/bin/containerd" "$C2_PREFIX/usr/bin/ctr" \
    /usr/lib/cni/bridge /usr/lib/cni/host-local /bin/busybox; do
    [ -x "$f" ] || die "$f is missing: run hack/install-deps.sh"
  done
  command -v runc >/dev/null || die "runc not found: run hack/install-deps.sh"
  command -v nsenter >/dev/null || die "nsenter not found (util-linux)"
  command -v tc >/dev/null || die "tc not found (iproute2)"
  command -v criu >/dev/null || warn "criu not found: checkpoints and migrations will fail (hack/install-deps.sh)"
}

setup_net() {
  local s peer
  for s in "${SYSTEMS[@]}"; do
    if [ ! -e "/run/netns/${NETNS[$s]}" ]; then
      ip netns add "${NETNS[$s]}"
      log "created network namespace ${NETNS[$s]}"
    fi
    ip -n "${NETNS[$s]}" link set lo up
  done
  if ! ip -n "${NETNS[a]}" link show "${VETH[a]}" >/dev/null 2>&1 ||
    ! ip -n "${NETNS[b]}" link show "${VETH[b]}" >/dev/null 2>&1; then
    # A half-made pair (one end left after a crash) is removed first.
    for s in "${SYSTEMS[@]}"; do
      ip -n "${NETNS[$s]}" link del "${VETH[$s]}" 2>/dev/null || true
      ip link del "${VETH[$s]}" 2>/dev/null || true
    done
    ip link add "${VETH[a]}" netns "${NETNS[a]}" type veth peer name "${VETH[b]}" netns "${NETNS[b]}"
    log "created veth pair ${VETH[a]} (${NETNS[a]}) <-> ${VETH[b]} (${NETNS[b]})"
  fi
  for s in "${SYSTEMS[@]}"; do
    ip -n "${NETNS[$s]}" addr replace "${IP[$s]}/24" dev "${VETH[$s]}"
    ip -n "${NETNS[$s]}" link set "${VETH[$s]}" up
  done
  for s in "${SYSTEMS[@]}"; do
    peer=${IP[b]}
    [ "$s" = b ] && peer=${IP[a]}
    local ok=0
    for _ in $(seq 50); do
      if in_netns "$s" busybox ping -c1 -W1 "$peer" >/dev/null 2>&1; then ok=1; break; fi
      sleep 0.1
    done
    [ "$ok" = 1 ] || warn "system $s: $peer does not answer ping"
  done
}

apply_rate() {
  local rate=$1 s burst=${UMS_TESTBED_TBF_BURST:-512k}
  for s in "${SYSTEMS[@]}"; do
    if [ -z "$rate" ] || [ "$rate" = off ]; then
      tc -n "${NETNS[$s]}" qdisc del dev "${VETH[$s]}" root 2>/dev/null || true
    else
      tc -n "${NETNS[$s]}" qdisc replace dev "${VETH[$s]}" root tbf rate "$rate" burst "$burst" latency 20ms ||
        die "tc: cannot shape ${VETH[$s]} to $rate"
    fi
  done
  if [ -z "$rate" ] || [ "$rate" = off ]; then
    rm -f "$BASE/rate"
  else
    echo "$rate" >"$BASE/rate"
    log "link shaped to $rate in both directions (tc tbf, burst $burst)"
  fi
}

start_containerd() {
  local s=$1 dir pid before after path
  dir=$(sys_dir "$s")
  mkdir -p "$dir/logs"
  before=$({ cat "$dir/config.toml" "$dir/cni/10-ums.conflist" "$dir/containerd.path" 2>/dev/null || true; } | md5sum)
  "$TB" config --dir "$dir" --name "$s" --version "${VERSION[$s]}" \
    --network "ums-$s" --bridge "${BRIDGE[$s]}" --subnet "${SUBNET[$s]}"
  path=$(daemon_path "$s")
  echo "$path" >"$dir/containerd.path"
  after=$(cat "$dir/config.toml" "$dir/cni/10-ums.conflist" "$dir/containerd.path" | md5sum)
  pid=$(containerd_pid "$s")
  if [ -n "$pid" ] && [ "$before" != "$after" ]; then
    log "system $s: config or PATH changed: restarting containerd (pid $pid; tasks keep running)"
    stop_pid "$pid" "containerd $s" 10
    pid=
  fi
  if [ -z "$pid" ]; then
    rm -f "$dir/containerd.sock" "$dir/containerd.sock.ttrpc"
    echo "=== $(date -Is) testbed up: starting containerd ${VERSION[$s]} in ${NETNS[$s]}" >>"$dir/containerd.log"
    pid=$(detach "$dir/containerd.log" nsenter --net="/run/netns/${NETNS[$s]}" -- \
      env -u CONTAINERD_ADDRESS -u CONTAINERD_NAMESPACE PATH="$path" \
      "$(bin_dir_of "$s")/containerd" --config "$dir/config.toml")
    echo "$pid" >"$dir/containerd.pid"
    log "system $s: started containerd ${VERSION[$s]} (pid $pid) in ${NETNS[$s]}, log $dir/containerd.log"
  else
    echo "$pid" >"$dir/containerd.pid"
    log "system $s: containerd already running (pid $pid)"
  fi
  if ! "$TB" ready --dir "$dir" --name "$s" --version "${VERSION[$s]}" --timeout 60; then
    echo "--- $dir/containerd.log (tail) ---" >&2
    tail -n 40 "$dir/containerd.log" >&2 || true
    die "system $s: containerd is not ready"
  fi
}

build_images() {
  local img=$BASE/images w
  mkdir -p "$img"
  "$MKIMAGE" --busybox --name localhost/ums/busybox:1 --out "$img/busybox.tar" --cmd /bin/sh >/dev/null
  "$MKIMAGE" --busybox --pause --name localhost/ums/pause:1 --out "$img/pause.tar" >/dev/null
  for w in "${WORKLOADS[@]}"; do
    local extra=()
    [ "$w" = memhog ] && extra=(--cmd '["--mib","64"]')
    "$MKIMAGE" --busybox --add "$WL_DIR/$w:/usr/local/bin/$w" --name "localhost/ums/$w:1" \
      --out "$img/$w.tar" --entrypoint "/usr/local/bin/$w" "${extra[@]}" >/dev/null
  done
}

import_images() {
  local s=$1 ns i ctr out
  ctr=$(ctr_of "$s")
  for ns in "${NAMESPACES[@]}"; do
    for i in "${IMAGES[@]}"; do
      out=$($ctr -n "$ns" images import "$BASE/images/$i.tar" 2>&1) ||
        die "system $s: ctr -n $ns images import $i.tar failed: $out"
    done
    for i in "${IMAGES[@]}"; do
      grep -qxF "localhost/ums/$i:1" <<<"$($ctr -n "$ns" images ls -q)" ||
        die "system $s: image localhost/ums/$i:1 missing in namespace $ns after the import"
    done
  done
  log "system $s: images ${IMAGES[*]} imported into namespaces ${NAMESPACES[*]}"
}

start_coordinator() {
  local s=$1 dir pid i
  dir=$(sys_dir "$s")
  if [ ! -x "$BIN_DIR/ums" ]; then
    log "system $s: coordinator NOT started: $BIN_DIR/ums does not exist (build: cargo build -p ums-coordinator)"
    return 0
  fi
  pid=$(coordinator_pid "$s")
  if [ -n "$pid" ] && listening "$s"; then
    log "system $s: coordinator already running (pid $pid) on ${IP[$s]}:$PORT"
    echo "$pid" >"$dir/coordinator.pid"
    return 0
  fi
  [ -n "$pid" ] && stop_pid "$pid" "coordinator $s (not listening)" 5
  local extra=() help
  help=$("$BIN_DIR/ums" coordinator --help 2>/dev/null || true)
  # Keep the coordinator's own files under the test bed (so `down` removes them); its default
  # is /run/ums/coordinator/<name>.
  if grep -q -- '--state-dir' <<<"$help"; then
    extra+=(--state-dir "$dir/coordinator")
  fi
  # Both systems share this host's cgroup hierarchy: containers the coordinator creates go
  # under a per-system parent, so a service and its migrated copy never share a cgroup.
  if grep -q -- '--cgroup-parent' <<<"$help"; then
    extra+=(--cgroup-parent "$(cgroup_parent "$s")")
  fi
  if tls_on; then
    ensure_certs
    extra+=(--tls-cert "$TLS_DIR/$s.pem" --tls-key "$TLS_DIR/$s.key" --tls-ca "$TLS_DIR/ca.pem")
  fi
  # Images arrive in a dir of the test bed (a test mounts a small tmpfs there: disk full).
  if grep -q -- '--image-dir' <<<"$help"; then
    mkdir -p "$dir/images"
    extra+=(--image-dir "$dir/images")
  fi
  echo "=== $(date -Is) testbed up: starting the coordinator" >>"$dir/coordinator.log"
  pid=$(detach "$dir/coordinator.log" nsenter --net="/run/netns/${NETNS[$s]}" -- \
    env PATH="$(daemon_path "$s")" "$BIN_DIR/ums" coordinator --listen "${IP[$s]}:$PORT" \
    --containerd "$dir/containerd.sock" --containerd-state "$dir/state" --name "$s" \
    --peer-token-file "$BASE/token" "${extra[@]}")
  echo "$pid" >"$dir/coordinator.pid"
  for ((i = 0; i < 100; i++)); do
    if listening "$s"; then
      log "system $s: coordinator (pid $pid) listening on $(scheme)://${IP[$s]}:$PORT, log $dir/coordinator.log"
      return 0
    fi
    alive "$pid" || break
    sleep 0.1
  done
  if alive "$pid"; then
    echo "[testbed] ERROR: system $s: the coordinator (pid $pid) does not listen on ${IP[$s]}:$PORT after 10 s; log tail:" >&2
  else
    echo "[testbed] ERROR: system $s: the coordinator exited during start-up; log tail ($dir/coordinator.log):" >&2
  fi
  tail -n 30 "$dir/coordinator.log" | sed 's/^/    /' >&2
  return 1
}

cmd_up() {
  local rate="" build=0 s errors=0
  while [ $# -gt 0 ]; do
    case $1 in
      --rate) [ $# -ge 2 ] || die "--rate needs a value (e.g. 1gbit, or off)"; rate=$2; shift 2 ;;
      --rate=*) rate=${1#--rate=}; shift ;;
      --build) build=1; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "up: unknown option $1" ;;
    esac
  done
  need_root
  preflight
  [ "$build" = 1 ] && build_all
  resolve_bin_dir
  [ -x "$BIN_DIR/containerd-shim-ums-v1" ] ||
    die "the shim $BIN_DIR/containerd-shim-ums-v1 is missing: cargo build -p ums-shim (or --release), set UMS_BIN_DIR, or pass --build"
  if [ -z "${UMS_BIN_DIR:-}" ] && [ "$BIN_DIR" = "$REPO/target/release" ] &&
    [ "$REPO/target/debug/containerd-shim-ums-v1" -nt "$BIN_DIR/containerd-shim-ums-v1" ]; then
    warn "using the release shim, but target/debug/containerd-shim-ums-v1 is newer (UMS_BIN_DIR=$REPO/target/debug to use it)"
  fi
  log "shim: $BIN_DIR/containerd-shim-ums-v1"
  ensure_tools
  ensure_workloads
  mkdir -p "$BASE"
  setup_net
  apply_rate "$rate"
  build_images
  if [ ! -s "$BASE/token" ]; then
    (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$BASE/token")
  fi
  for s in "${SYSTEMS[@]}"; do
    start_containerd "$s"
    import_images "$s"
  done
  for s in "${SYSTEMS[@]}"; do
    start_coordinator "$s" || errors=1
  done
  [ "$errors" = 0 ] || die "test bed up, but a coordinator failed to start (see above)"
  log "test bed up: eval \"\$($0 env)\""
}

# ---------------------------------------------------------------------------------------------
# down

cmd_down() {
  local s dir pid left=0
  need_root
  if [ -d "$BASE" ]; then
    [ -x "${TB:-}" ] || { [ -x "$TOOLS_DIR/ums-testbed" ] && TB=$TOOLS_DIR/ums-testbed; } || true
    if [ ! -x "${TB:-}" ] && command -v cargo >/dev/null; then
      (cd "$REPO" && cargo build -q -p ums-tests --bin ums-testbed) && TB=$TOOLS_DIR/ums-testbed || true
    fi
    # Graceful: pods and tasks removed through each containerd while it runs.
    for s in "${SYSTEMS[@]}"; do
      dir=$(sys_dir "$s")
      if [ -n "$(containerd_pid "$s")" ] && [ -x "${TB:-}" ]; then
        timeout 120 "$TB" clean --dir "$dir" --name "$s" --version "${VERSION[$s]}" ||
          warn "system $s: graceful clean-up failed or timed out; sweeping"
      fi
    done
    for s in "${SYSTEMS[@]}"; do
      pid=$(coordinator_pid "$s")
      [ -n "$pid" ] && stop_pid "$pid" "coordinator $s" 5
      pid=$(containerd_pid "$s")
      [ -n "$pid" ] && stop_pid "$pid" "containerd $s" 10
    done
    # Forceful: whatever is left (shims, containers, runc, criu ...), mounts, cgroups.
    if [ -x "${TB:-}" ]; then
      "$TB" sweep --base "$BASE" --netns "${NETNS[a]}" --netns "${NETNS[b]}" \
        --cgroup "$(cgroup_parent a)" --cgroup "$(cgroup_parent b)" || warn "the sweep reported problems"
    else
      warn "ums-testbed is not available: killing by argv only"
      pkill -KILL -f -- "$BASE/" || true
      sleep 0.5
      grep -F " $BASE/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l || true
    fi
  fi
  for s in "${SYSTEMS[@]}"; do
    if [ -e "/run/netns/${NETNS[$s]}" ]; then
      ip netns pids "${NETNS[$s]}" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
      ip netns del "${NETNS[$s]}" && log "deleted network namespace ${NETNS[$s]}"
    fi
  done
  # Never leave a veth end in the host namespace (a crash between `ip link add` and the move).
  for s in "${SYSTEMS[@]}"; do ip link del "${VETH[$s]}" 2>/dev/null || true; done
  if [ -d "$BASE" ]; then
    if grep -qF " $BASE/" /proc/self/mountinfo || grep -qF " $BASE " /proc/self/mountinfo; then
      warn "mounts remain under $BASE: not removing it"
      left=1
    else
      rm -rf "$BASE" && log "removed $BASE"
    fi
  fi
  rm -f "$LOCK"
  # What is left, if anything.
  if pgrep -f -- "$BASE/" >/dev/null; then
    warn "processes still refer to $BASE: $(pgrep -af -- "$BASE/" | head -5)"
    left=1
  fi
  for s in "${SYSTEMS[@]}"; do
    if [ -e "/run/netns/${NETNS[$s]}" ]; then warn "namespace ${NETNS[$s]} remains"; left=1; fi
  done
  [ "$left" = 0 ] && log "test bed down: nothing left"
  return "$left"
}

# ---------------------------------------------------------------------------------------------
# status, env

cmd_status() {
  local s dir pid ok=0 ctr line n ns rate
  resolve_bin_dir
  row() { printf '  %-28s %-5s %s\n' "$1" "$2" "${3:-}"; }
  st_up() { row "$1" up "${2:-}"; }
  st_down() { row "$1" DOWN "${2:-}"; ok=1; }
  echo "test bed $BASE"
  [ -x "$BIN_DIR/containerd-shim-ums-v1" ] && st_up "shim" "$BIN_DIR/containerd-shim-ums-v1" ||
    st_down "shim" "$BIN_DIR/containerd-shim-ums-v1 missing"
  for s in "${SYSTEMS[@]}"; do
    dir=$(sys_dir "$s")
    echo "system $s (${NETNS[$s]}, ${IP[$s]}, containerd ${VERSION[$s]})"
    if [ -e "/run/netns/${NETNS[$s]}" ]; then
      st_up "netns ${NETNS[$s]}"
      if grep -q "UP.*${IP[$s]}/24" <<<"$(ip -n "${NETNS[$s]}" -br addr show dev "${VETH[$s]}" 2>/dev/null)"; then
        rate=$(tc -n "${NETNS[$s]}" qdisc show dev "${VETH[$s]}" root 2>/dev/null | grep -o 'rate [^ ]*' || true)
        st_up "veth ${VETH[$s]}" "${IP[$s]}/24 ${rate:-unshaped}"
      else
        st_down "veth ${VETH[$s]}"
      fi
    else
      st_down "netns ${NETNS[$s]}"
    fi
    pid=$(containerd_pid "$s")
    ctr=$(ctr_of "$s")
    if [ -z "$pid" ]; then
      st_down "containerd" "not running"
    elif line=$($ctr version 2>/dev/null | awk '/Server:/ {s=1} s && /Version:/ {print $2; exit}') && [ -n "$line" ]; then
      st_up "containerd" "pid $pid, server $line, $dir/containerd.sock"
      if [ "$($ctr plugins ls 2>/dev/null | awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" {print $NF}')" = ok ]; then
        st_up "CRI (handler ums)"
      else
        st_down "CRI" "plugin not ok (see $dir/containerd.log)"
      fi
      for ns in "${NAMESPACES[@]}"; do
        n=$($ctr -n "$ns" images ls -q 2>/dev/null | grep -c '^localhost/ums/' || true)
        if [ "$n" -ge "${#IMAGES[@]}" ]; then st_up "images ($ns)" "$n localhost/ums/*"; else st_down "images ($ns)" "$n of ${#IMAGES[@]}"; fi
        n=$($ctr -n "$ns" tasks ls -q 2>/dev/null | grep -c . || true)
        row "tasks ($ns)" "" "$n"
      done
    else
      st_down "containerd" "pid $pid does not answer on $dir/containerd.sock"
    fi
    pid=$(coordinator_pid "$s")
    if [ -n "$pid" ] && listening "$s"; then
      st_up "coordinator" "pid $pid, $(scheme)://${IP[$s]}:$PORT"
    elif [ -n "$pid" ]; then
      st_down "coordinator" "pid $pid not listening on ${IP[$s]}:$PORT"
    elif [ -x "$BIN_DIR/ums" ]; then
      st_down "coordinator" "not running"
    else
      row "coordinator" "-" "not started ($BIN_DIR/ums missing)"
    fi
  done
  return "$ok"
}

# A quick end-to-end check of a test bed that is up: the link, a ctr container and a CRI pod
# through the ums runtime on each system (all removed again), and a 2 s throughput probe a->b.
cmd_check() {
  local s peer ctr id out n failed=0 tcpblast
  need_root
  ensure_tools
  ensure_workloads
  for s in "${SYSTEMS[@]}"; do
    peer=${IP[b]}
    [ "$s" = b ] && peer=${IP[a]}
    if out=$(in_netns "$s" busybox ping -c2 -W1 "$peer" 2>&1); then
      log "system $s: ping $peer: $(tail -n 1 <<<"$out")"
    else
      log "system $s: ping $peer FAILED: $out"; failed=1
    fi
  done
  for s in "${SYSTEMS[@]}"; do
    ctr=$(ctr_of "$s")
    id=tbcheck-$s-$$
    if ! out=$($ctr run --runtime io.containerd.ums.v1 -d \
      --log-uri "file://$(sys_dir "$s")/logs/$id.log" localhost/ums/counter:1 "$id" </dev/null 2>&1); then
      log "system $s: ctr run (runtime io.containerd.ums.v1) FAILED: $out"; failed=1
      $ctr containers delete "$id" >/dev/null 2>&1 || true
      continue
    fi
    sleep 1.5
    n=$($ctr tasks exec --exec-id check "$id" cat /tmp/counter </dev/null 2>&1 || true)
    if [[ $n =~ ^[0-9]+$ ]] && [ "$n" -gt 0 ]; then
      log "system $s: ctr container $id (counter, ums runtime) counts: $n"
    else
      log "system $s: ctr container $id does not count: $n"; failed=1
    fi
    $ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    for _ in $(seq 50); do
      [ "$($ctr tasks ls 2>/dev/null | awk -v id="$id" '$1 == id {print $3}')" = RUNNING ] || break
      sleep 0.1
    done
    $ctr tasks delete "$id" >/dev/null 2>&1 || true
    $ctr containers delete "$id" >/dev/null 2>&1 || { log "system $s: deleting $id failed"; failed=1; }
  done
  for s in "${SYSTEMS[@]}"; do
    if out=$("$TB" cri-pod --dir "$(sys_dir "$s")" --name "$s" --version "${VERSION[$s]}" \
      --handler ums --pod "tbcheck-$s" --cgroup-parent "$(cgroup_parent "$s")" 2>&1); then
      log "CRI $out"
    else
      log "system $s: CRI pod with handler ums FAILED: $out"; failed=1
    fi
  done
  tcpblast=$WL_DIR/tcpblast
  if [ -x "$tcpblast" ]; then
    in_netns b "$tcpblast" recv --listen "${IP[b]}:5201" >"$BASE/tcpblast.out" 2>&1 &
    local rpid=$!
    sleep 0.3
    if out=$(in_netns a "$tcpblast" send --to "${IP[b]}:5201" --seconds 2 2>&1); then
      wait "$rpid" || true
      log "throughput a->b ($(cat "$BASE/rate" 2>/dev/null || echo unshaped)): $(cat "$BASE/tcpblast.out")"
    else
      kill "$rpid" 2>/dev/null || true
      log "throughput probe FAILED: $out"; failed=1
    fi
    rm -f "$BASE/tcpblast.out"
  fi
  [ "$failed" = 0 ] && log "check passed"
  return "$failed"
}

cmd_env() {
  local s S dir
  resolve_bin_dir
  q() { printf 'export %s=%q\n' "$1" "$2"; }
  q UMS_TESTBED_DIR "$BASE"
  q UMS_BIN_DIR "$BIN_DIR"
  q UMS_PEER_TOKEN_FILE "$BASE/token"
  # Read by `ums migrate/ls/status` (--token-file, --tls-ca).
  q UMS_TOKEN_FILE "$BASE/token"
  if tls_on; then q UMS_TLS_CA "$TLS_DIR/ca.pem"; fi
  q UMS_TESTBED_RATE "$(cat "$BASE/rate" 2>/dev/null || echo off)"
  for s in "${SYSTEMS[@]}"; do
    S=${s^^}
    dir=$(sys_dir "$s")
    q "UMS_${S}_SOCK" "$dir/containerd.sock"
    q "UMS_${S}_URL" "$(scheme)://${IP[$s]}:$PORT"
    q "UMS_${S}_STATE" "$dir/state"
    q "UMS_${S}_ROOT" "$dir/root"
    q "UMS_${S}_CTR" "$(ctr_of "$s")"
    q "UMS_${S}_CONTAINERD_VERSION" "${VERSION[$s]}"
    q "UMS_${S}_NETNS" "${NETNS[$s]}"
    q "UMS_${S}_IP" "${IP[$s]}"
    q "UMS_${S}_POD_SUBNET" "${SUBNET[$s]}"
    q "UMS_${S}_EXEC" "nsenter --net=/run/netns/${NETNS[$s]} --"
    q "UMS_${S}_LOG" "$dir/containerd.log"
    q "UMS_${S}_COORDINATOR_LOG" "$dir/coordinator.log"
  done
}

cmd_coordinator() { # a|b start|stop|kill
  local s=${1:-} action=${2:-} pid i
  [[ $s == a || $s == b ]] || die "coordinator: system a or b expected, got '$s'"
  need_root
  resolve_bin_dir
  pid=$(coordinator_pid "$s")
  case $action in
    start) start_coordinator "$s" ;;
    stop) [ -z "$pid" ] || stop_pid "$pid" "coordinator $s" 5 ;;
    kill)
      [ -n "$pid" ] || { log "system $s: no coordinator running"; return 0; }
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && die "system $s: the coordinator (pid $pid) survived SIGKILL"
      log "system $s: coordinator (pid $pid) killed"
      ;;
    *) die "coordinator: start, stop or kill expected, got '$action'" ;;
  esac
}

# ---------------------------------------------------------------------------------------------

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  up|down)
    need_root
    exec 9>"$LOCK"
    flock -w 600 9 || die "another testbed.sh up/down holds $LOCK"
    "cmd_$cmd" "$@"
    ;;
  status) cmd_status "$@" ;;
  check) cmd_check "$@" ;;
  env) cmd_env "$@" ;;
  coordinator) cmd_coordinator "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) echo "testbed.sh: unknown command $cmd (up|down|status|env|check|coordinator)" >&2; exit 2 ;;
esac
