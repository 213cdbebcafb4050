#!/usr/bin/env bash
# Seeds fuzz/corpus/luks2_header/ with real headers made by cryptsetup (LUKS2, several shapes):
# for each, the primary copy alone and the whole header area (both copies; keyslots area cut);
# and fuzz/corpus/luks1_header/ with LUKS1 binary headers (three hashes and key sizes);
# fuzz/corpus/nbd_client/ with NBD client sessions written out by hand (below); and
# fuzz/corpus/daemon_api/ and daemon_plugin/ with requests as clients and engines send them;
# and every target with its committed seeds in fuzz/seeds/TARGET/.
# Usage: fuzz/seed.sh   (needs cryptsetup; the corpus directory is not committed)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
corpus="$here/corpus/luks2_header"
mkdir -p "$corpus"
PATH="$PATH:/usr/sbin:/sbin"
command -v cryptsetup >/dev/null || { echo "cryptsetup missing: apt-get install -y cryptsetup-bin" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
head -c 32 /dev/urandom > "$tmp/key"
head -c 32 /dev/urandom > "$tmp/key2"
fast=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)

seed() { # name, metadata size in bytes, extra luksFormat args...
  local name="$1" md="$2"
  shift 2
  local img="$tmp/$name.img"
  truncate -s 20M "$img"
  cryptsetup luksFormat --batch-mode --type luks2 --luks2-metadata-size "$md" "$@" "$img" "$tmp/key"
  case "$name" in
    multi*)
      cryptsetup luksAddKey --batch-mode "${fast[@]}" --key-file "$tmp/key" "$img" "$tmp/key2"
      echo '{"type":"seed-token","keyslots":["0"],"x":{"y":[1,2]}}' > "$tmp/token.json"
      cryptsetup token import --json-file "$tmp/token.json" "$img"
      ;;
  esac
  head -c "$md" "$img" > "$corpus/$name-primary"
  head -c $((2 * md)) "$img" > "$corpus/$name-both"
}

seed pbkdf2-4096 16384 "${fast[@]}" --sector-size 4096
seed argon2id-512 16384 --pbkdf argon2id --pbkdf-memory 32 --pbkdf-force-iterations 4 --sector-size 512
seed multi-32k 32768 "${fast[@]}" --label seed --subsystem fuzz
echo "wrote 6 cryptsetup seed headers to $corpus"

# luks2_metadata: the JSON areas of those headers (what follows each primary binary header).
corpus_md="$here/corpus/luks2_metadata"
mkdir -p "$corpus_md"
for f in "$corpus"/*-primary; do
  tail -c +4097 "$f" | tr -d '\000' > "$corpus_md/$(basename "$f" -primary).json"
done

# LUKS1 (fuzz/corpus/luks1_header/): the binary header and the first key slot's start.
corpus1="$here/corpus/luks1_header"
mkdir -p "$corpus1"
seed1() { # name, luksFormat args...
  local name="$1"
  shift
  local img="$tmp/$name.img"
  truncate -s 4M "$img"
  cryptsetup luksFormat --batch-mode --type luks1 --iter-time 1 "$@" "$img" "$tmp/key"
  cryptsetup luksAddKey --batch-mode --type luks1 --iter-time 1 --key-file "$tmp/key" "$img" "$tmp/key2"
  head -c 592 "$img" > "$corpus1/$name-phdr"
  head -c 8192 "$img" > "$corpus1/$name-8k"
}
seed1 sha256-512 --hash sha256 --key-size 512
seed1 sha1-256 --hash sha1 --key-size 256
seed1 sha512-512 --hash sha512 --key-size 512
echo "wrote 6 cryptsetup LUKS1 seed headers to $corpus1"

# NBD client sessions for nbd_client: an options byte, then what a client sends (hex).
nbd="$here/corpus/nbd_client"
mkdir -p "$nbd"
bytes() { printf "$(printf '%s' "$*" | tr -d ' ' | sed 's/../\\x&/g')"; }
OPT=49484156454f5054   # IHAVEOPT
REQ=25609513           # request magic
# GO (default export, block size info), then read, write, flush, trim, write-zeroes, disc.
bytes 00 00000003 $OPT 00000007 00000008 00000000 0001 0003 \
  $REQ 0000 0000 0000000000000001 0000000000000000 00001000 \
  $REQ 0001 0001 0000000000000002 0000000000000200 00000008 0102030405060708 \
  $REQ 0000 0003 0000000000000003 0000000000000000 00000000 \
  $REQ 0000 0004 0000000000000004 0000000000001000 00001000 \
  $REQ 0000 0006 0000000000000005 0000000000002000 00000200 \
  $REQ 0000 0002 0000000000000006 0000000000000000 00000000 > "$nbd/go-io"
# Export "vol": LIST, INFO, STARTTLS (unsupported), an unknown option, EXPORT_NAME, a read.
bytes 02 00000002 $OPT 00000003 00000000 \
  $OPT 00000006 00000009 00000003 766f6c 0000 \
  $OPT 00000005 00000000 $OPT 00000063 00000000 \
  $OPT 00000001 00000003 766f6c \
  $REQ 0000 0000 0000000000000007 00000000000ff000 00002000 > "$nbd/list-info-export-name"
# Read-only export: a write (refused), a read past the end, ABORT never reached.
bytes 01 00000003 $OPT 00000007 00000006 00000000 0000 \
  $REQ 0000 0001 0000000000000008 0000000000000000 00000004 61626364 \
  $REQ 0000 0000 0000000000000009 00000000000ffffe 00000004 > "$nbd/read-only"
echo "wrote 3 NBD client sessions to $nbd"

# Daemon requests: a method byte, the path, a newline, the body (daemon_api: 0 GET, 1 POST,
# 2 DELETE; daemon_plugin: 0 POST).
api="$here/corpus/daemon_api"
mkdir -p "$api"
req() { printf '%b%s\n%s' "$2" "$3" "$4" > "$1"; }
req "$api/status" '\x00' /v1/status ''
req "$api/create" '\x01' /v1/volumes '{"id":"web-1","size":"64M","fs":"ext4","type":"luks2","detached_header":false,"sparse_ok":true,"key":{"key_id":"web"}}'
req "$api/create-file" '\x01' /v1/volumes '{"id":"v2","size":67108864,"key":{"key_file":"/root/k"}}'
req "$api/open-base64" '\x01' /v1/volumes/web-1/open '{"key":{"base64":"AAECAwQFBgcICQoLDA0ODw=="}}'
req "$api/rekey" '\x01' /v1/volumes/web-1/rekey '{"key":{"key_id":"web"},"new_key":{"base64":"AAECAw=="}}'
req "$api/keys" '\x01' /v1/keys '{"id":"web","key":"AAECAwQFBgcICQoLDA0ODw=="}'
req "$api/destroy" '\x02' /v1/volumes/web-1 ''
req "$api/forget" '\x02' /v1/keys/web ''
plugin="$here/corpus/daemon_plugin"
mkdir -p "$plugin"
req "$plugin/activate" '\x00' /Plugin.Activate ''
req "$plugin/create" '\x00' /VolumeDriver.Create '{"Name":"web-1","Opts":{"size":"10G","key-id":"web","fs":"ext4","type":"luks2","detached-header":"false","sparse-ok":""}}'
req "$plugin/create-bare" '\x00' /VolumeDriver.Create '{"Name":"web-1","Opts":null}'
req "$plugin/mount" '\x00' /VolumeDriver.Mount '{"Name":"web-1","ID":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}'
req "$plugin/unmount" '\x00' /VolumeDriver.Unmount '{"Name":"web-1","ID":"c1"}'
req "$plugin/get" '\x00' /VolumeDriver.Get '{"Name":"web-1"}'
req "$plugin/list" '\x00' /VolumeDriver.List '{}'
echo "wrote daemon requests to $api and $plugin"

# Committed seeds (fuzz/seeds/TARGET/): inputs made by the crates' own code that a fuzzer
# rarely finds alone, e.g. overlay roots that open (written by
# `cargo test -p sealvol-overlay -- --ignored write_fuzz_seeds`; a unit test says when they
# are stale).
for dir in "$here"/seeds/*/; do
  t="$(basename "$dir")"
  mkdir -p "$here/corpus/$t"
  cp "$dir"* "$here/corpus/$t/"
  echo "copied $(find "$dir" -type f | wc -l) committed seeds to $here/corpus/$t"
done
