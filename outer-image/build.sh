#!/usr/bin/env bash
# outer-image/build.sh: builds the UMS outer image (an OCI image tarball for `ctr images import`)
# on this machine, without a Docker engine.
#
#   outer-image/build.sh [--out FILE] [--name REF] [--bin-dir DIR] [--strip] [--rebuild-base]
#   outer-image/build.sh --base-only
#
# Steps (each cached step is skipped when its result is there):
#   1. base (cached): a minimal Debian bookworm made with debootstrap --variant=minbase, apt
#      sources bookworm + updates + security, no apt lists: the stand-in for `debian:bookworm`,
#      also written as an image tarball (target/outer-image/debian-bookworm.tar, name
#      docker.io/library/debian:bookworm) for `buildah pull oci-archive:...` (the Dockerfile).
#   2. packages (cached, keyed by outer-image/packages): the base + `apt-get install
#      --no-install-recommends` of outer-image/packages in a chroot (containerd 1.6, runc,
#      iptables, iproute2, CRIU's libraries), apt lists and archives removed afterwards.
#   3. image: the packages stage + the UMS binaries (containerd-shim-ums-v1, ums, criu-sync, ums-node-installer in
#      /usr/local/bin), CRIU (/usr/local/sbin/criu, as hack/install-deps.sh builds it), the
#      entrypoint /usr/local/bin/ums-outer and /etc/containerd/config.toml, written with
#      ums-mkimage (tests crate) as an OCI image tarball.
#
# Options:
#   --out FILE      the image tarball (default target/outer-image.tar)
#   --name REF      the image reference (default localhost/ums/outer:latest)
#   --bin-dir DIR   where containerd-shim-ums-v1, ums, criu-sync and ums-node-installer are (default target/release;
#                   build them with `cargo build --release -p ums-shim -p ums-coordinator -p criu-sync -p ums-node-installer`)
#   --strip         strip debug info from the UMS binaries (for debug builds: 400 MB less)
#   --rebuild-base  make steps 1 and 2 again (e.g. to pick up Debian security updates)
#   --base-only     only step 1 (the debian:bookworm stand-in)
#
# Environment:
#   UMS_CACHE       cache dir (default /var/cache/ums): outer-image/base-bookworm,
#                   outer-image/pkgs-<hash>, downloaded .debs
#   UMS_MIRROR      Debian mirror (default http://deb.debian.org/debian)
#   UMS_CRIU        CRIU binary to put in the image (default: `command -v criu`, must be >= 4.1;
#                   hack/install-deps.sh builds one into /usr/local/sbin)
#   UMS_TOOLS_DIR   where ums-mkimage is (default target/debug; built when missing)
#
# Needs root (debootstrap, chroot), debootstrap (hack/install-deps.sh installs it) and network
# to the Debian mirror for steps 1 and 2. The rootfs of the last image stays in
# target/outer-image/rootfs (outer-image/compare.sh reads it).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$REPO/outer-image
CACHE=${UMS_CACHE:-/var/cache/ums}/outer-image
MIRROR=${UMS_MIRROR:-http://deb.debian.org/debian}
TOOLS_DIR=${UMS_TOOLS_DIR:-$REPO/target/debug}
WORK=$REPO/target/outer-image
BASE=$CACHE/base-bookworm
# Bumped when step 1's recipe changes, so that cached bases are made again.
BASE_RECIPE=1
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$HOME/.cargo/bin:$PATH"

log() { printf '[outer-image] %s\n' "$*" >&2; }
die() { printf '[outer-image] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

OUT=$REPO/target/outer-image.tar
NAME=localhost/ums/outer:latest
BIN_DIR=$REPO/target/release
STRIP=0
REBUILD=0
BASE_ONLY=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || die "--out needs a file"; OUT=$2; shift 2 ;;
    --name) [ $# -ge 2 ] || die "--name needs a reference"; NAME=$2; shift 2 ;;
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a dir"; BIN_DIR=$2; shift 2 ;;
    --strip) STRIP=1; shift ;;
    --rebuild-base) REBUILD=1; shift ;;
    --base-only) BASE_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap (hack/install-deps.sh)"

# The packages of step 2, from outer-image/packages (comments and blank lines dropped).
packages() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$HERE/packages" | xargs; }

ensure_mkimage() {
  MKIMAGE=$TOOLS_DIR/ums-mkimage
  if [ ! -x "$MKIMAGE" ]; then
    [ -z "${UMS_TOOLS_DIR:-}" ] || die "ums-mkimage missing in UMS_TOOLS_DIR=$UMS_TOOLS_DIR"
    log "building ums-mkimage (cargo build -p ums-tests --bin ums-mkimage)"
    (cd "$REPO" && cargo build -q -p ums-tests --bin ums-mkimage) || die "building ums-mkimage failed"
  fi
}

# apt-get update is told to take Release files past their Valid-Until date: mirrors that serve a
# snapshot of Debian (as on our build machines) have them.

# Runs "$@" (a command line for bash -c) in a private mount namespace with /proc, /dev and the
# host's resolv.conf mounted into the chroot $1: nothing stays mounted, whatever happens.
in_chroot() {
  local root=$1
  shift
  [ -e "$root/etc/resolv.conf" ] || : >"$root/etc/resolv.conf"
  unshare --mount --propagation private -- bash -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
    mkdir -p "$root/var/cache/apt/archives" "$0"
    mount --bind "$0" "$root/var/cache/apt/archives"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
      DEBIAN_FRONTEND=noninteractive LC_ALL=C bash -euc "$*"
  ' "$CACHE/apt-archives" "$root" "$@"
}

# What neither a fresh debian:bookworm nor our image should keep from being built: apt's lists
# and downloaded archives, the build host's resolv.conf and hostname.
clean_rootfs() {
  local r=$1
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/* \
    "$r"/var/log/apt/eipp.log.xz
  rm -f "$r/etc/resolv.conf" "$r/etc/hostname"
}

# Step 1.
make_base() {
  if [ "$REBUILD" = 0 ] && [ "$(cat "$BASE/.ums-base-recipe" 2>/dev/null)" = "$BASE_RECIPE" ]; then
    log "base: cached ($BASE)"
    return 0
  fi
  local tmp=$BASE.new
  rm -rf "$tmp"
  mkdir -p "$CACHE/debs"
  log "base: debootstrap --variant=minbase bookworm ($MIRROR), .debs cached in $CACHE/debs"
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" bookworm "$tmp" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed, see $CACHE/debootstrap.log"
  cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  rm -f "$tmp/etc/apt/sources.list"
  # Security and point-release updates of the base itself (what a current debian:bookworm has).
  mkdir -p "$CACHE/apt-archives"
  in_chroot "$tmp" 'apt-get -o Acquire::Check-Valid-Until=false update -qq && apt-get -y -qq upgrade >/dev/null && apt-get clean' ||
    die "apt-get upgrade in the base failed"
  clean_rootfs "$tmp"
  echo "$BASE_RECIPE" >"$tmp/.ums-base-recipe"
  rm -rf "$BASE" && mv "$tmp" "$BASE"
  rm -rf "$CACHE"/pkgs-*
  log "base: made ($BASE)"
}

base_tarball() {
  local out=$WORK/debian-bookworm.tar
  if [ -s "$out" ] && [ "$out" -nt "$BASE/.ums-base-recipe" ] && [ "$out" -nt "${BASH_SOURCE[0]}" ]; then
    return 0
  fi
  mkdir -p "$WORK"
  # The marker file is ours, not Debian's: the tarball is made from a copy without it.
  rm -rf "$WORK/base-rootfs"
  cp -a "$BASE" "$WORK/base-rootfs"
  rm -f "$WORK/base-rootfs/.ums-base-recipe"
  clean_rootfs "$WORK/base-rootfs"
  "$MKIMAGE" --rootfs "$WORK/base-rootfs" --name docker.io/library/debian:bookworm \
    --out "$out.part" --cmd bash >/dev/null || die "ums-mkimage of the base failed"
  mv "$out.part" "$out"
  rm -rf "$WORK/base-rootfs"
  log "base: image tarball $out (docker.io/library/debian:bookworm)"
}

# Step 2.
make_packages() {
  local key dir
  key=$( (packages; cat "$BASE/.ums-base-recipe") | sha256sum | cut -c1-16)
  PKGS=$CACHE/pkgs-$key
  if [ -f "$PKGS/.ums-complete" ]; then
    log "packages: cached ($PKGS)"
    return 0
  fi
  dir=$PKGS.new
  rm -rf "$dir"
  cp -a "$BASE" "$dir"
  rm -f "$dir/.ums-base-recipe"
  log "packages: apt-get install $(packages)"
  in_chroot "$dir" "apt-get -o Acquire::Check-Valid-Until=false update -qq && apt-get install -y -qq --no-install-recommends $(packages) >/dev/null" ||
    die "apt-get install in the image failed"
  clean_rootfs "$dir"
  touch "$dir/.ums-complete"
  mv "$dir" "$PKGS"
}

criu_bin() {
  local c=${UMS_CRIU:-$(command -v criu || true)} v
  [ -n "$c" ] && [ -x "$c" ] || die "no criu binary (UMS_CRIU or on PATH): run hack/install-deps.sh"
  v=$("$c" --version | awk '/^Version:/ {print $2}')
  case $v in
    [5-9].*|4.[1-9]*) ;;
    *) die "$c is CRIU $v; the image needs >= 4.1 (hack/install-deps.sh builds one)" ;;
  esac
  echo "$c"
}

# Step 3.
make_image() {
  local r=$WORK/rootfs b criu
  criu=$(criu_bin)
  for b in containerd-shim-ums-v1 ums criu-sync ums-node-installer; do
    [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b missing: cargo build --release -p ums-shim -p ums-coordinator -p criu-sync -p ums-node-installer (or --bin-dir)"
  done
  rm -rf "$r"
  cp -a "$PKGS" "$r"
  rm -f "$r/.ums-complete"
  clean_rootfs "$r"
  for b in containerd-shim-ums-v1 ums criu-sync ums-node-installer; do
    install -m 0755 "$BIN_DIR/$b" "$r/usr/local/bin/$b"
    [ "$STRIP" = 1 ] && strip --strip-debug "$r/usr/local/bin/$b"
  done
  install -m 0755 "$criu" "$r/usr/local/sbin/criu"
  install -m 0755 "$HERE/ums-outer" "$r/usr/local/bin/ums-outer"
  install -m 0644 "$HERE/containerd-config.toml" "$r/etc/containerd/config.toml"
  mkdir -p "$(dirname "$OUT")"
  "$MKIMAGE" --rootfs "$r" --name "$NAME" --out "$OUT.part" \
    --entrypoint /usr/local/bin/ums-outer >/dev/null || die "ums-mkimage failed"
  mv "$OUT.part" "$OUT"
  log "image: $OUT ($NAME, $(du -m "$OUT" | cut -f1) MiB; criu $criu, binaries from $BIN_DIR)"
}

ensure_mkimage
make_base
base_tarball
[ "$BASE_ONLY" = 1 ] && exit 0
make_packages
make_image
