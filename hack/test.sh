#!/usr/bin/env bash
# The project's test command (README; .ci/run execs it). Run as root; idempotent.
#   1. hack/install-deps.sh: containerd 1.6 and 2.1, runc, CRIU, CNI plugins, busybox-static
#   2. cargo build --workspace (debug: the shim binary the integration tests load)
#   3. unit tests and each crate's own tests: cargo test --workspace --exclude ums-tests
#   4. integration tests (crate ums-tests): every test starts its own private containerd under
#      /run/ums-test/<name>; UMS_TEST_THREADS of them run at once
#   5. test-bed integration tests (tests/tests/testbed): live migrations between two systems on
#      the binary's own test bed (hack/testbed.sh with namespaces umst-a/umst-b, dir /run/umst),
#      one at a time; the binary brings the test bed up and down, and it is torn down here too
#      when a run was interrupted; the outer image (outer-image/build.sh) is built before them
# Prints one summary line `summary: N passed, N failed` and exits non-zero when anything failed.
#
# Environment:
#   UMS_TEST_THREADS   parallel integration tests (default 3)
#   UMS_TEST_FILTER    libtest filter for the integration tests (e.g. `cri`)
#   UMS_TEST_RUNTIME   `runc` runs the suite against containerd's runc shim (harness check)
#   UMS_SKIP_INSTALL   1 skips hack/install-deps.sh
#   UMS_TEST_TIMEOUT   seconds allowed for the integration tests (default 1500)
#   UMS_TESTBED_TIMEOUT  seconds allowed for the test-bed tests (default 600)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '[test.sh] %s\n' "$*" >&2; }
die() { printf '[test.sh] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the tests start containerd, mount, and manage cgroups)"

THREADS=${UMS_TEST_THREADS:-3}
TIMEOUT=${UMS_TEST_TIMEOUT:-1500}
TESTBED_TIMEOUT=${UMS_TESTBED_TIMEOUT:-600}
LOGDIR=$ROOT/target/test-logs
SWEEP=$ROOT/target/debug/ums-test-sweep
started=$(date +%s)

# Leftovers of an interrupted run (containerds, shims, containers, mounts, cgroups, bridges
# under /run/ums-test) are swept before and after the tests.
sweep() {
  if [ -x "$SWEEP" ]; then
    "$SWEEP" || log "sweep reported problems (see above)"
  fi
}
# The test-bed tests' own test bed (keep in sync with tests/tests/testbed/common.rs: prefix
# $UMS_TESTBED_TEST_PREFIX, default umst, dir /run/<prefix>): removed if a killed run left it,
# unless a run of the test binary holds its lock.
TB=${UMS_TESTBED_TEST_PREFIX:-umst}
TESTBED_ENV=(UMS_TESTBED_NETNS_PREFIX="$TB" UMS_TESTBED_DIR="/run/$TB" UMS_BIN_DIR="$ROOT/target/debug")
testbed_down() {
  if [ -e "/run/$TB" ] || [ -e "/run/netns/$TB-a" ] || [ -e "/run/netns/$TB-b" ]; then
    if flock -n "/run/$TB.run.lock" true; then
      env "${TESTBED_ENV[@]}" "$ROOT/hack/testbed.sh" down || log "hack/testbed.sh down of /run/$TB reported problems"
    else
      log "/run/$TB is in use by a running test binary: left alone"
    fi
  fi
}
cleanup() {
  sweep
  testbed_down
}
trap cleanup EXIT

# Sums the `test result:` lines of cargo test logs: prints "<passed> <failed>".
count() {
  awk '/^test result:/ {
         for (i = 2; i <= NF; i++) {
           if ($i ~ /^passed;?$/) p += $(i - 1)
           if ($i ~ /^failed;?$/) f += $(i - 1)
         }
       }
       END { print p + 0, f + 0 }' "$@"
}

if [ "${UMS_SKIP_INSTALL:-0}" != 1 ]; then
  log "installing dependencies (hack/install-deps.sh)"
  hack/install-deps.sh
fi
export PATH="/usr/local/sbin:/usr/local/bin:$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found"

log "cargo build --workspace"
cargo build --workspace || die "cargo build --workspace failed: no test ran"
sweep

mkdir -p "$LOGDIR"
rm -f "$LOGDIR"/*.log
rm -rf "$ROOT/target/ums-test-logs"

status=0
log "unit tests and the crates' own tests: cargo test --workspace --exclude ums-tests"
if ! cargo test --workspace --exclude ums-tests 2>&1 | tee "$LOGDIR/unit.log"; then
  status=1
fi

log "integration tests: cargo test -p ums-tests --test harness --test ums (threads: $THREADS, runtime: ${UMS_TEST_RUNTIME:-ums})"
filter=()
[ -n "${UMS_TEST_FILTER:-}" ] && filter=("$UMS_TEST_FILTER")
if ! timeout --kill-after=30 "$TIMEOUT" \
  cargo test -p ums-tests --no-fail-fast --test harness --test ums -- --test-threads="$THREADS" "${filter[@]}" \
  2>&1 | tee "$LOGDIR/integration.log"; then
  status=1
  if grep -q '^test result:' "$LOGDIR/integration.log"; then :; else
    log "the integration tests did not finish (timeout ${TIMEOUT}s or a crash); see $LOGDIR/integration.log"
  fi
fi

# The outer image of the test-bed test outer_image_* (debug binaries, stripped), built here so
# that a first build (debootstrap of the cached Debian base, ~3 min) is not in its timeout.
log "outer image for the test-bed tests: outer-image/build.sh (target/outer-image-test.tar)"
if outer-image/build.sh --bin-dir target/debug --strip --out target/outer-image-test.tar \
  --name localhost/ums/outer:test 2>&1 | tee "$LOGDIR/outer-image.log"; then
  export UMS_OUTER_IMAGE=$ROOT/target/outer-image-test.tar
else
  log "outer-image/build.sh failed (see $LOGDIR/outer-image.log): the outer-image test will try again"
fi

log "test-bed integration tests: cargo test -p ums-tests --test testbed (test bed $TB-a/$TB-b, /run/$TB)"
testbed_down
if ! timeout --kill-after=30 "$TESTBED_TIMEOUT" \
  cargo test -p ums-tests --no-fail-fast --test testbed -- --test-threads=1 "${filter[@]}" \
  2>&1 | tee "$LOGDIR/testbed.log"; then
  status=1
  if grep -q '^test result:' "$LOGDIR/testbed.log"; then :; else
    log "the test-bed tests did not finish (timeout ${TESTBED_TIMEOUT}s or a crash); see $LOGDIR/testbed.log"
  fi
fi
testbed_down

read -r passed failed < <(count "$LOGDIR/unit.log" "$LOGDIR/integration.log" "$LOGDIR/testbed.log")
[ "$failed" -eq 0 ] || status=1
elapsed=$(($(date +%s) - started))
if [ "$status" -ne 0 ] && [ -n "$(ls -A "$ROOT/target/ums-test-logs" 2>/dev/null)" ]; then
  log "logs of failed tests (containerd; test bed: testbed-<test>/): $ROOT/target/ums-test-logs/"
fi
log "finished in ${elapsed}s; logs in $LOGDIR"
echo "summary: ${passed} passed, ${failed} failed"
exit "$status"
