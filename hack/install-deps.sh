#!/usr/bin/env bash
# Installs everything UMS needs on a Debian 12 (bookworm) host, as root. Idempotent:
# each step checks its result first and does nothing when it is already there.
#   - containerd 1.6, runc, iptables, busybox-static, CNI plugins, iproute2 (bookworm)
#   - containerd 2.1.x from Debian sid, unpacked into $UMS_CONTAINERD2_PREFIX (not on PATH)
#   - CRIU >= 4.1 built from Debian's newer source package with hack/criu/*.patch and
#     RUNDIR=/run/criu (unless that very build is installed already), /run/criu kept on a tmpfs
#   - fs.pipe-max-size raised for CRIU
#   - debootstrap and buildah (the outer image's build and its Dockerfile check)
set -euo pipefail

UMS_CONTAINERD2_PREFIX=${UMS_CONTAINERD2_PREFIX:-/opt/ums/containerd2}
UMS_CACHE=${UMS_CACHE:-/var/cache/ums}
HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SID_APT=$UMS_CACHE/apt-sid

log() { printf '[install-deps] %s\n' "$*" >&2; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
[ -r /etc/debian_version ] || die "needs Debian 12 (bookworm); /etc/debian_version is missing"
export DEBIAN_FRONTEND=noninteractive

base_pkgs=(containerd runc iptables busybox-static containernetworking-plugins iproute2
  ca-certificates curl xz-utils kmod procps util-linux file
  openssl)  # openssl: the test bed's CA and coordinator certificates
# The outer image: outer-image/build.sh (debootstrap), the Dockerfile check (buildah).
outer_image_pkgs=(debootstrap buildah)
criu_build_deps=(build-essential pkg-config libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
  python3-protobuf libprotobuf-dev libnl-3-dev libcap-dev libnet1-dev libbsd-dev libgnutls28-dev libaio-dev
  uuid-dev libnftables-dev patch)

missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

apt_install() {
  local missing
  missing=$(missing_pkgs "$@")
  [ -z "$missing" ] && return 0
  log "installing: $(echo $missing)"
  if [ ! -f "$UMS_CACHE/.apt-updated" ] || [ -n "$(find "$UMS_CACHE/.apt-updated" -mmin +720)" ]; then
    apt-get update -qq || die "apt-get update failed"
    mkdir -p "$UMS_CACHE" && touch "$UMS_CACHE/.apt-updated"
  fi
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null || die "apt-get install failed for: $missing"
}

# apt against Debian sid, in a private directory: the host's sources stay untouched.
sid_apt() {
  mkdir -p "$SID_APT/lists/partial" "$SID_APT/archives/partial"
  if [ ! -f "$SID_APT/sources.list" ]; then
    cat >"$SID_APT/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
SRC
  fi
  apt-get -o Dir::Etc::SourceList="$SID_APT/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$SID_APT/lists" -o Dir::Cache::Archives="$SID_APT/archives" \
    -o Dir::Cache::pkgcache="" -o Dir::Cache::srcpkgcache="" -o Dir::State::status=/dev/null \
    -o APT::Sandbox::User=root -o APT::Architecture="$(dpkg --print-architecture)" "$@"
}

sid_update() {
  if [ ! -f "$SID_APT/.updated" ] || [ -n "$(find "$SID_APT/.updated" -mmin +720)" ]; then
    log "reading Debian sid's package lists (private apt dir $SID_APT)"
    sid_apt update -qq || die "apt-get update against Debian sid failed (network or keyring)"
    touch "$SID_APT/.updated"
  fi
}

install_containerd2() {
  if [ -x "$UMS_CONTAINERD2_PREFIX/usr/bin/containerd" ] &&
     "$UMS_CONTAINERD2_PREFIX/usr/bin/containerd" --version | grep -q ' v\?2\.'; then
    return 0
  fi
  sid_update
  local dir deb
  dir=$(mktemp -d)
  (cd "$dir" && sid_apt download containerd >/dev/null) || die "could not download containerd from Debian sid"
  deb=$(ls "$dir"/containerd_*.deb) || die "no containerd .deb downloaded from sid"
  rm -rf "$UMS_CONTAINERD2_PREFIX.new" && mkdir -p "$UMS_CONTAINERD2_PREFIX.new"
  dpkg-deb -x "$deb" "$UMS_CONTAINERD2_PREFIX.new"
  "$UMS_CONTAINERD2_PREFIX.new/usr/bin/containerd" --version | grep -q ' v\?2\.' ||
    die "containerd from sid ($deb) is not a 2.x release or does not run here"
  rm -rf "$UMS_CONTAINERD2_PREFIX" && mv "$UMS_CONTAINERD2_PREFIX.new" "$UMS_CONTAINERD2_PREFIX"
  rm -rf "$dir"
  log "containerd 2.x: $("$UMS_CONTAINERD2_PREFIX/usr/bin/containerd" --version)"
}

# CRIU probes the kernel at every start (kerndat: iptables, ip6tables and nft runs, ~70 ms here)
# unless it finds its cache, <RUNDIR>/criu.kdat, which it keeps only on a tmpfs. Here /run is
# not a tmpfs, so our CRIU is built with RUNDIR=/run/criu, a small tmpfs of its own.
CRIU_RUNDIR=/run/criu
# Which build of CRIU is installed: RUNDIR and our patches (hack/criu/, see each one's header).
CRIU_STAMP=/usr/local/lib/ums/criu.stamp
criu_stamp() { { echo "RUNDIR=$CRIU_RUNDIR"; cat "$HACK_DIR"/criu/*.patch; } | sha256sum | cut -c1-16; }
criu_ok() {
  command -v criu >/dev/null && criu check >/dev/null 2>&1 &&
    [ "$(cat "$CRIU_STAMP" 2>/dev/null)" = "$(criu_stamp)" ]
}

criu_rundir() {
  mkdir -p "$CRIU_RUNDIR"
  if [ "$(stat -f -c %T "$CRIU_RUNDIR")" != tmpfs ]; then
    mount -t tmpfs -o size=1m,mode=0700 ums-criu-rundir "$CRIU_RUNDIR" ||
      die "cannot mount a tmpfs on $CRIU_RUNDIR (CRIU's kerndat cache)"
  fi
}

install_criu() {
  if criu_ok; then return 0; fi
  log "criu missing, 'criu check' fails, or not our build of it; building CRIU from Debian sid's source"
  apt_install "${criu_build_deps[@]}"
  sid_update
  local src="$UMS_CACHE/criu-src" uri tarball
  mkdir -p "$src"
  # Only the orig tarball is needed (the .debian.tar.xz may be missing on the mirror).
  uri=$(sid_apt source --print-uris -qq criu 2>/dev/null | awk -F"'" '/orig\.tar/ {print $2; exit}')
  [ -n "$uri" ] || die "Debian sid has no criu source package listed"
  tarball="$src/$(basename "$uri")"
  if [ ! -s "$tarball" ]; then
    curl -fsSL -o "$tarball.part" "$uri" || die "download of $uri failed"
    mv "$tarball.part" "$tarball"
  fi
  local build="$src/build"
  rm -rf "$build" && mkdir -p "$build"
  tar -xf "$tarball" -C "$build" --strip-components=1
  log "building $(basename "$tarball") (make criu)"
  # CRIU compiles its build time into the binary unless SOURCE_DATE_EPOCH is set: the newest
  # source file's time makes the build reproducible (the Dockerfile's CRIU stage makes the same file).
  local epoch p
  epoch=$(find "$build" -type f -printf '%T@\n' | sort -n | tail -n 1 | cut -d. -f1)
  for p in "$HACK_DIR"/criu/*.patch; do
    patch -s -d "$build" -p1 <"$p" || die "CRIU patch $(basename "$p") does not apply"
  done
  SOURCE_DATE_EPOCH=$epoch make -C "$build" -j"$(nproc)" RUNDIR="$CRIU_RUNDIR" criu >"$src/build.log" 2>&1 ||
    die "CRIU build failed, see $src/build.log"
  install -m 0755 "$build/criu/criu" /usr/local/sbin/criu
  mkdir -p "$(dirname "$CRIU_STAMP")" && criu_stamp >"$CRIU_STAMP"
  hash -r
  criu_ok || die "built CRIU does not pass 'criu check': $(criu check 2>&1 | tail -3)"
}

main() {
  apt_install "${base_pkgs[@]}"
  apt_install "${outer_image_pkgs[@]}"
  install_containerd2
  criu_rundir
  install_criu
  # CRIU pipes pages through splice(); root here lacks CAP_SYS_RESOURCE to grow pipes past the limit.
  local want=$((4 * 1024 * 1024))
  if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt "$want" ]; then
    sysctl -qw fs.pipe-max-size="$want" || die "cannot set fs.pipe-max-size"
  fi
  # containerd's runc shim and ours expect runc on PATH.
  command -v runc >/dev/null || die "runc not found after install"
  log "ok: containerd $(containerd --version | awk '{print $3}'), containerd2 $("$UMS_CONTAINERD2_PREFIX/usr/bin/containerd" --version | awk '{print $3}'), runc $(runc --version | awk 'NR==1{print $3}'), $(criu --version | head -1)"
}

main "$@"
