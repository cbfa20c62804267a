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
# The docker test image is built from a static busybox.
[ -x /bin/busybox ] || need+=(busybox-static)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${need[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
