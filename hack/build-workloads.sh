#!/usr/bin/env bash
# Builds the test workloads (crate tests/workloads: memhog, counter, multiproc, and the
# throughput probe tcpblast) as STATIC binaries, so they run in busybox-only images, checks
# that they are static, and prints the directory that holds them (the only line on stdout).
#
#   hack/build-workloads.sh [--debug]
#
# `--target` keeps `+crt-static` away from build scripts and proc-macros (they stay dynamic);
# the output is target/<triple>/release (or debug). Environment: CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=release
case "${1:-}" in
  "") ;;
  --debug) profile=debug ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "build-workloads.sh: unknown argument $1" >&2; exit 2 ;;
esac

triple=$(rustc -vV | sed -n 's/^host: //p')
flags=()
[ "$profile" = release ] && flags+=(--release)
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build -q -p ums-workloads --bins --target "$triple" "${flags[@]}" >&2

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
out="$target_dir/$triple/$profile"
for b in memhog counter multiproc tcpblast; do
  [ -x "$out/$b" ] || { echo "build-workloads.sh: $out/$b missing after the build" >&2; exit 1; }
  if ! file -L "$out/$b" | grep -Eq 'statically linked|static-pie linked'; then
    echo "build-workloads.sh: $out/$b is not statically linked: $(file -L "$out/$b")" >&2
    exit 1
  fi
done
echo "$out"
