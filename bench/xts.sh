#!/usr/bin/env bash
# sealvol's in-memory AES-256-XTS (XtsCipher) vs the raw aws-lc EVP primitive, one core.
# Target: ratio >= 0.8.
# Usage: bench/xts.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BENCH_ROOT"
cargo run --release --locked -p sealvol-crypto --example xts_bench | tee /dev/stderr \
  | grep -i '^ratio' | sed 's/$/  (target >= 0.8)/'
