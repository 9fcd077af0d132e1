#!/usr/bin/env bash
# The main job: a live migration between two systems on this machine.
# Brings up the test bed (hack/testbed.sh: system a = containerd 1.6, system b = containerd 2.1,
# each in its own network namespace with its own coordinator), starts a counter service on a
# through the ums runtime, shows where the outer container and the nested service live,
# migrates it live with `ums migrate`, shows it counting on at b, and tears everything down.
# Usage (root): hack/demo.sh [--keep] [--rate 1gbit]
#   --keep        leave the test bed and the service up (hack/testbed.sh down removes them)
#   --rate RATE   shape the link between a and b (tc), e.g. 1gbit
set -euo pipefail
cd "$(dirname "$0")/.."

keep=0 rate=()
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=1; shift ;;
    --rate) rate=(--rate "$2"); shift 2 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "demo.sh must run as root" >&2; exit 1; }

hack/install-deps.sh
export UMS_BIN_DIR=$PWD/target/release
hack/testbed.sh up --build "${rate[@]}"
eval "$(hack/testbed.sh env)"
[ "$keep" = 1 ] || trap 'hack/testbed.sh down >/dev/null' EXIT

name=demo-counter
out=$UMS_TESTBED_DIR/$name.log
ctr_a() { $UMS_A_CTR "$@"; }
ctr_b() { $UMS_B_CTR "$@"; }
ctr_a task kill -s KILL $name >/dev/null 2>&1 && sleep 0.5 || true
ctr_a task rm $name >/dev/null 2>&1 || true
ctr_a container rm $name >/dev/null 2>&1 || true

show() { # system pid label
  printf '  %-20s pid %-7s %-34s %-22s %s\n' "$3" "$2" "$(tr '\0' ' ' </proc/$2/cmdline | cut -c1-34)" \
    "$(readlink /proc/$2/ns/pid)" "$(grep -E '(^|,|:)memory(,|:)' /proc/$2/cgroup | cut -d: -f3)"
}
where() { # system ctr-function
  local pid svc
  pid=$($2 task ls | awk -v n=$name '$1==n{print $2}')
  svc=$($2 task ps $name | awk 'NR==2{print $1}')
  echo "system $1: task $name, $(readlink /proc/$pid/ns/net)"
  show "$1" "$pid" "outer (task pid)"
  show "$1" "$svc" "service (nested)"
  echo "  counter: $(cat /proc/$svc/root/tmp/counter 2>/dev/null || echo '?')"
}

echo; echo "== start a counter on system a (containerd $UMS_A_CONTAINERD_VERSION, runtime io.containerd.ums.v1)"
ctr_a run --runtime io.containerd.ums.v1 -d --log-uri "file://$out" localhost/ums/counter:1 $name \
  /usr/local/bin/counter </dev/null >/dev/null 2>"$out.err" || { cat "$out.err" >&2; exit 1; }
sleep 2
where a ctr_a

echo; echo "== ums migrate --from $UMS_A_URL --to $UMS_B_URL default/$name --json"
$UMS_A_EXEC "$UMS_BIN_DIR/ums" migrate --from "$UMS_A_URL" --to "$UMS_B_URL" "default/$name" --json

echo; echo "== after the migration"
echo "system a (containerd $UMS_A_CONTAINERD_VERSION) tasks:"; ctr_a task ls | sed 's/^/  /'
where b ctr_b
sleep 1
echo "  one second later: $(cat /proc/$(ctr_b task ps $name | awk 'NR==2{print $1}')/root/tmp/counter)"
if [ "$keep" = 1 ]; then
  echo; echo "kept: the test bed is up (eval \"\$(hack/testbed.sh env)\"; hack/testbed.sh down)"
else
  ctr_b task kill -s KILL $name >/dev/null; sleep 0.5
  ctr_b task rm $name >/dev/null 2>&1 || true; ctr_b container rm $name
fi
