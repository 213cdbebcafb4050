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

# guest_boot_files DIR GUEST_SCRIPT MODULE...: a TCG guest in DIR: sets GUEST_KERNEL (the
# installed Debian kernel, uncompressed when possible: it boots in ~2 s under TCG) and
# GUEST_INITRD (busybox, the modules with their dependencies, and an /init that runs
# GUEST_SCRIPT then powers off).
guest_boot_files() {
  local dir="$1" script="$2" kver="" v m ko n off
  shift 2
  need busybox busybox-static
  need cpio cpio
  need modprobe kmod
  need xz xz-utils
  for v in /lib/modules/*; do
    [ -e "$v" ] || continue
    v=${v##*/}
    [ -f "/boot/vmlinuz-$v" ] || continue
    if [ -z "$kver" ] || [ "$(printf '%s\n%s\n' "$kver" "$v" | sort -V | tail -n 1)" = "$v" ]; then
      kver=$v
    fi
  done
  [ -n "$kver" ] || { echo "bench: no kernel: apt-get install -y linux-image-amd64" >&2; exit 2; }
  GUEST_KERNEL=/boot/vmlinuz-$kver
  off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$GUEST_KERNEL" | head -n 1 | cut -d: -f1 || true)
  if [ -n "$off" ]; then
    tail -c +$((off + 1)) "$GUEST_KERNEL" | xz -dc 2>/dev/null > "$dir/vmlinux" || true
    if head -c 4 "$dir/vmlinux" | grep -q ELF; then GUEST_KERNEL=$dir/vmlinux; fi
  fi
  local root="$dir/guest-root"
  mkdir -p "$root"/{bin,proc,sys,dev,mods}
  cp "$(command -v busybox)" "$root/bin/busybox"
  : > "$root/mods/order"
  for m in "$@"; do
    modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}' | while read -r ko; do
      n=${ko##*/}
      grep -qx "${n%.xz}" "$root/mods/order" && continue
      case "$ko" in
        *.xz) xz -dc "$ko" > "$root/mods/${n%.xz}"; n=${n%.xz} ;;
        *) cp "$ko" "$root/mods/$n" ;;
      esac
      echo "$n" >> "$root/mods/order"
    done
  done
  cp "$script" "$root/guest.sh"
  cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m 2>/dev/null; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
sh /guest.sh
poweroff -f
INIT
  chmod +x "$root/init"
  GUEST_INITRD=$dir/initrd.cpio
  (cd "$root" && find . | cpio -o -H newc --quiet) > "$GUEST_INITRD"
}
