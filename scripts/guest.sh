# The qemu guest that boots Debian's stock kernel (real kernel WireGuard),
# shared by scripts/kernel-tests and scripts/capture-genl (sourced, not run).
#
#   guest_prepare [WHAT:PACKAGE ...]   packages, cached kernel, cached base initramfs
#   guest_add_binary DIR BINARY        copy BINARY and its ldd libraries under DIR
#   guest_initrd DIR                   print the path of base + DIR (caller removes it)
#   guest_boot INITRD TIMEOUT          boot; returns qemu's exit code
#
# Needs $repo; honours $WG_NETNS_CACHE (default: .cache/ in the repo). Sets
# $cache, $kdir, $kver and $base. Messages go through log(), which the caller
# may define (default prefix: guest).

guest_lib=${BASH_SOURCE[0]}
cache=${WG_NETNS_CACHE:-$repo/.cache}
declare -F log >/dev/null || log() { echo "guest: $*" >&2; }

# guest_add_binary DIR BINARY: BINARY at the same path under DIR, with the
# libraries ldd names.
guest_add_binary() {
  local r=$1 b=$2 lib
  mkdir -p "$r$(dirname "$b")"
  cp "$b" "$r$b"
  for lib in $(ldd "$b" | grep -o '/[^ ]*'); do
    mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"
  done
}

guest_prepare() {
  mkdir -p "$cache"

  # --- packages -------------------------------------------------------------
  local need=() pair
  for pair in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static wg:wireguard-tools \
              ip:iproute2 depmod:kmod xz:xz-utils cpio:cpio ping:iputils-ping "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
  done
  [ -e /bin/busybox ] || need+=(busybox-static)
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi

  # --- kernel and modules (cached) ------------------------------------------
  kdir=$cache/kernel
  if [ ! -s "$kdir/vmlinux" ] || [ ! -s "$kdir/modules.order" ]; then
    log "fetching Debian's kernel image"
    rm -rf "$kdir"; mkdir -p "$kdir/deb"
    [ -n "$(apt-cache depends linux-image-amd64 2>/dev/null | grep -m1 Depends)" ] || apt-get update -qq
    local pkg vmlinuz off m
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
    (cd "$kdir/deb" && apt-get download -qq "$pkg")
    dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
    kver=$(ls "$kdir/root/lib/modules")
    depmod -b "$kdir/root" "$kver"
    # The uncompressed kernel boots ~5 s faster under TCG.
    vmlinuz=$kdir/root/boot/vmlinuz-$kver
    off=$(grep -abo $'\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
    tail -c +$((off + 1)) "$vmlinuz" | xz -dc > "$kdir/vmlinux" 2>/dev/null || true
    [ -s "$kdir/vmlinux" ] || { log "could not extract vmlinux"; exit 1; }
    : > "$kdir/modules.order"
    for m in veth wireguard; do
      modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}' >> "$kdir/modules.order"
    done
    awk '!seen[$0]++' "$kdir/modules.order" > "$kdir/modules.tmp" && mv "$kdir/modules.tmp" "$kdir/modules.order"
    echo "$kver" > "$kdir/version"
    rm -rf "$kdir/deb"
  fi
  kver=$(cat "$kdir/version")

  # --- base initramfs (cached): busybox, iproute2, wg, ping, modules -------
  base=$cache/base-initrd.cpio.gz
  if [ ! -s "$base" ] || [ "$base" -ot "$guest_lib" ]; then
    log "building the base initramfs"
    local r a b ko n
    r=$(mktemp -d); trap 'rm -rf "$r"' EXIT
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,lib/modules,tests}
    cp /bin/busybox "$r/bin/busybox"
    for a in $("$r/bin/busybox" --list); do
      [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"
    done
    rm -f "$r/bin/ip" "$r/bin/ping"
    for b in /usr/sbin/ip /usr/bin/wg /usr/bin/ping; do
      guest_add_binary "$r" "$b"
    done
    n=0
    while read -r ko; do
      n=$((n + 1)); cp "$ko" "$r/lib/modules/$(printf %02d $n)-$(basename "$ko")"
    done < "$kdir/modules.order"
    mkdir -p "$r/var" && ln -s /run "$r/var/run"
    echo "root:x:0:0:root:/root:/bin/sh" > "$r/etc/passwd"
    cat > "$r/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t tmpfs run /run
/bin/busybox mount -t tmpfs tmp /tmp
/bin/busybox mkdir -p /run/netns /run/wireguard
for m in /lib/modules/*.ko; do /bin/busybox insmod "$m" || echo "insmod $m failed"; done
/usr/sbin/ip link set lo up
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
export WG_NETNS_TEST_BACKEND=kernel WG_NETNS_REQUIRE_ALL=1 RUST_BACKTRACE=1
[ -x /usr/bin/wg-cni ] && export WG_CNI_BIN=/usr/bin/wg-cni
echo "guest: kernel $(/bin/busybox uname -r), $(/bin/busybox ls /tests | /bin/busybox wc -l) test binaries"
status=0
for t in /tests/*; do
  [ -x "$t" ] || continue
  echo "guest: running $(/bin/busybox basename "$t")"
  "$t" --test-threads=2 </dev/null || status=1
done
[ -x /tests-extra/run ] && { /tests-extra/run || status=1; }
echo "guest: done, status $status"
printf "\\$(printf %o $status)" | /bin/busybox dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
/bin/busybox poweroff -f
EOF
    chmod +x "$r/init"
    (cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) > "$base"
    truncate -s %512 "$base"
    rm -rf "$r"; trap - EXIT
  fi
}

# guest_initrd DIR: the cached base image with DIR appended as an uncompressed
# cpio; prints the new file's path.
guest_initrd() {
  local initrd
  initrd=$(mktemp "${TMPDIR:-/tmp}/guest-initrd.XXXXXX")
  cp "$base" "$initrd"
  (cd "$1" && find . -mindepth 1 | cpio -o -H newc --quiet) >> "$initrd"
  echo "$initrd"
}

# guest_boot INITRD TIMEOUT: boot the guest, serial console on stdout. The
# guest's /init writes its status to port 0xf4, so qemu exits with
# (status << 1) | 1: 1 passed, 3 failed; 124 is a timeout; anything else
# (an even code) is a crash.
guest_boot() {
  local rc
  set +e
  timeout "$2" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -M pc -smp 2 -m 2048 \
    -nographic -nodefaults -no-reboot -serial stdio -nic none \
    -device isa-debug-exit,iobase=0xf4,iosize=4 \
    -kernel "$kdir/vmlinux" -initrd "$1" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic mitigations=off" </dev/null
  rc=$?
  set -e
  return $rc
}
