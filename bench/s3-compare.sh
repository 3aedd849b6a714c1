#!/usr/bin/env bash
# Whole-system benchmark on one S3 server (s3s-fs on loopback): csap's S3 mount and `csap
# import` against rclone — a `crypt` remote (rclone's encrypting peer) and the plain remote (no
# encryption) over the same bucket — in one run, caches dropped between passes. Prints a
# Markdown table with each figure and its ratio to rclone crypt.
#
#   cargo build --release -p cli && sudo bench/s3-compare.sh
#
# Passes: sequential read of one SIZE_MIB asset (one reader, 1 MiB reads); the render pattern
# (FRAMES frames of FRAME_MIB, WORKERS readers, each frame opened and read whole); the import of
# those frames (`csap import --jobs JOBS` against `rclone copy --transfers JOBS`).
# csap runs with a key file (no key server: the peers license nothing either).
#
# Environment: SIZE_MIB (1024), FRAMES (1000), FRAME_MIB (8), WORKERS (2), JOBS (4),
# CSAP (the binary), S3_SERVER (s3s-fs; default: $CSAP_S3_SERVER, then ~/.cache/csap-ci/bin),
# WORK (a directory on a real disk for the S3 data and the source frames; default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
FRAMES=${FRAMES:-1000}
FRAME_MIB=${FRAME_MIB:-8}
WORKERS=${WORKERS:-2}
JOBS=${JOBS:-4}
CSAP=${CSAP:-$PWD/target/release/csap}
S3_SERVER=${S3_SERVER:-${CSAP_S3_SERVER:-$HOME/.cache/csap-ci/bin/s3s-fs}}
[ "$(id -u)" = 0 ] || { echo "run as root (mounts, drop_caches)" >&2; exit 1; }
[ -x "$CSAP" ] || { echo "build first: cargo build --release -p cli" >&2; exit 1; }
[ -x "$S3_SERVER" ] || { echo "no S3 server at $S3_SERVER: cargo install s3s-fs --version 0.14.1 --locked --features binary (as .ci/run does)" >&2; exit 1; }
for tool in rclone fusermount3; do
  command -v "$tool" >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone fuse3; break; }
done
# rclone's AWS SDK refuses its own HTTP transport when AWS_CA_BUNDLE is set.
unset AWS_CA_BUNDLE

work=$(mktemp -d "${WORK:-/var/tmp}/csap-s3-bench.XXXXXX")
mounts=()
server_pid=
cleanup() {
  for m in "${mounts[@]}"; do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
wait_mounted() { for _ in $(seq 300); do mountpoint -q "$1" && return 0; sleep 0.1; done; echo "mount $1 failed" >&2; exit 1; }

# One S3 server, one bucket; each system has its own prefix in it.
bucket=bench
mkdir -p "$work/s3/$bucket" "$work/src/frames"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret0123456789 AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
RUST_LOG=warn "$S3_SERVER" --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" \
  --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/s3" >"$work/s3.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

# rclone: remote `s3` (plain) and `crypt` over s3:bench/crypt, from the environment.
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENV_AUTH=false
export RCLONE_CONFIG_S3_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export RCLONE_CONFIG_S3_ENDPOINT=$AWS_ENDPOINT_URL RCLONE_CONFIG_S3_REGION=us-east-1
export RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true
export RCLONE_CONFIG_CRYPT_TYPE=crypt RCLONE_CONFIG_CRYPT_REMOTE=s3:$bucket/crypt
RCLONE_CONFIG_CRYPT_PASSWORD=$(rclone obscure benchmark-password)
export RCLONE_CONFIG_CRYPT_PASSWORD
export RCLONE_CONFIG=/dev/null # only the remotes above
# s3s-fs answers a HEAD of a key that is a "directory" of its files with 500, not 404; rclone
# retries that 10 times with backoff (its mount then gives up: "mount not ready"). Loopback has
# no transient errors to retry.
export RCLONE_LOW_LEVEL_RETRIES=1

head -c 32 /dev/urandom > "$work/key"
echo "== source: ${SIZE_MIB} MiB asset, $FRAMES frames of $FRAME_MIB MiB" >&2
head -c $(( SIZE_MIB << 20 )) /dev/urandom > "$work/src/big.bin"
for i in $(seq -w 0 $(( FRAMES - 1 ))); do head -c $(( FRAME_MIB << 20 )) /dev/urandom > "$work/src/frames/f$i.exr"; done
frame_bytes=$(( FRAMES * (FRAME_MIB << 20) ))

declare -A result
# Imports: the frames (timed), then the big asset (untimed) for the read pass.
import() { # system → seconds to store the frames
  local sys=$1 t0 t1
  drop_caches
  t0=$(now)
  case $sys in
    csap) "$CSAP" import "$work/src/frames" "s3://$bucket/csap/frames" --key-file "$work/key" --jobs "$JOBS" >/dev/null ;;
    crypt) rclone copy "$work/src/frames" crypt:frames --transfers "$JOBS" ;;
    plain) rclone copy "$work/src/frames" "s3:$bucket/plain/frames" --transfers "$JOBS" ;;
  esac
  t1=$(now)
  case $sys in
    csap) mkdir -p "$work/one" && ln -f "$work/src/big.bin" "$work/one/big.bin" \
      && "$CSAP" import "$work/one" "s3://$bucket/csap/one" --key-file "$work/key" >/dev/null ;;
    crypt) rclone copy "$work/src/big.bin" crypt:one ;;
    plain) rclone copy "$work/src/big.bin" "s3:$bucket/plain/one" ;;
  esac
  elapsed "$t0" "$t1"
}

mount_system() { # system (its mountpoint: $work/mnt-SYSTEM)
  local sys=$1 mnt="$work/mnt-$1"
  mkdir -p "$mnt"
  case $sys in
    csap) "$CSAP" mount "s3://$bucket/csap" "$mnt" --key-file "$work/key" --daemon >/dev/null 2>"$work/mount-csap.log" ;;
    # rclone's defaults for reading (--vfs-cache-mode off: streamed, --buffer-size 16M).
    crypt) rclone mount crypt: "$mnt" --read-only --daemon --log-file "$work/mount-crypt.log" ;;
    plain) rclone mount "s3:$bucket/plain" "$mnt" --read-only --daemon --log-file "$work/mount-plain.log" ;;
  esac
  mounts+=("$mnt")
  wait_mounted "$mnt"
}

read_seq() { # file → seconds
  local t0 t1
  drop_caches
  t0=$(now)
  dd if="$1" of=/dev/null bs=1M status=none
  t1=$(now)
  elapsed "$t0" "$t1"
}

render() { # frame directory → seconds (WORKERS readers, each frame opened and read whole)
  local t0 t1
  drop_caches
  t0=$(now)
  find "$1" -name '*.exr' | sort | xargs -P "$WORKERS" -n 25 cat >/dev/null
  t1=$(now)
  elapsed "$t0" "$t1"
}

for sys in csap crypt plain; do
  echo "== $sys: import" >&2
  result[$sys,import]=$(import "$sys")
  mount_system "$sys"
  mnt="$work/mnt-$sys"
  ls -R "$mnt" >/dev/null # listings warm, as a render node's would be
  echo "== $sys: sequential read, render" >&2
  result[$sys,seq]=$(read_seq "$mnt/one/big.bin")
  result[$sys,render]=$(render "$mnt/frames")
  first=$(cd "$work/src/frames" && ls | head -1)
  cmp -s "$mnt/frames/$first" "$work/src/frames/$first" \
    || { echo "$sys: a frame read back differs" >&2; exit 1; }
done

size_bytes=$(( SIZE_MIB << 20 ))
echo
echo "csap S3 mount vs rclone, one s3s-fs server on loopback; $(nproc) cores; ratio: rclone crypt's time / csap's (higher is better for csap)"
echo
echo "| pass | csap | rclone crypt | rclone plain | csap vs crypt | csap vs plain |"
echo "|---|---|---|---|---|---|"
row() { # name key bytes
  local c=${result[csap,$2]} k=${result[crypt,$2]} p=${result[plain,$2]}
  echo "| $1 | $(mbps "$3" "$c") MB/s | $(mbps "$3" "$k") MB/s | $(mbps "$3" "$p") MB/s | $(ratio "$k" "$c")× | $(ratio "$p" "$c")× |"
}
row "sequential read, ${SIZE_MIB} MiB" seq "$size_bytes"
row "render, $FRAMES × $FRAME_MIB MiB, $WORKERS workers" render "$frame_bytes"
row "import of the frames, $JOBS jobs" import "$frame_bytes"
