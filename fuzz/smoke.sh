#!/usr/bin/env bash
# A short fuzz run of the LUKS2 header parser: installs cargo-fuzz if missing, seeds the corpus
# from cryptsetup, and fuzzes for FUZZ_SECONDS (default 30). Works on a stable toolchain
# (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only sanitizer flags).
# Usage: fuzz/smoke.sh            Env: FUZZ_SECONDS=30
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
[ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ] && PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi
"$here/seed.sh"
seconds="${FUZZ_SECONDS:-30}"
echo "==> cargo fuzz run luks2_header for ${seconds}s"
# max_len covers a 32 KiB-metadata header with both copies.
cargo fuzz run luks2_header "$here/corpus/luks2_header" -- \
  -max_total_time="$seconds" -max_len=65536 -print_final_stats=1
