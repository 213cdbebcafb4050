#!/usr/bin/env bash
# Encrypted copy-on-write overlays: sealvol's overlay vs qemu's encrypted qcow2, over the
# same shared backing file, through a FUSE mount and through NBD.
#
# The base: a BASE_MIB (3 x MIB) raw ext4 image (4 KiB blocks) holding `data`, MIB (1024) of
# random bytes. Both overlays stand on it, read-only:
#   sealvol  `sealvol overlay create --base base.img` (AES-256-GCM-SIV per 4 KiB cluster,
#            authenticated map), served by `sealvol open` (FUSE -> loop -> ext4) and by
#            `sealvol serve nbd`
#   qemu     a qcow2 with encrypt.format=luks (AES-XTS, 64 KiB clusters) whose backing file is
#            base.img (raw), served by `qemu-storage-daemon` (--export type=fuse -> loop ->
#            ext4, and --export type=nbd). Its best configuration here: the files on tmpfs
#            (no O_DIRECT there: cache.direct=off), a 32 MiB qcow2 cache (every L2 table of
#            the image); each of two qcow2s, qemu's defaults ("plain") and one tuned for
#            writes over a backing file ("tuned": extended_l2=on, 2 KiB subclusters, so a
#            4 KiB write copies nothing up; lazy_refcounts=on), and for FUSE the loop device
#            over its FUSE file with and without direct I/O: every row is printed, and the
#            ratios take qemu's best per measure.
# Workload (FIO_SECONDS=10 for the random ones; the sequential ones best of RUNS=3 rounds:
# a single first write after mkfs swung 4x from run to run on this VM, for every export
# alike, sealvol's LUKS2 included):
#   FUSE: sequential write of MIB into a new file (dd from a random file in memory,
#         conv=fsync), drop_caches, sequential read of it; random 4 KiB writes into `data`
#         (from the base: every first write copies up) then random 4 KiB reads of it (fio,
#         libaio, O_DIRECT, iodepth 16).
#   NBD:  fio's nbd engine: sequential 1 MiB writes of MIB, then reads of them; random 4 KiB
#         writes then reads over the whole device (iodepth 16).
#   sealvol's own plain LUKS2 export (`sealvol format` + `open` / `serve nbd`) on the same
#   sequential write + read (and over NBD the random ones, the ceiling of that path): the
#   overlay's sequential reads should be within 20% of it.
#   Space: a new overlay and a new qcow2 (qemu's defaults) get RAND_MIB (256) of random 4 KiB
#   writes and MIB of sequential writes over NBD; their files' allocated bytes beyond what
#   was written, per GiB written.
# Targets (issue 12): >= 3x qemu on throughput, >= 2x on IOPS, sequential reads within 20%
# of sealvol's LUKS2 export.
# Files live in /dev/shm when it has room (BENCH_DIR overrides).
# Usage (root): bench/overlay.sh   Env: BENCH_MIB=1024 BASE_MIB=3072 RAND_MIB=256 FIO_SECONDS=10 RUNS=3 BENCH_DIR=...
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need qemu-img qemu-utils
need qemu-storage-daemon qemu-system-common
need fio fio
need mkfs.ext4 e2fsprogs
need losetup mount
build_sealvol
MIB="${BENCH_MIB:-1024}"
BASE_MIB="${BASE_MIB:-$((MIB * 3))}"
RAND_MIB="${RAND_MIB:-256}"
FIO_SECONDS="${FIO_SECONDS:-10}"
RUNS="${RUNS:-3}"
dir="$(scratch_dir $((BASE_MIB * 2 + MIB * 6)))"
export SEALVOL_RUN_DIR="$dir/run"
cleanup() {
  set +e
  for m in "$dir"/mnt-*; do
    "$SEALVOL" close "$m" >/dev/null 2>&1
    mountpoint -q "$m" 2>/dev/null && umount "$m"
  done
  for f in "$dir"/*.fuse; do
    for l in $(losetup -j "$f" -O NAME -n 2>/dev/null); do losetup -d "$l"; done
  done
  for p in "$dir"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  [ -n "${SV_NBD:-}" ] && kill "$SV_NBD" 2>/dev/null
  sleep 1
  for m in "$dir"/*.fuse; do mountpoint -q "$m" 2>/dev/null && umount -l "$m"; done
  rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"
echo "scratch: $dir ($(df -P . | awk 'NR==2 {print $1}')), base ${BASE_MIB} MiB, ${MIB} MiB sequential"
(umask 077 && head -c 32 /dev/urandom > key && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > qkey)
QSECRET=(--object "secret,id=sec0,file=$dir/qkey")

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
mbs_of() { awk -v m="$MIB" -v t="$1" 'BEGIN { printf "%.0f", m / t }'; }
# fio_terse ARGS...: fio in terse (v3) output: prints "READ_IOPS WRITE_IOPS READ_KIBS WRITE_KIBS"
fio_terse() {
  fio --output-format=terse --terse-version=3 "$@" 2>/dev/null |
    awk -F';' '$1 == 3 { printf "%d %d %d %d\n", $8, $49, $7, $48 }'
}

# The shared base: ext4 with `data` (random), built through a loop mount.
head -c "$((MIB << 20))" /dev/urandom > src
truncate -s "${BASE_MIB}M" base.img
mkfs.ext4 -q -F -b 4096 -E nodiscard base.img
mkdir -p mnt-base
mount -o loop base.img mnt-base
cp src mnt-base/data
umount mnt-base
rmdir mnt-base
BASE_SHA=$(sha256sum base.img | cut -c1-64)

best() { # best A B: the larger
  awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'
}
# fs_measure NAME MNT: fills W_name R_name (MiB/s, the best of RUNS rounds of a write of a
# new file and a cold read of it) RW_name RR_name (IOPS)
fs_measure() {
  local name="$1" mnt="$2" t0 t1 t2 t3 out w=0 r=0 i
  for ((i = 0; i < RUNS; i++)); do
    rm -f "$mnt/big"
    drop_caches
    t0=$(now_ns)
    dd if=src of="$mnt/big" bs=1M count="$MIB" conv=fsync status=none
    t1=$(now_ns)
    drop_caches
    t2=$(now_ns)
    dd if="$mnt/big" of=/dev/null bs=1M status=none
    t3=$(now_ns)
    w=$(best "$w" "$(mbs_of "$(secs "$t0" "$t1")")")
    r=$(best "$r" "$(mbs_of "$(secs "$t2" "$t3")")")
  done
  printf -v "W_$name" '%s' "$w"
  printf -v "R_$name" '%s' "$r"
  [ "${3:-}" = seq-only ] && return 0
  drop_caches
  out=$(fio_terse --name=rw --filename="$mnt/data" --rw=randwrite --bs=4k --direct=1 \
    --ioengine=libaio --iodepth=16 --runtime="$FIO_SECONDS" --time_based)
  printf -v "RW_$name" '%s' "$(echo "$out" | cut -d' ' -f2)"
  drop_caches
  out=$(fio_terse --name=rr --filename="$mnt/data" --rw=randread --bs=4k --direct=1 \
    --ioengine=libaio --iodepth=16 --runtime="$FIO_SECONDS" --time_based)
  printf -v "RR_$name" '%s' "$(echo "$out" | cut -d' ' -f1)"
}

# nbd_measure NAME URI: fills NW_name NR_name (MiB/s, best of RUNS rounds) NRW_name NRR_name (IOPS)
nbd_measure() {
  local name="$1" uri="$2" out w=0 r=0 i
  for ((i = 0; i < RUNS; i++)); do
    out=$(fio_terse --name=sw --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=4 --size="${MIB}M")
    w=$(best "$w" "$(echo "$out" | awk '{ printf "%.0f", $4 / 1024 }')")
    out=$(fio_terse --name=sr --ioengine=nbd --uri="$uri" --rw=read --bs=1M --iodepth=4 --size="${MIB}M")
    r=$(best "$r" "$(echo "$out" | awk '{ printf "%.0f", $3 / 1024 }')")
  done
  printf -v "NW_$name" '%s' "$w"
  printf -v "NR_$name" '%s' "$r"
  [ "${3:-}" = seq-only ] && return 0
  out=$(fio_terse --name=rw --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=16 \
    --size="${BASE_MIB}M" --runtime="$FIO_SECONDS" --time_based)
  printf -v "NRW_$name" '%s' "$(echo "$out" | cut -d' ' -f2)"
  out=$(fio_terse --name=rr --ioengine=nbd --uri="$uri" --rw=randread --bs=4k --iodepth=16 \
    --size="${BASE_MIB}M" --runtime="$FIO_SECONDS" --time_based)
  printf -v "NRR_$name" '%s' "$(echo "$out" | cut -d' ' -f1)"
}

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "bench: no socket $1" >&2; exit 2; }

# qemu's qcow2 configurations: its defaults, and tuned for random writes into a backing
# file (2 KiB subclusters: a 4 KiB write is not a 64 KiB copy-up; lazy refcounts).
QCONF_plain=""
QCONF_tuned=",extended_l2=on,lazy_refcounts=on"
qcow() { # qcow NAME CONF: a new encrypted qcow2 over base.img
  local conf="QCONF_$2"
  retry 5 qemu-img create -q -f qcow2 "${QSECRET[@]}" \
    -o "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,backing_file=$dir/base.img,backing_fmt=raw${!conf}" \
    "$1" "${BASE_MIB}M"
}
QBLOCK() { # QBLOCK FILE: qemu-storage-daemon's node "top" over it and base.img
  echo --blockdev "driver=file,node-name=b0,filename=$dir/base.img,read-only=on,cache.direct=off"
  echo --blockdev "driver=raw,node-name=base,file=b0,read-only=on"
  echo --blockdev "driver=file,node-name=f1,filename=$dir/$1,cache.direct=off"
  echo --blockdev "driver=qcow2,node-name=top,file=f1,backing=base,encrypt.format=luks,encrypt.key-secret=sec0,cache-size=33554432"
}

echo "== FUSE -> loop -> ext4"
"$SEALVOL" overlay create --key-file key --base base.img ov.img >/dev/null
mkdir -p mnt-sv
"$SEALVOL" --json open --key-file key --base base.img --mount mnt-sv ov.img > open.json
fs_measure sv mnt-sv
"$SEALVOL" close mnt-sv >/dev/null
rm -f ov.img # tmpfs: every file finished with is removed, or the rounds fill memory
echo "sealvol overlay done"

QFUSE=""
for conf in plain tuned; do
  for dio in off on; do
    rm -f q.qcow2
    qcow q.qcow2 "$conf"
    touch q.fuse
    # shellcheck disable=SC2046
    qemu-storage-daemon "${QSECRET[@]}" $(QBLOCK q.qcow2) \
      --export "type=fuse,id=e0,node-name=top,mountpoint=$dir/q.fuse,writable=on" \
      --pidfile "$dir/q.pid" --daemonize
    L=$(losetup --find --show --sector-size 4096 --direct-io="$dio" q.fuse)
    mkdir -p mnt-q
    mount "$L" mnt-q
    fs_measure "q_${conf}_$dio" mnt-q
    umount mnt-q
    losetup -d "$L"
    kill "$(cat q.pid)"; rm -f q.pid
    rm -f q.qcow2
    sleep 1
    QFUSE="$QFUSE q_${conf}_$dio"
    echo "qemu qcow2+luks ($conf, loop direct I/O $dio) done"
  done
done
# qemu's best configuration, per measure.
for m in W R RW RR; do
  v=0
  for c in $QFUSE; do x="${m}_$c"; v=$(best "$v" "${!x}"); done
  printf -v "${m}_q" '%s' "$v"
done

# sealvol's own LUKS2 export, the same sequential workload.
"$SEALVOL" format --key-file key --size "${BASE_MIB}M" luks.img >/dev/null
mkdir -p mnt-luks
"$SEALVOL" open --key-file key --mkfs ext4 --mount mnt-luks luks.img >/dev/null
fs_measure luks mnt-luks seq-only
"$SEALVOL" close mnt-luks >/dev/null
rm -f src
echo "sealvol LUKS2 done"

echo "== NBD (fio's nbd engine)"
"$SEALVOL" overlay create --key-file key --base base.img nov.img >/dev/null
"$SEALVOL" serve nbd --key-file key --base base.img --socket "$dir/sv.sock" nov.img > nbd-sv.out &
SV_NBD=$!
wait_sock sv.sock
nbd_measure sv "nbd+unix:///?socket=$dir/sv.sock"
kill "$SV_NBD"; wait "$SV_NBD" || true; SV_NBD=
rm -f nov.img
echo "sealvol overlay done"

for conf in plain tuned; do
  rm -f nq.qcow2
  qcow nq.qcow2 "$conf"
  # shellcheck disable=SC2046
  qemu-storage-daemon "${QSECRET[@]}" $(QBLOCK nq.qcow2) \
    --nbd-server "addr.type=unix,addr.path=$dir/q.sock" \
    --export "type=nbd,id=e0,node-name=top,writable=on" \
    --pidfile "$dir/qn.pid" --daemonize
  wait_sock q.sock
  nbd_measure "q_$conf" "nbd+unix:///top?socket=$dir/q.sock"
  kill "$(cat qn.pid)"; rm -f qn.pid
  rm -f nq.qcow2
  sleep 1
  echo "qemu qcow2+luks ($conf) done"
done
for m in NW NR NRW NRR; do
  a="${m}_q_plain"; b="${m}_q_tuned"
  printf -v "${m}_q" '%s' "$(best "${!a}" "${!b}")"
done

"$SEALVOL" serve nbd --key-file key --socket "$dir/lv.sock" luks.img > /dev/null &
SV_NBD=$!
wait_sock lv.sock
nbd_measure luks "nbd+unix:///?socket=$dir/lv.sock"
kill "$SV_NBD"; wait "$SV_NBD" || true; SV_NBD=
rm -f luks.img
echo "sealvol LUKS2 done"
[ "$(sha256sum base.img | cut -c1-64)" = "$BASE_SHA" ] || { echo "bench: the base was written" >&2; exit 1; }

echo "== metadata: ${RAND_MIB} MiB of random 4 KiB writes, then ${MIB} MiB sequential"
alloc() { stat -c '%b %B' "$1" | awk '{ printf "%d\n", $1 * $2 }'; }
meta_load() { # meta_load URI
  fio_terse --name=mr --ioengine=nbd --uri="$1" --rw=randwrite --bs=4k --iodepth=16 \
    --size="$((BASE_MIB - MIB))M" --io_size="${RAND_MIB}M" > /dev/null
  fio_terse --name=ms --ioengine=nbd --uri="$1" --rw=write --bs=1M --iodepth=4 \
    --offset="$((BASE_MIB - MIB))M" --size="${MIB}M" > /dev/null
}
"$SEALVOL" overlay create --key-file key --base base.img mov.img >/dev/null
"$SEALVOL" serve nbd --key-file key --base base.img --socket "$dir/mv.sock" mov.img > /dev/null &
SV_NBD=$!
wait_sock mv.sock
meta_load "nbd+unix:///?socket=$dir/mv.sock"
kill "$SV_NBD"; wait "$SV_NBD" || true; SV_NBD=
"$SEALVOL" --json overlay status --key-file key mov.img > mstatus.json
SV_DATA=$(awk -F: '/"data_bytes"/ { gsub(/[ ,]/, "", $2); print $2 }' mstatus.json)
SV_MAP=$(awk -F: '/"metadata_bytes"/ { gsub(/[ ,]/, "", $2); print $2 }' mstatus.json)
SV_ALLOC=$(alloc mov.img)
rm -f mq.qcow2
qcow mq.qcow2 plain
# shellcheck disable=SC2046
qemu-storage-daemon "${QSECRET[@]}" $(QBLOCK mq.qcow2) \
  --nbd-server "addr.type=unix,addr.path=$dir/mq.sock" \
  --export "type=nbd,id=e0,node-name=top,writable=on" \
  --pidfile "$dir/mq.pid" --daemonize
wait_sock mq.sock
meta_load "nbd+unix:///top?socket=$dir/mq.sock"
kill "$(cat mq.pid)"; rm -f mq.pid
sleep 1
Q_ALLOC=$(alloc mq.qcow2)

# What the workload wrote (fio's random map: no 4 KiB block twice; the sequential MiB in
# the last part of the device, which the random writes do not reach).
WRITTEN=$(((RAND_MIB + MIB) << 20))
per_gib() { awk -v x="$1" -v d="$WRITTEN" 'BEGIN { printf "%.1f", x / (d / 1073741824) / 1048576 }'; }
echo
printf '%-22s %12s %12s %14s %14s\n' "FUSE -> loop -> ext4" "seq write" "seq read" "4K rand write" "4K rand read"
printf '%-22s %8s MiB/s %8s MiB/s %9s IOPS %9s IOPS\n' "sealvol overlay" "$W_sv" "$R_sv" "$RW_sv" "$RR_sv"
for c in $QFUSE; do
  w="W_$c"; r="R_$c"; rw="RW_$c"; rr="RR_$c"
  printf '%-22s %8s MiB/s %8s MiB/s %9s IOPS %9s IOPS\n' "qemu ${c#q_}" "${!w}" "${!r}" "${!rw}" "${!rr}"
done
printf '%-22s %8s MiB/s %8s MiB/s\n' "sealvol LUKS2" "$W_luks" "$R_luks"
printf '%-22s %12s %12s %14s %14s\n' "NBD (fio)" "seq write" "seq read" "4K rand write" "4K rand read"
printf '%-22s %8s MiB/s %8s MiB/s %9s IOPS %9s IOPS\n' "sealvol overlay" "$NW_sv" "$NR_sv" "$NRW_sv" "$NRR_sv"
for c in plain tuned; do
  w="NW_q_$c"; r="NR_q_$c"; rw="NRW_q_$c"; rr="NRR_q_$c"
  printf '%-22s %8s MiB/s %8s MiB/s %9s IOPS %9s IOPS\n' "qemu $c" "${!w}" "${!r}" "${!rw}" "${!rr}"
done
printf '%-22s %8s MiB/s %8s MiB/s %9s IOPS %9s IOPS\n' "sealvol LUKS2" "$NW_luks" "$NR_luks" "$NRW_luks" "$NRR_luks"
echo
echo "(qemu: its best configuration per measure)"
echo "FUSE seq write:   sealvol/qemu $(ratio "$W_sv" "$W_q")x (target >= 3)"
echo "FUSE seq read:    sealvol/qemu $(ratio "$R_sv" "$R_q")x (target >= 3); overlay/LUKS2 $(ratio "$R_sv" "$R_luks") (target >= 0.8)"
echo "FUSE rand write:  sealvol/qemu $(ratio "$RW_sv" "$RW_q")x (target >= 2)"
echo "FUSE rand read:   sealvol/qemu $(ratio "$RR_sv" "$RR_q")x (target >= 2)"
echo "NBD seq write:    sealvol/qemu $(ratio "$NW_sv" "$NW_q")x (target >= 3)"
echo "NBD seq read:     sealvol/qemu $(ratio "$NR_sv" "$NR_q")x (target >= 3); overlay/LUKS2 $(ratio "$NR_sv" "$NR_luks") (target >= 0.8)"
echo "NBD rand write:   sealvol/qemu $(ratio "$NRW_sv" "$NRW_q")x (target >= 2)"
echo "NBD rand read:    sealvol/qemu $(ratio "$NRR_sv" "$NRR_q")x (target >= 2)"
echo "NBD random IOPS of sealvol's LUKS2 export (no map, no copy-up: what this NBD path allows): write $NRW_luks, read $NRR_luks"
echo "space beyond the data, per GiB written ($((WRITTEN >> 20)) MiB: ${RAND_MIB} MiB random 4 KiB, ${MIB} MiB sequential):"
echo "  sealvol overlay: $(per_gib "$((SV_ALLOC - WRITTEN))") MiB (file $((SV_ALLOC >> 20)) MiB allocated; map $(per_gib "$SV_MAP") MiB, data $((SV_DATA >> 20)) MiB)"
echo "  qemu qcow2+luks: $(per_gib "$((Q_ALLOC - WRITTEN))") MiB (file $((Q_ALLOC >> 20)) MiB allocated; 64 KiB clusters: a 4 KiB write allocates and copies up 64 KiB)"
