#!/usr/bin/env bash
# sealvol import/export vs qemu-img convert raw<->luks, 1 GiB of random plaintext.
# Files live in /dev/shm when it has room (else /tmp; BENCH_DIR overrides), the page cache is
# warm, each figure is the best of 3. qemu-img writes LUKS1 (aes-256-xts-plain64, 512-byte
# sectors); sealvol writes LUKS2 with its defaults (4096-byte sectors).
# Target: sealvol >= 10x qemu-img throughput.
# Usage: bench/import_export.sh      Env: BENCH_MIB=1024 RUNS=3 BENCH_DIR=...
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need qemu-img qemu-utils
build_sealvol
MIB="${BENCH_MIB:-1024}"
RUNS="${RUNS:-3}"
dir="$(scratch_dir $((MIB * 5 + 256)))"
trap 'rm -rf "$dir"' EXIT
cd "$dir"
echo "scratch: $dir ($(df -P . | awk 'NR==2 {print $1}')), ${MIB} MiB, best of $RUNS"

(umask 077 && head -c 32 /dev/urandom > key && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > qkey)
head -c "$((MIB << 20))" /dev/urandom > src
cat src > /dev/null
QSECRET=(--object "secret,id=sec0,file=$dir/qkey")

t_sv_import=$(best_of "$RUNS" 'rm -f vol.img' \
  '"$SEALVOL" format --key-file key --size "${MIB}M" vol.img >/dev/null && "$SEALVOL" import --key-file key src vol.img >/dev/null')
t_qemu_import=$(best_of "$RUNS" 'rm -f q.luks' \
  'retry 5 qemu-img convert -f raw -O luks "${QSECRET[@]}" -o key-secret=sec0,iter-time=10 src q.luks >/dev/null')
t_sv_export=$(best_of "$RUNS" 'rm -f out.raw' \
  '"$SEALVOL" export --key-file key vol.img out.raw >/dev/null')
cmp src out.raw
t_qemu_export=$(best_of "$RUNS" 'rm -f qout.raw' \
  'qemu-img convert "${QSECRET[@]}" --image-opts driver=luks,file.filename=q.luks,key-secret=sec0 -O raw qout.raw >/dev/null')
cmp src qout.raw

# The I/O ceiling on this filesystem: a plain copy, no crypto.
t_cp=$(best_of "$RUNS" 'rm -f cp.raw' 'cp src cp.raw')
rm -f cp.raw

mbs() { awk -v m="$MIB" -v t="$1" 'BEGIN { printf "%8.0f MiB/s", m / t }'; }
printf '\n%-40s %9s  %s\n' "operation (${MIB} MiB)" seconds throughput
printf '%-40s %9s  %s\n' "sealvol format + import" "$t_sv_import" "$(mbs "$t_sv_import")"
printf '%-40s %9s  %s\n' "qemu-img convert raw -> luks" "$t_qemu_import" "$(mbs "$t_qemu_import")"
printf '%-40s %9s  %s\n' "sealvol export" "$t_sv_export" "$(mbs "$t_sv_export")"
printf '%-40s %9s  %s\n' "qemu-img convert luks -> raw" "$t_qemu_export" "$(mbs "$t_qemu_export")"
printf '%-40s %9s  %s\n' "cp (no crypto: the I/O ceiling)" "$t_cp" "$(mbs "$t_cp")"
echo
echo "ratio sealvol/qemu-img, import: $(ratio "$t_qemu_import" "$t_sv_import")x  (target >= 10x)"
echo "ratio sealvol/qemu-img, export: $(ratio "$t_qemu_export" "$t_sv_export")x  (target >= 10x)"
echo "ratio sealvol/cp (share of the I/O ceiling): import $(ratio "$t_cp" "$t_sv_import"), export $(ratio "$t_cp" "$t_sv_export")"
