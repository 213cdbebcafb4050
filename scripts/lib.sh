# Shared helpers for scripts/demo and scripts/test. Sourced, not run.
# shellcheck shell=bash

# Root of the repository (the parent of scripts/).
SEALVOL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

step() { printf '\n==> %s\n' "$*"; }

# Any command that fails under `set -e` says which one and where, instead of ending the
# script silently.
on_error() {
  local status=$? line=${BASH_LINENO[0]} file=${BASH_SOURCE[1]:-$0}
  # Report once, from the script itself, not again from each subshell it ran.
  [ "$BASH_SUBSHELL" -eq 0 ] || return 0
  printf 'error: `%s` failed with exit status %d (%s line %s)\n' "$BASH_COMMAND" "$status" "$file" "$line" >&2
}
trap on_error ERR
set -o errtrace
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# rustup installs cargo under ~/.cargo/bin, which a root login shell may not have on PATH.
if [ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]; then
  PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
# cryptsetup lives in /usr/sbin.
PATH="$PATH:/usr/sbin:/sbin"
export PATH

# ensure_packages CMD:PACKAGE ... — apt-get install the Debian packages whose command is
# missing (or whose package is not installed, for entries written as dpkg:PACKAGE).
# Fails loudly if installation fails.
ensure_packages() {
  local missing=() entry cmd pkg
  for entry in "$@"; do
    cmd="${entry%%:*}"
    pkg="${entry#*:}"
    if [ "$cmd" = dpkg ]; then
      dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    else
      command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing missing Debian packages: ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install ${missing[*]} by hand"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || die "apt-get update failed; cannot install ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
  for entry in "$@"; do
    cmd="${entry%%:*}"
    [ "$cmd" = dpkg ] && continue
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' still missing after installing ${entry#*:}"
  done
}

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install a Rust toolchain >= 1.85 (rustup) and put ~/.cargo/bin on PATH"
}

# Where cargo puts build output (honours CARGO_TARGET_DIR).
target_dir() {
  printf '%s\n' "${CARGO_TARGET_DIR:-$SEALVOL_ROOT/target}"
}
