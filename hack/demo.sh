#!/usr/bin/env bash
# Demo: run a service through the ums runtime with a private containerd and show where the
# outer container and the nested service live (pid namespace, cgroup, network namespace).
# Usage (root): hack/demo.sh [--containerd 1.6|2.1] [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.6 keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --containerd) version=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "demo.sh must run as root" >&2; exit 1; }

hack/install-deps.sh
cargo build --release -p ums-shim
shim_dir=$PWD/target/release

case $version in
  1.6) bin=/usr/bin; cfg_version=2 ;;
  2.1) bin=${UMS_CONTAINERD2_PREFIX:-/opt/ums/containerd2}/usr/bin; cfg_version=3 ;;
  *) echo "--containerd takes 1.6 or 2.1" >&2; exit 2 ;;
esac

dir=/run/ums-demo
sock=$dir/containerd.sock
ctr() { "$bin/ctr" --address "$sock" -n demo "$@"; }
teardown() {
  set +e
  ctr task kill -s KILL web >/dev/null 2>&1; sleep 0.5
  ctr task rm web >/dev/null 2>&1; ctr container rm web >/dev/null 2>&1
  [ -f $dir/containerd.pid ] && kill "$(cat $dir/containerd.pid)" 2>/dev/null && sleep 1
  grep -o " $dir[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$dir"
}
if [ "$keep" = 0 ]; then trap teardown EXIT; fi
teardown; trap - ERR
mkdir -p "$dir/rootfs/bin" "$dir/rootfs"/{proc,sys,dev,tmp,etc}
cp /bin/busybox "$dir/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$dir/rootfs/bin/$a"; done

cat >"$dir/config.toml" <<TOML
version = $cfg_version
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
TOML
PATH=$shim_dir:$bin:$PATH "$bin/containerd" --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
echo $! >"$dir/containerd.pid"
for _ in $(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null || { tail "$dir/containerd.log"; exit 1; }

echo "== containerd $("$bin/containerd" --version | awk '{print $3}'), runtime io.containerd.ums.v1"
ctr run --runtime io.containerd.ums.v1 -d --rootfs "$dir/rootfs" web \
  /bin/sh -c 'while :; do date >> /tmp/t; sleep 0.2; done' </dev/null >/dev/null 2>"$dir/ctr-run.err" ||
  { cat "$dir/ctr-run.err" >&2; exit 1; }
ctr task ls
task_pid=$(ctr task ls | awk '$1=="web"{print $2}')
svc_pid=$(ctr task ps web | awk 'NR==2{print $1}')
show() { # pid label
  printf '%-22s pid %-7s %-30s %-22s %s\n' "$2" "$1" "$(tr '\0' ' ' </proc/$1/cmdline | cut -c1-30)" \
    "$(readlink /proc/$1/ns/pid)" "$(grep -E '(^|,|:)memory(,|:)' /proc/$1/cgroup | cut -d: -f3)"
}
echo; echo "== what containerd sees and what runs nested ($(readlink /proc/$task_pid/ns/net) shared)"
show "$task_pid" "outer (task pid)"
show "$svc_pid" "service (nested)"
echo; echo "== ctr task exec lands in the service:"
ctr task exec --exec-id demo web /bin/sh -c 'echo "  pid in its namespace: $$; last tick: $(tail -1 /tmp/t)"'
echo; echo "== ctr task metrics (the outer's cgroup, which holds the service's):"
ctr task metrics web | sed -n '1,8p'
if [ "$keep" = 1 ]; then echo "kept: $dir (ctr --address $sock -n demo ...)"; fi
