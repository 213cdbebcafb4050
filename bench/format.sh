#!/usr/bin/env bash
# Volume creation + key check with a 32-byte machine key:
#   sealvol format + sealvol test-key (machine-key profile: PBKDF2, 1000 iterations)
#   cryptsetup luksFormat (defaults: argon2id, benchmarked to 2 s) + open --test-passphrase
#   cryptsetup luksFormat --pbkdf pbkdf2 --pbkdf-force-iterations 1000 + open --test-passphrase
# Targets: >= 100x faster than cryptsetup defaults, >= 2x faster at equal KDF cost.
# Uses hyperfine when installed, else a bash timing loop (mean of RUNS).
# Usage: bench/format.sh      Env: RUNS=10 BENCH_DIR=...
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need cryptsetup cryptsetup-bin
build_sealvol
RUNS="${RUNS:-10}"
dir="$(scratch_dir 256)"
trap 'rm -rf "$dir"' EXIT
cd "$dir"
echo "scratch: $dir, sealvol volumes have a 16 MiB data area, cryptsetup's 16 MiB header + 16 MiB"
(umask 077 && head -c 32 /dev/urandom > key)
export SEALVOL

SV='"$SEALVOL" format --key-file key --size 16M sv.img >/dev/null && "$SEALVOL" test-key --key-file key sv.img'
CS_DEF='truncate -s 32M cs.img && cryptsetup luksFormat --batch-mode --type luks2 cs.img key && cryptsetup open --test-passphrase --key-file key cs.img'
CS_PB='truncate -s 32M cs.img && cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 cs.img key && cryptsetup open --test-passphrase --key-file key cs.img'
CLEAN='rm -f sv.img cs.img'

if command -v hyperfine >/dev/null 2>&1; then
  hyperfine --style basic --warmup 1 --runs "$RUNS" --prepare "$CLEAN" \
    --export-json times.json \
    -n "sealvol format + test-key" "$SV" \
    -n "cryptsetup defaults (argon2id)" "$CS_DEF" \
    -n "cryptsetup pbkdf2 1000" "$CS_PB"
  means=$(grep -o '"mean": [0-9.e-]*' times.json | awk '{print $2}')
  t_sv=$(echo "$means" | sed -n 1p)
  t_def=$(echo "$means" | sed -n 2p)
  t_pb=$(echo "$means" | sed -n 3p)
else
  mean_of() { # n cmd
    local n="$1" cmd="$2" total=0 t0 t1 i
    for ((i = 0; i < n; i++)); do
      eval "$CLEAN"
      t0=$(now_ns); eval "$cmd" >/dev/null; t1=$(now_ns)
      total=$((total + t1 - t0))
    done
    awk -v ns="$total" -v n="$n" 'BEGIN { printf "%.4f\n", ns / n / 1e9 }'
  }
  t_sv=$(mean_of "$RUNS" "$SV")
  t_def=$(mean_of "$RUNS" "$CS_DEF")
  t_pb=$(mean_of "$RUNS" "$CS_PB")
fi
echo
printf '%-40s %10.4f s\n' "sealvol format + test-key" "$t_sv"
printf '%-40s %10.4f s\n' "cryptsetup defaults + test-passphrase" "$t_def"
printf '%-40s %10.4f s\n' "cryptsetup pbkdf2-1000 + test-passphrase" "$t_pb"
echo "ratio vs cryptsetup defaults: $(ratio "$t_def" "$t_sv")x  (target >= 100x)"
echo "ratio vs cryptsetup at equal KDF cost: $(ratio "$t_pb" "$t_sv")x  (target >= 2x)"
