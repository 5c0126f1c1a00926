#!/usr/bin/env bash
# The offline image path, for a machine whose Docker engine cannot pull images (no
# registry): builds `recsys:latest` and `recsys-etcd:latest` without a base image,
# by `docker import` of a root filesystem made here, holding
#   recsys:      the release binaries built on this host (recsys, gateway,
#                retrieval-node, ranking-node),
#   recsys-etcd: Debian's etcd and etcdctl (packages etcd-server, etcd-client),
# plus exactly the shared libraries they link (per ldd), the dynamic loader, and
# a passwd/group naming the unprivileged user 65532 they run as. The images have
# the same layout, user, PATH and tags as those of deploy/Dockerfile and
# deploy/etcd.Dockerfile, so deploy/docker-compose.yml runs on either.
#
# usage: deploy/offline-images.sh [recsys|etcd|all]   (default all)
# env:   CARGO_TARGET_DIR (where the release binaries are built; default target),
#        RECSYS_IMAGE (default recsys:latest), RECSYS_ETCD_IMAGE (default recsys-etcd:latest),
#        RECSYS_PROFILE=release|debug (which cargo profile's binaries; default
#        release, debug is quicker to build where the tests already built it),
#        SKIP_CARGO_BUILD=1 to use binaries already built.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
target=${CARGO_TARGET_DIR:-target}
recsys_image=${RECSYS_IMAGE:-recsys:latest}
etcd_image=${RECSYS_ETCD_IMAGE:-recsys-etcd:latest}
binaries=(recsys gateway retrieval-node ranking-node)
uid=65532
profile=${RECSYS_PROFILE:-release}
case $profile in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=() ;;
  *) echo "offline-images: RECSYS_PROFILE is release or debug, not $profile" >&2; exit 2 ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Copies each binary's shared libraries and the dynamic loader into the root
# filesystem $1 at the paths ldd reports, following symlinks (the loader asks for
# /lib64/ld-linux-x86-64.so.2, which on Debian links into /lib/x86_64-linux-gnu).
copy_libraries() {
  local root=$1; shift
  local bin line lib
  for bin in "$@"; do
    while read -r line; do
      case $line in
        *"not found"*) echo "offline-images: $bin: $line" >&2; exit 1 ;;
        *"=> /"*) lib=${line#*=> }; lib=${lib%% (*} ;;
        /*) lib=${line%% (*} ;;
        *) continue ;;   # linux-vdso: provided by the kernel
      esac
      cp -L --parents "$lib" "$root"
    done < <(ldd "$bin")
  done
}

# The files every image has: users, name resolution through /etc/hosts (compose
# and Kubernetes write it) and DNS, a world-writable /tmp.
base_files() {
  local root=$1
  mkdir -p "$root/etc" "$root/tmp"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nrecsys:x:%s:%s:recsys:/nonexistent:/sbin/nologin\n' $uid $uid >"$root/etc/passwd"
  printf 'root:x:0:\nrecsys:x:%s:\n' $uid >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
}

# docker import of root filesystem $2 (owned by root) plus the directories $3
# (space-separated, may be empty) owned by the image user, tagged $1, with the
# remaining args as --change. A named volume mounted on such a directory starts
# owned by the image user, so the unprivileged jobs can write into it.
import_image() {
  local tag=$1 root=$2 owned=$3; shift 3
  local tarball=$stage/$(basename "$root").tar dir
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$tarball" .
  for dir in $owned; do
    mkdir -p "$stage/owned/$dir"
    tar --numeric-owner --owner=$uid --group=$uid -C "$stage/owned" -rf "$tarball" "./$dir"
    rm -rf "$stage/owned"
  done
  local change=()
  for c in "$@"; do change+=(--change "$c"); done
  docker import "${change[@]}" "$tarball" "$tag" >/dev/null
  # The image this tag named before is now dangling: drop it (and only such).
  docker image prune -f --filter label=recsys.image.build=offline >/dev/null
  echo "offline-images: $tag $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
}

recsys_image() {
  if [ "${SKIP_CARGO_BUILD:-0}" != 1 ]; then
    cargo build "${cargo_profile[@]}" --locked -p recsys-cli -p recsys-gateway -p recsys-retrieval-node -p recsys-ranking-node
  fi
  local root=$stage/recsys paths=() b
  mkdir -p "$root/usr/local/bin"
  for b in "${binaries[@]}"; do
    [ -x "$target/$profile/$b" ] || { echo "offline-images: $target/$profile/$b missing" >&2; exit 1; }
    # Without the line tables (debug = "line-tables-only"): a fifth of the size;
    # panics still name functions.
    strip --strip-debug -o "$root/usr/local/bin/$b" "$target/$profile/$b"
    chmod 0755 "$root/usr/local/bin/$b"
    paths+=("$target/$profile/$b")
  done
  copy_libraries "$root" "${paths[@]}"
  base_files "$root"
  import_image "$recsys_image" "$root" "bundle secrets" \
    "USER $uid:$uid" "WORKDIR /" "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
    'CMD ["recsys", "--help"]' "LABEL org.opencontainers.image.title=recsys recsys.image.build=offline recsys.image.profile=$profile"
}

etcd_image() {
  local etcd etcdctl
  etcd=$(command -v etcd || echo /usr/bin/etcd)
  etcdctl=$(command -v etcdctl || echo /usr/bin/etcdctl)
  for f in "$etcd" "$etcdctl"; do
    [ -x "$f" ] || { echo "offline-images: $f missing: run scripts/install-deps.sh (etcd-server, etcd-client)" >&2; exit 1; }
  done
  local root=$stage/etcd
  mkdir -p "$root/usr/bin"
  install -m 0755 "$etcd" "$root/usr/bin/etcd"
  install -m 0755 "$etcdctl" "$root/usr/bin/etcdctl"
  copy_libraries "$root" "$etcd" "$etcdctl"
  base_files "$root"
  import_image "$etcd_image" "$root" "var/lib/etcd secrets" \
    "USER $uid:$uid" "WORKDIR /var/lib/etcd" "ENV PATH=/usr/bin:/bin ETCDCTL_API=3" \
    'CMD ["etcd", "--data-dir", "/var/lib/etcd/data"]' "LABEL org.opencontainers.image.title=recsys-etcd recsys.image.build=offline"
}

case $what in
  recsys) recsys_image ;;
  etcd) etcd_image ;;
  all) etcd_image; recsys_image ;;
  *) echo "usage: $0 [recsys|etcd|all]" >&2; exit 2 ;;
esac
