# The UMS outer image (README: "UMS where you control nothing: the outer image"), for users
# with Docker or buildah. The same contents as outer-image/build.sh makes without either.
#
# Build context: this repository, after
#   cargo build --release -p ums-shim -p ums-coordinator -p criu-sync -p ums-node-installer
#   buildah bud -t localhost/ums/outer:latest .        # or: docker build -t ... .
# (.dockerignore sends only the three binaries and outer-image/).
ARG DEBIAN=debian:bookworm
# Mirrors that serve a snapshot of Debian (as on our build machines) have Release files past
# their Valid-Until date: apt would refuse them.
ARG APT_OPTS="-o Acquire::Check-Valid-Until=false"

# CRIU >= 4.1 from Debian's newer (sid) source package, built as hack/install-deps.sh builds it:
# bookworm's CRIU 3.17 fails on current kernels. The build dir and SOURCE_DATE_EPOCH (CRIU compiles
# in its build time otherwise) are install-deps', so that the binary is the same file as the one
# install-deps puts in /usr/local/sbin.
FROM ${DEBIAN} AS criu
ARG APT_OPTS
RUN apt-get $APT_OPTS update -qq && apt-get install -y -qq --no-install-recommends build-essential \
      pkg-config libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf \
      libprotobuf-dev libnl-3-dev libcap-dev libnet1-dev libbsd-dev libgnutls28-dev libaio-dev \
      uuid-dev libnftables-dev ca-certificates curl xz-utils patch >/dev/null
COPY hack/criu/ /tmp/criu-patches/
RUN echo 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main' \
      >/etc/apt/sources.list.d/sid-src.list \
 && apt-get $APT_OPTS update -qq \
 && uri=$(apt-get source --print-uris -qq criu | awk -F"'" '/orig\.tar/ {print $2; exit}') \
 && test -n "$uri" \
 && curl -fsSL -o /tmp/criu.orig.tar.xz "$uri" \
 && mkdir -p /var/cache/ums/criu-src/build \
 && tar -xf /tmp/criu.orig.tar.xz -C /var/cache/ums/criu-src/build --strip-components=1 \
 && epoch=$(find /var/cache/ums/criu-src/build -type f -printf '%T@\n' | sort -n | tail -n 1 | cut -d. -f1) \
 && for p in /tmp/criu-patches/*.patch; do patch -s -d /var/cache/ums/criu-src/build -p1 <"$p"; done \
 && SOURCE_DATE_EPOCH=$epoch make -C /var/cache/ums/criu-src/build -j"$(nproc)" RUNDIR=/run/criu criu >/dev/null

FROM ${DEBIAN}
ARG APT_OPTS
COPY outer-image/packages /tmp/ums-packages
RUN apt-get $APT_OPTS update -qq \
 && apt-get install -y -qq --no-install-recommends $(sed -e 's/#.*//' /tmp/ums-packages) >/dev/null \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/* /var/log/apt/eipp.log.xz \
      /tmp/ums-packages
COPY --from=criu /var/cache/ums/criu-src/build/criu/criu /usr/local/sbin/criu
COPY target/release/containerd-shim-ums-v1 target/release/ums target/release/criu-sync target/release/ums-node-installer /usr/local/bin/
COPY outer-image/ums-outer /usr/local/bin/ums-outer
COPY outer-image/containerd-config.toml /etc/containerd/config.toml
# containerd's root and state, the coordinator's files: mount a volume here.
VOLUME /var/lib/ums
ENTRYPOINT ["/usr/local/bin/ums-outer"]
