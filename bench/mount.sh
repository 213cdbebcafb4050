#!/usr/bin/env bash
# Mounted volumes and NBD exports, side by side.
#
# FUSE file -> loop device -> ext4, for three exports of a 2 GiB volume:
#   sealvol   `sealvol open --mkfs ext4` (LUKS2, 4096-byte sectors)
#   qsd-luks  `qemu-storage-daemon --export type=fuse` over a qemu LUKS1 volume
#   qsd-raw   `qemu-storage-daemon --export type=fuse` over a raw file: no crypto, the
#             ceiling for any FUSE export here
# each: RUNS (3) rounds of a sequential write of BENCH_MIB (dd, conv=fsync), drop_caches and
# a sequential read (dd), best of each reported (single first writes swung 4x from run to
# run on this VM, for every export alike), then random 4 KiB reads for 10 s (fio, libaio, iodepth 16, O_DIRECT) and the export's peak
# RSS (VmHWM).
# NBD: `qemu-img convert` of 1 GiB of random data from `sealvol serve nbd` vs from `qemu-nbd`
# serving a qemu LUKS1 image (both over unix sockets), best of NBD_RUNS (3) each, with the
# server's peak RSS. Twice: into a new file (qemu-img's own cost of allocating tmpfs pages
# for the copy is then a third of the time) and with -n into a preallocated file, which
# leaves more of the time to the servers. nbd-raw: qemu-nbd serving the ciphertext file raw,
# no crypto: the most any qemu-nbd gives qemu-img here.
# Targets: FUSE write and read >= 3x qsd-luks and >= 0.85x qsd-raw; NBD >= 5x qemu-nbd;
# export RSS <= 64 MiB.
# Files live in /dev/shm when it has room (else /tmp; BENCH_DIR overrides) so that the
# backing disk is not what is measured.
# (awk reads fio's whole output: stopping early would kill fio with SIGPIPE under pipefail.)
# Usage (root): bench/mount.sh      Env: BENCH_MIB=1024 BENCH_DIR=... FIO_SECONDS=10 RUNS=3 NBD_RUNS=3
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need qemu-img qemu-utils
need qemu-nbd qemu-utils
need qemu-storage-daemon qemu-system-common
need fio fio
need mkfs.ext4 e2fsprogs
need losetup mount
build_sealvol
MIB="${BENCH_MIB:-1024}"
FIO_SECONDS="${FIO_SECONDS:-10}"
RUNS="${RUNS:-3}"
NBD_RUNS="${NBD_RUNS:-3}"
VOL_MIB=$((MIB * 2 < 2048 ? 2048 : MIB * 2))
dir="$(scratch_dir $((VOL_MIB * 3 + MIB * 2 + 512)))"
cleanup() {
  set +e
  for m in "$dir"/mnt-*; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  "$SEALVOL" close "$dir/mnt-sealvol" >/dev/null 2>&1
  for f in "$dir"/*.fuse; do
    for l in $(losetup -j "$f" -O NAME -n 2>/dev/null); do losetup -d "$l"; done
  done
  for p in "$dir"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  [ -n "${NBD_PID:-}" ] && kill "$NBD_PID" 2>/dev/null
  sleep 1
  rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
echo "scratch: $dir ($(df -P . | awk 'NR==2 {print $1}')), ${MIB} MiB, volumes ${VOL_MIB} MiB"
(umask 077 && head -c 32 /dev/urandom > key && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > qkey)
QSECRET=(--object "secret,id=sec0,file=$dir/qkey")

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
rss_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# measure NAME MOUNTPOINT PID: fills W_name R_name (best of RUNS rounds of a write, then a
# cold read) IOPS_name RSS_name
measure() {
  local name="$1" mnt="$2" pid="$3" t0 t1 t2 t3 iops i w="" r=""
  for ((i = 0; i < RUNS; i++)); do
    rm -f "$mnt/big"
    drop_caches
    t0=$(now_ns)
    dd if=/dev/zero of="$mnt/big" bs=1M count="$MIB" conv=fsync status=none
    t1=$(now_ns)
    drop_caches
    t2=$(now_ns)
    dd if="$mnt/big" of=/dev/null bs=1M status=none
    t3=$(now_ns)
    if [ -z "$w" ] || [ $((t1 - t0)) -lt "$w" ]; then w=$((t1 - t0)); fi
    if [ -z "$r" ] || [ $((t3 - t2)) -lt "$r" ]; then r=$((t3 - t2)); fi
  done
  drop_caches
  iops=$(fio --name=rr --filename="$mnt/big" --rw=randread --bs=4k --direct=1 \
    --ioengine=libaio --iodepth=16 --runtime="$FIO_SECONDS" --time_based \
    --output-format=json 2>/dev/null | awk -F: '/"iops"/ && !seen { gsub(/[ ,]/, "", $2); print int($2); seen = 1 }')
  printf -v "W_$name" '%s' "$(secs 0 "$w")"
  printf -v "R_$name" '%s' "$(secs 0 "$r")"
  printf -v "IOPS_$name" '%s' "$iops"
  printf -v "RSS_$name" '%s' "$(rss_mib "$pid")"
}

# qsd_export NAME BLOCKDEV-ARGS...: FUSE export NAME.fuse of node "top", pid in NAME.pid
qsd_export() {
  local name="$1"
  shift
  touch "$name.fuse"
  qemu-storage-daemon "${QSECRET[@]}" "$@" \
    --export "type=fuse,id=exp0,node-name=top,mountpoint=$dir/$name.fuse,writable=on" \
    --pidfile "$dir/$name.pid" --daemonize
}

loop_mount() { # FILE MNT -> prints the loop device
  local l
  l=$(losetup --find --show --sector-size 4096 "$1")
  mkfs.ext4 -q -F -E nodiscard "$l"
  mkdir -p "$2"
  mount "$l" "$2"
  echo "$l"
}

unmount_loop() { umount "$2"; losetup -d "$1"; }

echo "== FUSE -> loop -> ext4"
# sealvol
"$SEALVOL" format --key-file key --size "${VOL_MIB}M" vol.img >/dev/null
mkdir -p mnt-sealvol
"$SEALVOL" --json open --key-file key --mount mnt-sealvol --mkfs ext4 vol.img > open.json
SV_PID=$(awk -F: '/"pid"/ { gsub(/[ ,]/, "", $2); print $2 }' open.json)
measure sealvol mnt-sealvol "$SV_PID"
"$SEALVOL" close mnt-sealvol >/dev/null
echo "sealvol done"

# qsd over a qemu LUKS1 volume
retry 5 qemu-img create -f luks "${QSECRET[@]}" -o key-secret=sec0,iter-time=10 q.luks "${VOL_MIB}M" >/dev/null
qsd_export qluks --blockdev "driver=file,node-name=f0,filename=$dir/q.luks" \
  --blockdev "driver=luks,node-name=top,file=f0,key-secret=sec0"
L=$(loop_mount qluks.fuse mnt-qluks)
measure qluks mnt-qluks "$(cat qluks.pid)"
unmount_loop "$L" mnt-qluks
kill "$(cat qluks.pid)"; rm -f qluks.pid
echo "qsd-luks done"

# qsd over a raw file
truncate -s "${VOL_MIB}M" raw.img
qsd_export qraw --blockdev "driver=file,node-name=top,filename=$dir/raw.img"
L=$(loop_mount qraw.fuse mnt-qraw)
measure qraw mnt-qraw "$(cat qraw.pid)"
unmount_loop "$L" mnt-qraw
kill "$(cat qraw.pid)"; rm -f qraw.pid
rm -f raw.img q.luks vol.img
echo "qsd-raw done"

echo "== NBD: qemu-img convert of ${MIB} MiB, best of $NBD_RUNS"
head -c "$((MIB << 20))" /dev/urandom > src
"$SEALVOL" format --key-file key --size "${MIB}M" nvol.img >/dev/null
"$SEALVOL" import --key-file key src nvol.img >/dev/null
retry 5 qemu-img convert -f raw -O luks "${QSECRET[@]}" -o key-secret=sec0,iter-time=10 src n.luks
rm -f src
"$SEALVOL" serve nbd --key-file key --socket "$dir/sv.sock" nvol.img >/dev/null &
NBD_PID=$!
for _ in $(seq 100); do [ -S sv.sock ] && break; sleep 0.1; done
T_NBD_SV=$(best_of "$NBD_RUNS" "rm -f out.raw" \
  "qemu-img convert -f raw -O raw 'nbd+unix:///?socket=$dir/sv.sock' out.raw")
T_NBDP_SV=$(best_of "$NBD_RUNS" ":" \
  "qemu-img convert -n -f raw -O raw 'nbd+unix:///?socket=$dir/sv.sock' out.raw")
RSS_NBD_SV=$(rss_mib "$NBD_PID")
kill "$NBD_PID"; wait "$NBD_PID" || true; NBD_PID=
qemu-nbd "${QSECRET[@]}" --image-opts "driver=luks,key-secret=sec0,file.driver=file,file.filename=$dir/n.luks" \
  --socket="$dir/q.sock" --persistent --shared=4 --fork --pid-file="$dir/qnbd.pid"
T_NBD_Q=$(best_of "$NBD_RUNS" "rm -f out.raw" \
  "qemu-img convert -f raw -O raw 'nbd+unix:///?socket=$dir/q.sock' out.raw")
T_NBDP_Q=$(best_of "$NBD_RUNS" ":" \
  "qemu-img convert -n -f raw -O raw 'nbd+unix:///?socket=$dir/q.sock' out.raw")
RSS_NBD_Q=$(rss_mib "$(cat qnbd.pid)")
kill "$(cat qnbd.pid)"; rm -f qnbd.pid
# The ceiling for qemu-nbd: the same bytes served raw, no crypto at all.
qemu-nbd -r -f raw --socket="$dir/r.sock" --persistent --shared=4 --fork --pid-file="$dir/rnbd.pid" nvol.img
T_NBD_R=$(best_of "$NBD_RUNS" "rm -f out.raw" \
  "qemu-img convert -f raw -O raw 'nbd+unix:///?socket=$dir/r.sock' out.raw")
T_NBDP_R=$(best_of "$NBD_RUNS" ":" \
  "qemu-img convert -n -f raw -O raw 'nbd+unix:///?socket=$dir/r.sock' out.raw")
RSS_NBD_R=$(rss_mib "$(cat rnbd.pid)")
kill "$(cat rnbd.pid)"; rm -f rnbd.pid out.raw

mbs() { awk -v m="$MIB" -v t="$1" 'BEGIN { printf "%6.0f MiB/s", m / t }'; }
echo
printf '%-10s %14s %14s %12s %10s\n' export "write+fsync" "read (cold)" "4K rand IOPS" "peak RSS"
for n in sealvol qluks qraw; do
  w="W_$n"; r="R_$n"; i="IOPS_$n"; m="RSS_$n"
  label=$n; [ "$n" = qluks ] && label=qsd-luks; [ "$n" = qraw ] && label=qsd-raw
  printf '%-10s %14s %14s %12s %7s MiB\n' "$label" "$(mbs "${!w}")" "$(mbs "${!r}")" "${!i}" "${!m}"
done
printf '%-10s %14s %14s %12s %7s MiB   (into a new file; into a preallocated one: %s)\n' \
  "nbd-sv" "" "$(mbs "$T_NBD_SV")" "" "$RSS_NBD_SV" "$(mbs "$T_NBDP_SV")"
printf '%-10s %14s %14s %12s %7s MiB   (into a new file; into a preallocated one: %s)\n' \
  "qemu-nbd" "" "$(mbs "$T_NBD_Q")" "" "$RSS_NBD_Q" "$(mbs "$T_NBDP_Q")"
printf '%-10s %14s %14s %12s %7s MiB   (into a new file; into a preallocated one: %s)\n' \
  "nbd-raw" "" "$(mbs "$T_NBD_R")" "" "$RSS_NBD_R" "$(mbs "$T_NBDP_R")"
echo
echo "FUSE write: sealvol/qsd-luks $(ratio "$W_qluks" "$W_sealvol")x (target >= 3), sealvol/qsd-raw $(ratio "$W_qraw" "$W_sealvol")x (target >= 0.85)"
echo "FUSE read:  sealvol/qsd-luks $(ratio "$R_qluks" "$R_sealvol")x (target >= 3), sealvol/qsd-raw $(ratio "$R_qraw" "$R_sealvol")x (target >= 0.85)"
echo "4K random read IOPS: sealvol/qsd-luks $(ratio "$IOPS_sealvol" "$IOPS_qluks")x, sealvol/qsd-raw $(ratio "$IOPS_sealvol" "$IOPS_qraw")x"
echo "NBD qemu-img convert: sealvol/qemu-nbd $(ratio "$T_NBD_Q" "$T_NBD_SV")x into a new file, $(ratio "$T_NBDP_Q" "$T_NBDP_SV")x into a preallocated one (target >= 5)"
echo "NBD qemu-img convert: sealvol/qemu-nbd-raw (no crypto) $(ratio "$T_NBD_R" "$T_NBD_SV")x into a new file, $(ratio "$T_NBDP_R" "$T_NBDP_SV")x into a preallocated one"
echo "peak RSS: sealvol FUSE export ${RSS_sealvol} MiB, NBD ${RSS_NBD_SV} MiB (target <= 64)"
