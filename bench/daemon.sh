#!/usr/bin/env bash
# The daemon as Docker's volume driver (docs/daemon.md):
#  - time from `docker volume create` to a container's first written byte, sealvol vs the
#    local driver;
#  - `docker run` overhead with a sealvol volume vs a local-driver volume (N runs each,
#    interleaved, same dockerd), and the ratio;
#  - the daemon's idle RSS (target <= 32 MiB), and with 100 volumes open (the exports are
#    processes of their own: their total RSS is printed apart).
# Runs a dockerd of its own (own data and exec roots) and a daemon with its own state.
# Usage: bench/daemon.sh [RUNS]   (SEALVOL=path uses that binary instead of a release build)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need dockerd docker.io; need busybox busybox-static; need curl curl
RUNS="${1:-10}"
[ -n "${SEALVOL:-}" ] || build_sealvol
DIR="$(mktemp -d /tmp/sealvol-bench-daemon.XXXXXX)"
DOCKER="/usr/bin/docker -H unix://$DIR/docker.sock"
NAME="sealvol-bench-$$"
API="$DIR/api.sock"
cleanup() {
  $DOCKER ps -aq 2>/dev/null | xargs -r $DOCKER rm -f >/dev/null 2>&1 || true
  [ -n "${SV_PID:-}" ] && kill "$SV_PID" 2>/dev/null && wait "$SV_PID" 2>/dev/null || true
  [ -n "${DK_PID:-}" ] && kill "$DK_PID" 2>/dev/null && wait "$DK_PID" 2>/dev/null || true
  umount -l "$DIR"/data/* 2>/dev/null || true
  rm -rf "$DIR" 2>/dev/null || true
}
trap cleanup EXIT
now() { date +%s.%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

dockerd --iptables=false --bridge=none --ip-forward=false --ip-masq=false \
  --data-root "$DIR/data" --exec-root "$DIR/x" --pidfile "$DIR/dockerd.pid" \
  -H "unix://$DIR/docker.sock" >"$DIR/dockerd.log" 2>&1 &
DK_PID=$!
for _ in $(seq 100); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.2; done
$DOCKER info >/dev/null || { echo "bench: dockerd did not start" >&2; exit 2; }
mkdir -p "$DIR/rootfs/bin" "$DIR/rootfs/data"
cp "$(command -v busybox)" "$DIR/rootfs/bin/"
for a in sh echo cat sync; do ln -s busybox "$DIR/rootfs/bin/$a"; done
tar -C "$DIR/rootfs" -c . | $DOCKER import - sealvol-bench:1 >/dev/null

SEALVOL_RUN_DIR="$DIR/run" "$SEALVOL" daemon --state-dir "$DIR/state" --api-socket "$API" \
  --plugin-socket "/run/docker/plugins/$NAME.sock" >"$DIR/daemon.log" 2>&1 &
SV_PID=$!
for _ in $(seq 100); do [ -S "$API" ] && break; sleep 0.05; done
sleep 1
echo "daemon idle RSS: $(( $(rss_kib "$SV_PID") / 1024 )) MiB ($(rss_kib "$SV_PID") KiB; target <= 32 MiB)"
KEY="$(head -c 32 /dev/urandom | base64 -w0)"
curl -sf --unix-socket "$API" -X POST http://localhost/v1/keys -d "{\"id\":\"bench\",\"key\":\"$KEY\"}" >/dev/null

run() { $DOCKER run --rm --network none -v "$1:/data" sealvol-bench:1 sh -c 'echo x > /data/f' >/dev/null; }
# Time to first byte: create, then a container writes one byte.
t0=$(now); $DOCKER volume create -d "$NAME" --opt size=1G --opt key-id=bench ttfb-sv >/dev/null; run ttfb-sv; t1=$(now)
t2=$(now); $DOCKER volume create ttfb-local >/dev/null; run ttfb-local; t3=$(now)
sv_ttfb=$(ms "$t0" "$t1"); local_ttfb=$(ms "$t2" "$t3")
echo "create -> first byte: sealvol ${sv_ttfb} ms, local ${local_ttfb} ms, ratio $(awk -v a="$sv_ttfb" -v b="$local_ttfb" 'BEGIN{printf "%.2f", a/b}')"
# docker run overhead, interleaved; sealvol runs 2.5 s apart so each one opens the volume
# (no lingering export from the run before), then back to back (lingering).
sv=0; lo=0; warm=0
for _ in $(seq "$RUNS"); do
  sleep 2.5
  t0=$(now); run ttfb-sv; t1=$(now); sv=$(awk -v s="$sv" -v d="$(ms "$t0" "$t1")" 'BEGIN{print s+d}')
  t0=$(now); run ttfb-sv; t1=$(now); warm=$(awk -v s="$warm" -v d="$(ms "$t0" "$t1")" 'BEGIN{print s+d}')
  t0=$(now); run ttfb-local; t1=$(now); lo=$(awk -v s="$lo" -v d="$(ms "$t0" "$t1")" 'BEGIN{print s+d}')
done
awk -v s="$sv" -v w="$warm" -v l="$lo" -v n="$RUNS" 'BEGIN {
  printf "docker run (mean of %d): sealvol cold %.0f ms, sealvol warm %.0f ms, local %.0f ms; ratio cold %.2f, warm %.2f\n", n, s/n, w/n, l/n, s/l, w/l }'
$DOCKER volume rm ttfb-sv ttfb-local >/dev/null

# 100 volumes open.
t0=$(now)
for i in $(seq 100); do
  curl -sf --unix-socket "$API" -X POST http://localhost/v1/volumes \
    -d "{\"id\":\"v$i\",\"size\":\"16M\",\"key\":{\"key_id\":\"bench\"}}" >/dev/null
  curl -sf --unix-socket "$API" -X POST http://localhost/v1/volumes/v$i/open >/dev/null
done
t1=$(now)
exports=$(curl -sf --unix-socket "$API" http://localhost/v1/status | python3 -c 'import json,sys; print(" ".join(str(v["export"]["pid"]) for v in json.load(sys.stdin)["volumes"] if v["export"]))')
n=0; total=0; for p in $exports; do n=$((n+1)); total=$((total + $(rss_kib "$p"))); done
echo "100 volumes created and opened in $(ms "$t0" "$t1") ms; daemon RSS $(( $(rss_kib "$SV_PID") / 1024 )) MiB; $n exports, $((total / 1024)) MiB RSS together ($((total / n)) KiB each)"
for i in $(seq 100); do
  curl -sf --unix-socket "$API" -X POST http://localhost/v1/volumes/v$i/close >/dev/null
  curl -sf --unix-socket "$API" -X DELETE http://localhost/v1/volumes/v$i >/dev/null
done
