#!/usr/bin/env bash
# Builds the image the docker driver's tests run: aquarium-test/busybox:latest, a
# busybox-only root filesystem imported into the local engine (no registry is reachable
# from CI or the dev machines), and saves it as a `docker save` tarball for the url+sum
# tests. Idempotent: an image already present is kept, unless --force.
#
# Usage: .ci/docker-test-image.sh [--force] [OUT_TARBALL]
#   OUT_TARBALL defaults to target/docker-test-image/busybox.tar; its sha256 is written
#   beside it (busybox.tar.sha256).
set -euo pipefail

IMAGE=aquarium-test/busybox:latest
force=0
if [[ "${1:-}" == "--force" ]]; then
    force=1
    shift
fi
out=${1:-target/docker-test-image/busybox.tar}

if ! docker info >/dev/null 2>&1; then
    echo "docker-test-image: no docker engine answers; nothing to do" >&2
    exit 1
fi

if [[ ! -x /bin/busybox ]]; then
    # A fresh machine has no package lists yet.
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && apt-get install -y -qq busybox-static
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq busybox-static
    fi
fi
# A dynamically linked busybox would need its libraries in the image too.
if file /bin/busybox 2>/dev/null | grep -q 'dynamically linked'; then
    echo "docker-test-image: /bin/busybox is dynamically linked; install busybox-static" >&2
    exit 1
fi

if [[ $force -eq 1 ]] || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,proc,sys,dev,mnt}
    chmod 1777 "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    # --install wants to run inside the rootfs; chroot does that without a container.
    chroot "$rootfs" /bin/busybox --install -s
    cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/:/bin/false
EOF
    cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    tar -C "$rootfs" -c . | docker import \
        --change 'CMD ["/bin/sh"]' \
        --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$IMAGE" >/dev/null
    echo "docker-test-image: built $IMAGE"
else
    echo "docker-test-image: $IMAGE already present"
fi

mkdir -p "$(dirname "$out")"
if [[ $force -eq 1 || ! -s "$out" ]]; then
    docker save -o "$out.part" "$IMAGE"
    mv "$out.part" "$out"
fi
sum="sha256:$(sha256sum "$out" | cut -d' ' -f1)"
echo "$sum" >"$out.sha256"
echo "docker-test-image: $out $sum"
