#!/usr/bin/env bash
# A short fuzz run of every target in fuzz/ (`cargo fuzz list`: luks2_header, luks2_metadata,
# luks1_header, verity_superblock, cipher_spec, nbd_client, overlay_metadata, daemon_api,
# daemon_plugin): installs cargo-fuzz if missing, seeds the corpora (LUKS headers from
# cryptsetup, NBD sessions, daemon requests), builds all targets once, and fuzzes each for
# FUZZ_SECONDS (default 10: nine targets in a minute and a half of CI). Works on a stable
# toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only sanitizer flags.
# Usage: fuzz/smoke.sh [TARGET...]      Env: FUZZ_SECONDS=10
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"; fi
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi
"$here/seed.sh"
seconds="${FUZZ_SECONDS:-10}"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
echo "==> cargo fuzz build (${targets[*]})"
cargo fuzz build
for t in "${targets[@]}"; do
  mkdir -p "$here/corpus/$t"
  echo "==> cargo fuzz run $t for ${seconds}s"
  # max_len covers a LUKS2 header with 32 KiB metadata, both copies.
  extra=()
  # nbd_client runs the server's threads: a thread's own bookkeeping is freed a moment after
  # its join, which LeakSanitizer's per-input check reports as a leak now and then. Memory
  # growth is still caught by libFuzzer's RSS limit.
  [ "$t" = nbd_client ] && extra=(-detect_leaks=0)
  set +e
  cargo fuzz run "$t" "$here/corpus/$t" -- \
    -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 "${extra[@]}" 2>&1 \
    | grep -E '^(#[0-9]+\s+DONE|Done|stat::|INFO: Seed|==[0-9]+==|SUMMARY|thread|panicked|Test unit|artifact_prefix|Error|error)'
  status=${PIPESTATUS[0]}
  set -e
  # grep above only hides libFuzzer's per-input chatter; the fuzzer's own status decides.
  [ "$status" -eq 0 ] || { echo "fuzz target $t failed (status $status): see fuzz/artifacts/$t/" >&2; exit 1; }
done
