#!/usr/bin/env bash
# Benchmarks UMS live migration against plain runc+CRIU baselines on the test bed (issue 4).
# Usage (root): hack/bench.sh [--sizes 0,64,128,...] [--procs 1,2,4,8] [--reps N] [--rate 1gbit|off]
#                             [--methods ums,ums-held,ums-postcopy,orchestrator,stop-and-copy,page-server]
#                             [--child-mib M] [--sync-mib 512] [--link-reps 3] [--keep]
# Installs what it needs (hack/install-deps.sh; rsync and openssh for the stop-and-copy
# baseline), builds the workspace (release) and the static workloads, brings the test bed up
# (hack/testbed.sh up [--rate], UMS_BIN_DIR=target/release), runs ums-bench (bench/README.md),
# which first probes the link (raw TCP with tcpblast and the criu-sync binary streaming
# --sync-mib MiB, alternated --link-reps times), writes bench/results/<time>-<rate>.json,
# bench/results/latest.md and the PNG plots, and tears the test bed down unless --keep.
# Defaults: --sizes 0,128 --procs 1 --reps 3, all six methods (ums-held: ums migrate --post-copy
# --hold; ums-postcopy: ums migrate --post-copy; orchestrator: UMS orchestrator-level; each skipped
# with a note when ums migrate lacks its flag), the link left unshaped. Unshaped with 1024 but not
# 0 in --sizes, the container-level UMS methods also run at 0 MiB (K=1, --reps times) for the
# 1024 MiB total target. Issue 4's check: hack/bench.sh --sizes 128,1024 --reps 5
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

keep=0 rate=off args=()
cmdline="hack/bench.sh $*"
while [ $# -gt 0 ]; do
  case $1 in
    --sizes|--procs|--reps|--methods|--child-mib|--sync-mib|--link-reps) args+=("$1" "$2"); shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "bench.sh must run as root" >&2; exit 1; }

hack/install-deps.sh
need=()
for p in rsync:rsync ssh:openssh-client sshd:openssh-server; do
  command -v "${p%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${p%%:*}" ] || need+=("${p#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench.sh: installing ${need[*]}" >&2
  # policy-rc.d or not: the system's sshd is not needed (the bench starts its own in ums-b)
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi

cargo build --release --workspace
UMS_WORKLOADS_DIR=$(hack/build-workloads.sh)
export UMS_WORKLOADS_DIR UMS_BIN_DIR=$PWD/target/release

hack/testbed.sh up --rate "$rate"
eval "$(hack/testbed.sh env)"
[ "$keep" = 1 ] || trap 'hack/testbed.sh down >/dev/null 2>&1 || true; rm -rf /run/ums-bench; rmdir /sys/fs/cgroup/*/ums-bench-[ab] 2>/dev/null || true' EXIT

target/release/ums-bench "${args[@]}" --out bench/results --command "$cmdline"
