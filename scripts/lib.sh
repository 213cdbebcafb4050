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

# qemu_major BINARY: the major version BINARY reports, or 0 when it is missing.
qemu_major() {
  local v
  v="$("$1" --version 2>/dev/null | head -n 1 | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p')" || true
  printf '%s\n' "${v:-0}"
}

# ensure_qemu_backports: qemu-system-x86 and qemu-utils 9 or later, from bookworm-backports.
# Debian bookworm's own qemu is 7.2, whose LUKS driver reads no detached header; and a machine
# that came with qemu-utils 10 from backports but no backports apt source would be downgraded
# to 7.2 by a plain `apt-get install qemu-system-x86`. So the source is added when missing and
# both packages are installed from it.
ensure_qemu_backports() {
  if [ "$(qemu_major qemu-system-x86_64)" -ge 9 ] && [ "$(qemu_major qemu-img)" -ge 9 ] \
    && command -v qemu-nbd >/dev/null 2>&1 && command -v qemu-storage-daemon >/dev/null 2>&1; then
    return 0
  fi
  local sudo=() list=/etc/apt/sources.list.d/sealvol-bookworm-backports.sources
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    step "adding the bookworm-backports apt source ($list)"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
      | "${sudo[@]}" tee "$list" >/dev/null || die "cannot write $list"
  fi
  step "installing qemu-system-x86 and qemu-utils from bookworm-backports"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    || die "apt-get update failed; cannot install qemu from bookworm-backports"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -t bookworm-backports qemu-system-x86 qemu-utils \
    || die "apt-get install -t bookworm-backports qemu-system-x86 qemu-utils failed"
  [ "$(qemu_major qemu-system-x86_64)" -ge 9 ] || die "qemu-system-x86_64 is still older than 9 after installing from bookworm-backports"
  [ "$(qemu_major qemu-img)" -ge 9 ] || die "qemu-img is still older than 9 after installing from bookworm-backports"
}

# ensure_engines — the container engines the volume-plugin tests drive
# (crates/sealvol/tests/engines_volume_plugin.rs): Debian's docker.io (Engine 20.10) and
# podman (4.3), plus curl for the API's TCP test. The tests start and stop a dockerd of
# their own (own data and exec roots, --iptables=false --bridge=none) and run podman with
# its own storage and a CONTAINERS_CONF naming the plugin, so nothing here starts a
# service; it checks that the engines run at all and fails loudly when they do not.
ensure_engines() {
  ensure_packages dockerd:docker.io podman:podman curl:curl busybox:busybox-static
  dockerd --version || die "dockerd does not run (Debian package docker.io)"
  podman --version || die "podman does not run (Debian package podman)"
  [ -x /usr/bin/docker ] || die "/usr/bin/docker (docker.io's client) is missing"
}
