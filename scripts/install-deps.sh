#!/usr/bin/env bash
# Installs the Debian packages the tests use, when missing. Called by .ci/run and by
# scripts/test.sh, so the README's test command works on a fresh machine too.
# Each feature adds its packages here: one line of `want CMD PACKAGE`.
set -euo pipefail

need=()
want() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }

# The process driver's tests run `curl` inside their resources; `setsid` and `setpriv`
# (util-linux) start them.
want curl curl
want setpriv util-linux
# The dashboard's browser tests drive a headless Chromium over WebDriver.
want chromium chromium
want chromedriver chromium-driver
# The docker test image is built from a static busybox.
[ -x /bin/busybox ] || need+=(busybox-static)
# The qemu driver: QEMU, qemu-img, socat (the guests' metadata relay), genisoimage
# (cloud-init seeds), and Debian's cloud kernel for the test guest
# (scripts/qemu-test-guest.sh builds its initramfs from it and busybox).
want qemu-system-x86_64 qemu-system-x86
want socat socat
want genisoimage genisoimage
want cpio cpio
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || need+=(linux-image-cloud-amd64)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# qemu-img must match qemu-system-x86: installing the one may remove a qemu-utils of
# another release (a backport), so it is checked after, and pinned to the same version.
if ! command -v qemu-img >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing qemu-utils; run as root or install it" >&2
    exit 1
  fi
  v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  echo "install-deps: installing qemu-utils${v:+ $v}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades "qemu-utils${v:+=$v}" >/dev/null
fi
