#!/usr/bin/env bash
# outer-image/compare.sh: checks that the Dockerfile, built with `buildah bud`, gives the same
# image contents as outer-image/build.sh.
#
#   outer-image/compare.sh [--keep]
#
# 1. outer-image/build.sh (release binaries from target/release; cached steps are skipped): the
#    scripted image, its rootfs in target/outer-image/rootfs, and the debian:bookworm stand-in
#    target/outer-image/debian-bookworm.tar.
# 2. That stand-in into buildah's storage (`buildah pull oci-archive:...`, it is named
#    docker.io/library/debian:bookworm), then `buildah bud --layers -t localhost/ums/outer:buildah .`
#    from the repository (the Dockerfile's FROM debian:bookworm resolves to it: no registry).
# 3. The two root filesystems compared: every path with its type, mode, owner and link target,
#    and the sha256 of every regular file, except what apt and dpkg write with the time of the
#    build (/var/log, /var/cache/debconf/*-old, /var/cache/ldconfig/aux-cache) and the mount
#    points a runtime provides (/etc/hostname, /etc/hosts, /etc/resolv.conf, /var/lib/ums).
#    An ELF file that differs only in its build id and debug info counts as the same (noted):
#    CRIU built against another point release's -dev headers has other line numbers in them.
#    The differences are printed; exit 0 when there is none.
#
# Options:
#   --keep   keep the buildah working container (its rootfs stays mounted; default: removed)
#
# Needs root, buildah (hack/install-deps.sh installs it), the release binaries
# (cargo build --release -p ums-shim -p ums-coordinator -p criu-sync) and network to Debian's
# mirror (the Dockerfile's apt-get and CRIU source). Writes target/outer-image/compare/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$REPO/target/outer-image
OUT=$WORK/compare
REF=localhost/ums/outer:buildah
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[outer-compare] %s\n' "$*" >&2; }
die() { printf '[outer-compare] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

KEEP=0
while [ $# -gt 0 ]; do
  case $1 in
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root"
command -v buildah >/dev/null || die "buildah not found: apt-get install buildah (hack/install-deps.sh)"

# One line per path: type, mode, owner, path, link target; and one per regular file: its sha256.
# Run in the root dir.
EXCLUDE=(-path ./var/log -o -path ./var/cache/ldconfig/aux-cache -o -path './var/cache/debconf/*-old'
  -o -path ./etc/hostname -o -path ./etc/hosts -o -path ./etc/resolv.conf -o -path ./var/lib/ums
  -o -path ./proc -o -path ./sys -o -path ./dev)
inventory() {
  (cd "$1" && find . -mindepth 1 \( "${EXCLUDE[@]}" \) -prune -o -printf '%y %m %U:%G %p %l\n' | LC_ALL=C sort)
}
hashes() {
  (cd "$1" && find . \( "${EXCLUDE[@]}" \) -prune -o -type f -print0 | LC_ALL=C sort -z |
    xargs -0 sha256sum)
}

"$REPO/outer-image/build.sh"
[ -d "$WORK/rootfs" ] || die "$WORK/rootfs missing after outer-image/build.sh"

log "debian:bookworm for buildah: $WORK/debian-bookworm.tar"
buildah pull -q "oci-archive:$WORK/debian-bookworm.tar" >/dev/null ||
  die "buildah pull oci-archive:$WORK/debian-bookworm.tar failed"
log "buildah bud -t $REF (log $OUT/bud.log)"
mkdir -p "$OUT"
(cd "$REPO" && buildah bud --layers -t "$REF" .) >"$OUT/bud.log" 2>&1 ||
  die "buildah bud failed, see $OUT/bud.log"

ctr=$(buildah from --pull=never "$REF")
cleanup() {
  if [ "$KEEP" = 0 ]; then
    buildah umount "$ctr" >/dev/null 2>&1 || true
    buildah rm "$ctr" >/dev/null 2>&1 || true
  else
    log "kept buildah container $ctr (buildah rm $ctr)"
  fi
}
trap cleanup EXIT
mnt=$(buildah mount "$ctr")

inventory "$WORK/rootfs" >"$OUT/scripted.files"
inventory "$mnt" >"$OUT/dockerfile.files"
hashes "$WORK/rootfs" >"$OUT/scripted.sha256"
hashes "$mnt" >"$OUT/dockerfile.sha256"
status=0
if ! diff -u "$OUT/scripted.files" "$OUT/dockerfile.files" >"$OUT/files.diff"; then
  log "the file lists differ (- scripted, + Dockerfile):"
  grep '^[-+][^-+]' "$OUT/files.diff" | head -50 >&2
  status=1
fi
# An ELF file whose only differences are its build id and debug info (e.g. CRIU built against
# -dev headers of another Debian point release: other line numbers) has the same code: reported,
# not counted as a difference.
same_code() {
  local a=$OUT/code.a b=$OUT/code.b
  objcopy --strip-debug --remove-section=.note.gnu.build-id "$1" "$a" 2>/dev/null &&
    objcopy --strip-debug --remove-section=.note.gnu.build-id "$2" "$b" 2>/dev/null &&
    cmp -s "$a" "$b"
  local rc=$?
  rm -f "$a" "$b"
  return "$rc"
}
: >"$OUT/sha256.diff"
while read -r path; do
  if [ -f "$WORK/rootfs/$path" ] && [ -f "$mnt/$path" ] && same_code "$WORK/rootfs/$path" "$mnt/$path"; then
    log "note: $path: the same code; build id and debug info differ"
  else
    echo "$path" >>"$OUT/sha256.diff"
  fi
done < <(diff <(cat "$OUT/scripted.sha256") <(cat "$OUT/dockerfile.sha256") |
  awk '/^[<>]/ {print $3}' | LC_ALL=C sort -u)
if [ -s "$OUT/sha256.diff" ]; then
  log "file contents differ (paths in $OUT/sha256.diff):"
  head -50 "$OUT/sha256.diff" >&2
  status=1
fi
n=$(wc -l <"$OUT/scripted.files")
f=$(wc -l <"$OUT/scripted.sha256")
if [ "$status" = 0 ]; then
  log "same contents: $n paths, $f regular files with equal sha256 (lists in $OUT)"
else
  log "DIFFERENT (of $n paths, $f files; lists and diffs in $OUT)"
fi
exit "$status"
