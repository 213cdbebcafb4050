#!/usr/bin/env bash
# Single-thread MB/s of every sector cipher sealvol implements (encrypt and decrypt, 4096-byte
# sectors, 16 MiB buffer), with the RustCrypto AES rows that aws-lc is measured against.
# Usage: bench/ciphers.sh [FILTER]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BENCH_ROOT"
cargo run --release --locked -p sealvol-crypto --example cipher_bench -- "${1:-}"
