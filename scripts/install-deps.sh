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
# The gate's GitHub App test makes the App's RSA key with `openssl genrsa` (ring cannot).
want openssl openssl
want setpriv util-linux
# The sandbox tests read and change the host firewall and list its addresses; a root
# fishd makes per-application users (useradd, in passwd) and network namespaces (nsenter,
# in util-linux). The cluster partition tests put fishd nodes in network namespaces
# (ip) and cut them apart with iptables.
want iptables iptables
want ip iproute2
want useradd passwd
want nsenter util-linux
# The dashboard's browser tests drive a headless Chromium over WebDriver.
want chromium chromium
want chromedriver chromium-driver
# The docker test image and the qemu test guest are built from a static busybox (a
# dynamic one from the `busybox` package does not run in either).
dpkg-query -W -f='${db:Status-Abbrev}' busybox-static 2>/dev/null | grep -q '^ii' || need+=(busybox-static)
# The qemu driver: socat (the guests' metadata relay), genisoimage (cloud-init seeds),
# and Debian's cloud kernel for the test guest (scripts/qemu-test-guest.sh builds its
# initramfs from it and busybox; cpio packs it). QEMU itself is installed below.
want socat socat
want genisoimage genisoimage
want cpio cpio
ls /boot/vmlinuz-*-cloud-amd64 >/dev/null 2>&1 || need+=(linux-image-cloud-amd64)

root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing $*; run as root or install them" >&2
    exit 1
  fi
}

if [ ${#need[@]} -gt 0 ]; then
  root "${need[@]}"
  echo "install-deps: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# QEMU (qemu-system-x86) and qemu-img (qemu-utils) of one release, in one transaction:
# qemu-system-x86 breaks a qemu-utils of another release (some images carry a
# backported one), which apt would otherwise remove, leaving no qemu-img. Without
# recommends: they add a GUI, audio and video drivers (over 100 packages) the tests
# never use.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1; then
  root qemu-system-x86 qemu-utils
  v=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  if [ -z "$v" ]; then
    apt-get update -qq
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  fi
  if [ -z "$v" ] || [ "$v" = "(none)" ]; then
    echo "install-deps: no qemu-system-x86 in the package sources" >&2
    exit 1
  fi
  echo "install-deps: installing qemu-system-x86 and qemu-utils $v"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-system-x86=$v" "qemu-utils=$v" >/dev/null
fi
