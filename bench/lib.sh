# Shared helpers for the bench scripts. Sourced, not run.
# shellcheck shell=bash
BENCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ] && PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
PATH="$PATH:/usr/sbin:/sbin"
export PATH

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "bench: '$1' missing: apt-get install -y $2" >&2; exit 2; }
}

# Builds the release binary once and sets SEALVOL.
build_sealvol() {
  (cd "$BENCH_ROOT" && cargo build --release --locked -p sealvol >&2)
  SEALVOL="${CARGO_TARGET_DIR:-$BENCH_ROOT/target}/release/sealvol"
  [ -x "$SEALVOL" ] || { echo "bench: no $SEALVOL" >&2; exit 2; }
}

# A scratch directory: $BENCH_DIR if set, else /dev/shm when it has room (MiB in $1), else /tmp.
scratch_dir() {
  local want_mib="$1" base
  if [ -n "${BENCH_DIR:-}" ]; then
    base="$BENCH_DIR"
  elif [ -d /dev/shm ] && [ "$(df -Pm /dev/shm | awk 'NR==2 {print $4}')" -gt "$want_mib" ]; then
    base=/dev/shm
  else
    base="${TMPDIR:-/tmp}"
  fi
  mktemp -d "$base/sealvol-bench.XXXXXX"
}

now_ns() { date +%s%N; }

# best_of N SETUP CMD: runs SETUP (untimed) then CMD (timed), N times; prints the best time
# in seconds. SETUP and CMD are shell strings.
best_of() {
  local n="$1" setup="$2" cmd="$3" best="" t0 t1 dt i
  for ((i = 0; i < n; i++)); do
    eval "$setup" || return 1
    t0=$(now_ns)
    eval "$cmd" || { echo "bench: failed: $cmd" >&2; return 1; }
    t1=$(now_ns)
    dt=$((t1 - t0))
    if [ -z "$best" ] || [ "$dt" -lt "$best" ]; then best=$dt; fi
  done
  awk -v ns="$best" 'BEGIN { printf "%.4f\n", ns / 1e9 }'
}

# ratio A B -> A/B with 2 decimals
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f\n", a / b }'; }

# retry N CMD...: runs CMD up to N times until it succeeds (qemu-img's PBKDF2 calibration
# sometimes fails with "Unable to get accurate CPU usage" on a busy machine).
retry() {
  local n="$1" i
  shift
  for ((i = 1; i <= n; i++)); do
    "$@" && return 0
    echo "bench: attempt $i of $n failed: $*" >&2
  done
  return 1
}
