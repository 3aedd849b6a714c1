#!/usr/bin/env bash
# Whole-system benchmark on object storage: csap's S3 mount and import against rclone (a crypt
# remote, and the plain remote for reference), in one run, on one S3-compatible server (s3s-fs,
# the server the tests use) on loopback. Prints a Markdown table with ratios to rclone crypt.
#
#   cargo build --release -p cli && sudo bench/s3-compare.sh
#
# Figures: import of FRAMES frames of FRAME_MIB MiB (csap import --jobs JOBS against rclone copy
# --transfers JOBS); sequential read of one BIG_MIB file through each mount (dd, 1 MiB blocks,
# page cache dropped first); a render — WORKERS processes reading every WORKERS-th frame with dd.
# rclone mounts with --vfs-cache-mode off (no local copy of plaintext, as csap keeps none).
#
# Environment: FRAMES [250], FRAME_MIB [8], BIG_MIB [1024], WORKERS [2], JOBS [4],
# WORK (a directory on a local disk; default a temp dir under /var/tmp), CSAP (the binary),
# S3_SERVER (s3s-fs; default the one .ci/run builds).
set -euo pipefail
cd "$(dirname "$0")/.."

FRAMES=${FRAMES:-250}
FRAME_MIB=${FRAME_MIB:-8}
BIG_MIB=${BIG_MIB:-1024}
WORKERS=${WORKERS:-2}
JOBS=${JOBS:-4}
CSAP=${CSAP:-$PWD/target/release/csap}
S3_SERVER=${S3_SERVER:-${CSAP_S3_SERVER:-$HOME/.cache/csap-ci/bin/s3s-fs}}
[ "$(id -u)" = 0 ] || { echo "run as root (FUSE mounts, drop_caches)" >&2; exit 1; }
[ -x "$CSAP" ] || { echo "build first: cargo build --release -p cli" >&2; exit 1; }
[ -x "$S3_SERVER" ] || { echo "no S3 server at $S3_SERVER: cargo install s3s-fs --version 0.14.1 --features binary" >&2; exit 1; }
for tool in rclone fusermount3; do
  command -v "$tool" >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone fuse3; break; }
done

work=${WORK:-$(mktemp -d /var/tmp/csap-s3-bench.XXXXXX)}
mkdir -p "$work"/{s3,src,mnt-csap,mnt-crypt,mnt-plain}
mkdir -p "$work/s3/bench"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
access=AKBENCH$RANDOM secret=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$S3_SERVER" --host 127.0.0.1 --port "$port" --access-key "$access" --secret-key "$secret" "$work/s3" >/dev/null 2>&1 &
server=$!
cleanup() {
  for m in "$work"/mnt-*; do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  kill "$server" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

# A CA bundle from the environment makes rclone's AWS SDK refuse its own HTTP transport; the
# server here is plain HTTP on loopback.
unset AWS_CA_BUNDLE
export AWS_ACCESS_KEY_ID=$access AWS_SECRET_ACCESS_KEY=$secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$port
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other
export RCLONE_CONFIG_S3_ACCESS_KEY_ID=$access RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=$secret
export RCLONE_CONFIG_S3_ENDPOINT=$AWS_ENDPOINT_URL RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true
export RCLONE_CONFIG_CRYPT_TYPE=crypt RCLONE_CONFIG_CRYPT_REMOTE=s3:bench/crypt
RCLONE_CONFIG_CRYPT_PASSWORD=$(rclone obscure benchmark-password)
export RCLONE_CONFIG_CRYPT_PASSWORD

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
wait_mounted() { for _ in $(seq 600); do mountpoint -q "$1" && return 0; sleep 0.1; done; echo "mount $1 failed" >&2; exit 1; }

echo "> $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg); $FRAMES frames of $FRAME_MIB MiB, a $BIG_MIB MiB file; $WORKERS render workers; $JOBS transfers" >&2
mkdir -p "$work/src/shot"
for i in $(seq -w 1 "$FRAMES"); do head -c $((FRAME_MIB << 20)) /dev/urandom > "$work/src/shot/f$i.exr"; done
head -c $((BIG_MIB << 20)) /dev/urandom > "$work/src/big.bin"
head -c 32 /dev/urandom > "$work/key"
frame_bytes=$((FRAMES * FRAME_MIB << 20))
all_bytes=$((frame_bytes + (BIG_MIB << 20)))

declare -A result
drop_caches
t0=$(now); "$CSAP" import "$work/src" s3://bench/csap --key-file "$work/key" --jobs "$JOBS" >/dev/null; t1=$(now)
result[csap,import]=$(mbps "$all_bytes" "$(elapsed "$t0" "$t1")")
drop_caches
t0=$(now); rclone copy "$work/src" crypt: --transfers "$JOBS"; t1=$(now)
result[crypt,import]=$(mbps "$all_bytes" "$(elapsed "$t0" "$t1")")
drop_caches
t0=$(now); rclone copy "$work/src" s3:bench/plain --transfers "$JOBS"; t1=$(now)
result[plain,import]=$(mbps "$all_bytes" "$(elapsed "$t0" "$t1")")

"$CSAP" mount s3://bench/csap "$work/mnt-csap" --key-file "$work/key" --daemon >/dev/null
rclone mount crypt: "$work/mnt-crypt" --vfs-cache-mode off --daemon
rclone mount s3:bench/plain "$work/mnt-plain" --vfs-cache-mode off --daemon
for s in csap crypt plain; do wait_mounted "$work/mnt-$s"; done

render() { # mountpoint → seconds for WORKERS readers of every WORKERS-th frame
  local mnt=$1 t0 t1
  local frames=("$mnt"/shot/*.exr)
  t0=$(now)
  for w in $(seq 0 $((WORKERS - 1))); do
    (for ((i = w; i < ${#frames[@]}; i += WORKERS)); do dd if="${frames[$i]}" of=/dev/null bs=1M status=none; done) &
  done
  wait
  t1=$(now)
  elapsed "$t0" "$t1"
}
for s in csap crypt plain; do
  mnt=$work/mnt-$s
  [ "$(ls "$mnt/shot" | wc -l)" = "$FRAMES" ] || { echo "$s mount shows $(ls "$mnt/shot" | wc -l) frames, not $FRAMES" >&2; exit 1; }
  drop_caches
  t0=$(now); dd if="$mnt/big.bin" of=/dev/null bs=1M status=none; t1=$(now)
  result[$s,seqread]=$(mbps $((BIG_MIB << 20)) "$(elapsed "$t0" "$t1")")
  drop_caches
  result[$s,render]=$(mbps "$frame_bytes" "$(render "$mnt")")
done
cmp <(head -c 4096 "$work/mnt-csap/shot/f$(printf "%0${#FRAMES}d" 1).exr") <(head -c 4096 "$work/src/shot/f$(printf "%0${#FRAMES}d" 1).exr") \
  || { echo "csap mount read back different bytes" >&2; exit 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
echo "| system | import MB/s | seq read MB/s | render MB/s |"
echo "|---|---|---|---|"
for s in crypt csap plain; do
  name=$s; [ $s = crypt ] && name="rclone crypt"; [ $s = plain ] && name="rclone, no encryption"
  echo "| $name | ${result[$s,import]} ($(ratio "${result[$s,import]}" "${result[crypt,import]}")) | ${result[$s,seqread]} ($(ratio "${result[$s,seqread]}" "${result[crypt,seqread]}")) | ${result[$s,render]} ($(ratio "${result[$s,render]}" "${result[crypt,render]}")) |"
done
