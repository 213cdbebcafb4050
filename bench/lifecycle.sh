#!/usr/bin/env bash
# Workload volume lifecycle: `sealvol volume create --mount` of a 10 GiB sparse volume with a
# 32-byte machine key (LUKS2 format + FUSE/loop export + mkfs.ext4 + mount) and
# `sealvol volume destroy` (unmount, stop, crypto-erase, delete), against the seed's
# sequence with cryptsetup on a file: truncate + `cryptsetup luksFormat` (defaults: argon2id,
# benchmarked; and `--pbkdf pbkdf2 --pbkdf-force-iterations 1000`) + mkfs.ext4 on the file
# (the mapping step needs device-mapper, which these hosts lack: mkfs runs on a plain file
# of the same size), and its destroy
# (`cryptsetup luksErase` + rm). Times are wall clock; peak RSS from /usr/bin/time -v.
# Usage (root): bench/lifecycle.sh      Env: BENCH_DIR=... SIZE=10G
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need cryptsetup cryptsetup-bin
need mkfs.ext4 e2fsprogs
need losetup mount
need /usr/bin/time time
build_sealvol
SIZE="${SIZE:-10G}"
dir="$(scratch_dir 1024)/lifecycle.$$"
mkdir -p "$dir"
cleanup() {
  set +e
  "$SEALVOL" volume --state-dir "$dir/state" destroy bench >/dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT
head -c 32 /dev/urandom > "$dir/key"

# measure NAME CMD...: prints "NAME <seconds> <peak RSS KiB>"
measure() {
  local name="$1"; shift
  local t0 t1
  t0=$(now_ns)
  /usr/bin/time -v -o "$dir/time.txt" "$@" >/dev/null 2>"$dir/err.txt" || { cat "$dir/err.txt"; echo "bench: $name failed" >&2; exit 1; }
  t1=$(now_ns)
  local rss
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$dir/time.txt")
  printf '%-44s %8.3f s %8s KiB\n' "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1e9}')" "$rss"
}

echo "sizes: $SIZE sparse; files in $dir"
measure "sealvol volume create --mount" "$SEALVOL" volume --state-dir "$dir/state" create \
  --key-file "$dir/key" --size "$SIZE" --sparse-ok --mount bench
measure "sealvol volume destroy" "$SEALVOL" volume --state-dir "$dir/state" destroy bench

seed() {
  local name="$1"; shift
  rm -f "$dir/seed.img" "$dir/seed.fs"
  measure "$name: truncate" truncate -s "$SIZE" "$dir/seed.img"
  measure "$name: cryptsetup luksFormat" cryptsetup luksFormat -q --type luks2 \
    --key-file "$dir/key" "$@" "$dir/seed.img"
  # Stand-in for mkfs on the mapped device (no device-mapper here): a file of the same size.
  truncate -s "$SIZE" "$dir/seed.fs"
  measure "$name: mkfs.ext4 on a file" mkfs.ext4 -q -F -E nodiscard "$dir/seed.fs"
  measure "$name: cryptsetup luksErase" cryptsetup luksErase -q "$dir/seed.img"
  measure "$name: rm" rm -f "$dir/seed.img" "$dir/seed.fs"
}
seed "seed (argon2id defaults)"
seed "seed (pbkdf2-1000)" --pbkdf pbkdf2 --pbkdf-force-iterations 1000
