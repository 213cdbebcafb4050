#!/usr/bin/env bash
# Guest sequential write and read of 256 MiB (dd, O_DIRECT, 1 MiB blocks) on the encrypted
# data disk of a TCG VM (the Debian kernel + a busybox initramfs, `guest_boot_files` in
# lib.sh): qemu's own LUKS driver over a sealvol LUKS1 volume vs sealvol's NBD export of
# the same volume. Same VM config; prints MiB/s for each and the NBD/qemu-LUKS ratio.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need busybox busybox-static
MIB=${BENCH_MIB:-256}
build_sealvol
dir=$(scratch_dir $((MIB * 3)))
trap '[ -n "${srv:-}" ] && kill "$srv" 2>/dev/null; rm -rf "$dir"' EXIT

cat > "$dir/guest.sh" <<G
t0=\$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/zero of=/dev/vda bs=1M count=$MIB oflag=direct 2>/dev/null
t1=\$(cut -d' ' -f1 /proc/uptime)
dd if=/dev/vda of=/dev/null bs=1M count=$MIB iflag=direct 2>/dev/null
t2=\$(cut -d' ' -f1 /proc/uptime)
echo "BENCH \$t0 \$t1 \$t2"
G
guest_boot_files "$dir" "$dir/guest.sh" virtio_pci virtio_blk

key=$dir/key
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key"
vol=$dir/data.luks
"$SEALVOL" format --type luks1 --key-profile machine --key-file "$key" --size $((MIB + 16))M "$vol" >/dev/null

boot() { # $1: -blockdev JSON for node "data"; extra args follow
  local bd="$1"; shift
  timeout 600 qemu-system-x86_64 -M q35 -accel tcg -cpu max -m 512 -smp 1 -nographic -no-reboot \
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
    "$@" -blockdev "$bd" -device virtio-blk-pci,drive=data 2>&1 | tr -d '\r' | awk '/^BENCH/{print $2, $3, $4}'
}
rate() { awk -v a="$1" -v b="$2" -v m="$MIB" 'BEGIN{printf "%.1f", m / (b - a)}'; }

# qemu LUKS driver (secret from a 0600 file).
install -m 600 "$key" "$dir/secret"
read -r a b c < <(boot '{"driver":"luks","node-name":"data","key-secret":"k","file":{"driver":"file","filename":"'"$vol"'"}}' \
  -object "secret,id=k,file=$dir/secret")
lw=$(rate "$a" "$b"); lr=$(rate "$b" "$c")

# sealvol NBD export.
"$SEALVOL" serve nbd --key-file "$key" --socket "$dir/nbd.sock" "$vol" >/dev/null 2>&1 & srv=$!
for _ in $(seq 100); do [ -S "$dir/nbd.sock" ] && break; sleep 0.05; done
read -r a b c < <(boot '{"driver":"nbd","node-name":"data","export":"","server":{"type":"unix","path":"'"$dir/nbd.sock"'"}}')
nw=$(rate "$a" "$b"); nr=$(rate "$b" "$c")
kill "$srv"; wait "$srv" 2>/dev/null || true; srv=

printf '%-22s %10s %10s\n' "guest $MIB MiB (TCG)" "write" "read"
printf '%-22s %7s MiB/s %7s MiB/s\n' "qemu LUKS1 driver" "$lw" "$lr"
printf '%-22s %7s MiB/s %7s MiB/s\n' "sealvol NBD" "$nw" "$nr"
awk -v lw="$lw" -v lr="$lr" -v nw="$nw" -v nr="$nr" \
  'BEGIN{printf "ratio NBD/qemu-LUKS: write %.2fx, read %.2fx\n", nw/lw, nr/lr}'
