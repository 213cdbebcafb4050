#!/usr/bin/env bash
# dm-verity hash trees of a 1 GiB image of random data:
#   sealvol verity format vs veritysetup format   (same salt and UUID: identical hash files)
#   sealvol verity verify vs veritysetup verify
# Files live in /dev/shm when it has room (else /tmp; BENCH_DIR overrides), the page cache is
# warm, each figure is the best of RUNS. sealvol hashes on every core; veritysetup on one.
# Target: sealvol >= 2.5x veritysetup on a 2-core machine (SHA-256 with SHA-NI tops out near
# 1.75 GB/s per core).
# Usage: bench/verity.sh      Env: BENCH_MIB=1024 RUNS=3 BENCH_DIR=...
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need veritysetup cryptsetup-bin
build_sealvol
MIB="${BENCH_MIB:-1024}"
RUNS="${RUNS:-3}"
dir="$(scratch_dir $((MIB * 2 + 256)))"
trap 'rm -rf "$dir"' EXIT
cd "$dir"
echo "scratch: $dir ($(df -P . | awk 'NR==2 {print $1}')), ${MIB} MiB, best of $RUNS, $(nproc) cores"

SALT=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
UUID=3f2a9c4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b
head -c "$((MIB << 20))" /dev/urandom > img
cat img > /dev/null
export SEALVOL SALT UUID

t_sv_format=$(best_of "$RUNS" 'rm -f sv.hash' \
  '"$SEALVOL" verity format --salt "$SALT" --uuid "$UUID" img sv.hash > sv.out')
t_vs_format=$(best_of "$RUNS" 'rm -f vs.hash' \
  'veritysetup format --salt "$SALT" --uuid "$UUID" img vs.hash > vs.out')
root=$(awk '/^Root hash:/ {print $3}' sv.out)
[ "$root" = "$(awk '/^Root hash:/ {print $3}' vs.out)" ] || { echo "bench: root hashes differ" >&2; exit 1; }
cmp sv.hash vs.hash || { echo "bench: hash files differ" >&2; exit 1; }
export root
t_sv_verify=$(best_of "$RUNS" ':' '"$SEALVOL" verity verify img sv.hash "$root" > /dev/null')
t_vs_verify=$(best_of "$RUNS" ':' 'veritysetup verify img sv.hash "$root"')

gbs() { awk -v m="$MIB" -v t="$1" 'BEGIN { printf "%6.2f GB/s", m * 1048576 / t / 1e9 }'; }
printf '\n%-34s %9s  %s\n' "operation (${MIB} MiB)" seconds throughput
printf '%-34s %9s  %s\n' "sealvol verity format" "$t_sv_format" "$(gbs "$t_sv_format")"
printf '%-34s %9s  %s\n' "veritysetup format" "$t_vs_format" "$(gbs "$t_vs_format")"
printf '%-34s %9s  %s\n' "sealvol verity verify" "$t_sv_verify" "$(gbs "$t_sv_verify")"
printf '%-34s %9s  %s\n' "veritysetup verify" "$t_vs_verify" "$(gbs "$t_vs_verify")"
echo
echo "ratio sealvol/veritysetup, format: $(ratio "$t_vs_format" "$t_sv_format")x  (target >= 2.5x)"
echo "ratio sealvol/veritysetup, verify: $(ratio "$t_vs_verify" "$t_sv_verify")x  (target >= 2.5x)"
