#!/usr/bin/env bash
# Builds the guest the qemu driver's tests boot, from local files only (no download):
# Debian's cloud kernel (linux-image-cloud-amd64) and a busybox-static initramfs that
# loads the virtio modules, takes a DHCP lease on QEMU's user network, fetches its
# metadata from http://10.0.2.100/meta/v1/data and prints it to the serial console,
# then does what the kernel command line asks (see init below). Also makes a small
# qcow2 base image. Idempotent: outputs newer than their inputs are kept.
#
# Usage: scripts/qemu-test-guest.sh [OUT_DIR]   (default target/qemu-test)
# Outputs: OUT_DIR/vmlinuz, OUT_DIR/initramfs.cpio.gz, OUT_DIR/base.qcow2
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/qemu-test}
mkdir -p "$out"
# Tests running at once build it once.
exec 9>"$out/.lock"
flock 9

kernel=$(ls -1 /boot/vmlinuz-*-cloud-amd64 2>/dev/null | sort -V | tail -n1 || true)
if [[ -z "$kernel" ]]; then
    echo "qemu-test-guest: no /boot/vmlinuz-*-cloud-amd64; install linux-image-cloud-amd64 (scripts/install-deps.sh)" >&2
    exit 1
fi
kver=${kernel#/boot/vmlinuz-}
moddir=/lib/modules/$kver
if [[ ! -x /bin/busybox ]] || file -L /bin/busybox 2>/dev/null | grep -q 'dynamically linked'; then
    echo "qemu-test-guest: a static /bin/busybox is needed (busybox-static)" >&2
    exit 1
fi

# Rebuild when this script, the kernel or busybox changed.
if [[ -s "$out/initramfs.cpio.gz" && -s "$out/vmlinuz" && -s "$out/base.qcow2" &&
      "$out/initramfs.cpio.gz" -nt "$0" && "$out/initramfs.cpio.gz" -nt "$kernel" &&
      "$out/initramfs.cpio.gz" -nt /bin/busybox ]]; then
    exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc/acpi/PWRF,proc,sys,dev,tmp,run,var/log,var/run,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ -e "$root/bin/$applet" ]] || ln -s busybox "$root/bin/$applet"
done

# The cloud kernel builds virtio, the ACPI button and evdev (which acpid reads) as modules: load them (and what
# they depend on, per modules.dep) in dependency order.
declare -A seen=()
order=()
add() {
    local rel=$1 dep
    [[ -n "${seen[$rel]:-}" ]] && return
    seen[$rel]=1
    for dep in $(grep -E "^${rel}:" "$moddir/modules.dep" | cut -d: -f2); do
        add "$dep"
    done
    order+=("$rel")
}
for m in virtio_pci virtio_net virtio_blk button evdev; do
    rel=$(grep -E "/${m}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | cut -d: -f1 | head -n1)
    [[ -n "$rel" ]] || { echo "qemu-test-guest: no module $m in $moddir" >&2; exit 1; }
    add "$rel"
done
: >"$root/modules.order"
for rel in "${order[@]}"; do
    name=$(basename "$rel")
    case "$name" in
        *.ko.xz) xz -dc "$moddir/$rel" >"$root/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$rel" >"$root/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *) cp "$moddir/$rel" "$root/lib/modules/$name" ;;
    esac
    echo "$name" >>"$root/modules.order"
done

# busybox acpid runs /etc/acpi/PWRF/00000080 when the power button (QMP
# system_powerdown) is pressed.
cat >"$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "fish-guest: power button, powering off"
sync
poweroff -f
EOF
chmod +x "$root/etc/acpi/PWRF/00000080"

cat >"$root/udhcpc.sh" <<'EOF'
#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
exit 0
EOF
chmod +x "$root/udhcpc.sh"

# What the guest does, steered by the kernel command line:
#   fish.probe=HOST:PORT  try http://HOST:PORT/ and print whether it was reached
#   fish.connect=T1,T2    through the proxy its metadata names (FISH_PROXY), HTTP CONNECT
#                         to each HOST:PORT and GET /; print the reply on one line
#   fish.disk=1           write a marker to /dev/vda (the overlay, never the base)
#   fish.flood=N          keep N connections to the proxy address open, reopening each
#                         as soon as it closes (one host relay per connection)
#   fish.poweroff=1       power off once done (the resource ends by itself)
cat >"$root/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
acpid
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}";; esac; done; }
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -q -n -t 10 -T 1 -s /udhcpc.sh >/dev/null 2>&1
echo "fish-guest: address $(ip -4 -o addr show eth0 | awk '{print $4}')"
if [ "$(arg fish.disk)" = 1 ]; then
  echo "written by the guest" | dd of=/dev/vda bs=512 conv=notrunc 2>/dev/null && sync
  echo "fish-guest: wrote to /dev/vda"
fi
echo "fish-guest: metadata begin"
timeout 10 wget -q -O - "http://10.0.2.100/meta/v1/data?format=env" || echo "fish-guest: metadata request failed"
echo "fish-guest: metadata end"
probe=$(arg fish.probe)
if [ -n "$probe" ]; then
  if timeout 10 wget -q -O /dev/null "http://$probe/" 2>/dev/null; then
    echo "fish-probe: reached $probe"
  else
    echo "fish-probe: blocked $probe"
  fi
fi
connect=$(arg fish.connect)
if [ -n "$connect" ]; then
  proxy=$(timeout 10 wget -q -O - "http://10.0.2.100/meta/v1/data?format=env" | sed -n "s/^FISH_PROXY='\(.*\)'$/\1/p")
  for t in $(echo "$connect" | tr ',' ' '); do
    reply=$( (printf 'CONNECT %s HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n' "$t"; sleep 3) | timeout 10 nc "${proxy%:*}" "${proxy##*:}" 2>&1 | tr -d '\r' | tr '\n' ' ')
    echo "fish-proxy: $t via ${proxy:-no proxy}: $reply"
  done
fi
flood=$(arg fish.flood)
if [ -n "$flood" ]; then
  i=0
  while [ "$i" -lt "$flood" ]; do
    (while true; do sleep 30 | nc 10.0.2.101 3128 >/dev/null 2>&1; done) &
    i=$((i+1))
  done
  echo "fish-flood: $flood connections"
fi
if [ "$(arg fish.poweroff)" = 1 ]; then
  echo "fish-guest: powering off by itself"
  sync
  poweroff -f
fi
echo "fish-guest: ready"
while true; do sleep 3600; done
EOF
chmod +x "$root/init"

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) | gzip -1 >"$out/initramfs.cpio.gz.part"
cp "$kernel" "$out/vmlinuz.part"
qemu-img create -q -f qcow2 "$out/base.qcow2.part" 64M
mv "$out/vmlinuz.part" "$out/vmlinuz"
mv "$out/base.qcow2.part" "$out/base.qcow2"
mv "$out/initramfs.cpio.gz.part" "$out/initramfs.cpio.gz"
echo "qemu-test-guest: $out (kernel $kver, modules: $(tr '\n' ' ' <"$root/modules.order"))"
