#!/usr/bin/env bash
# Whole-system benchmark: csapfs (direct-I/O and page-cache modes) against gocryptfs and a
# bindfs passthrough, in one run, over one tmpfs backing store, plaintext page cache dropped
# between passes. Prints a Markdown table with each figure and its ratio to gocryptfs.
#
#   cargo build --release -p cli && sudo bench/fs-compare.sh
#
# Environment: SIZE_MIB (default 1024) for the sequential file, TREE (default: the largest
# /usr/lib/python3.* directory, ~4,000 files), FIO_SECONDS (default 10), CSAP (the binary).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
FIO_SECONDS=${FIO_SECONDS:-10}
CSAP=${CSAP:-$PWD/target/release/csap}
TREE=${TREE:-/usr/share/doc}
[ "$(id -u)" = 0 ] || { echo "run as root (tmpfs mounts, drop_caches)" >&2; exit 1; }
[ -x "$CSAP" ] || { echo "build first: cargo build --release -p cli" >&2; exit 1; }
for tool in gocryptfs bindfs fio fusermount3; do
  command -v "$tool" >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gocryptfs bindfs fio fuse3; break; }
done

work=$(mktemp -d /tmp/csap-bench.XXXXXX)
mount -t tmpfs -o size=$(( SIZE_MIB * 3 + 2048 ))m csap-bench "$work"
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  sleep 0.5
  umount -l "$work" 2>/dev/null || true
  rmdir "$work" 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
wait_mounted() { for _ in $(seq 100); do mountpoint -q "$1" && return 0; sleep 0.1; done; echo "mount $1 failed" >&2; exit 1; }

setup() { # name → prints its mountpoint
  local name=$1 dir="$work/$1"
  mkdir -p "$dir/backing" "$dir/mnt"
  case $name in
    csap-direct|csap-page)
      head -c 32 /dev/urandom > "$dir/key"
      "$CSAP" mount "$dir/backing" "$dir/mnt" --key-file "$dir/key" --cache "${name#csap-}" --daemon >/dev/null 2>&1 ;;
    gocryptfs)
      echo benchmark-password > "$dir/pw"
      gocryptfs -init -q -extpass "cat $dir/pw" "$dir/backing" >/dev/null
      gocryptfs -q -extpass "cat $dir/pw" "$dir/backing" "$dir/mnt" ;;
    bindfs) bindfs "$dir/backing" "$dir/mnt" ;;
  esac
  wait_mounted "$dir/mnt"
  mounts+=("$dir/mnt")
  echo "$dir/mnt"
}

tree_files=$(find "$TREE" -type f | wc -l)
tree_bytes=$(du -sb "$TREE" | cut -f1)
declare -A result
systems=(gocryptfs csap-direct csap-page bindfs)
for fs in "${systems[@]}"; do
  mnt=$(setup "$fs")
  bytes=$(( SIZE_MIB * 1024 * 1024 ))
  t0=$(now); dd if=/dev/zero of="$mnt/big" bs=1M count="$SIZE_MIB" conv=fsync status=none; t1=$(now)
  result[$fs,seqwrite]=$(mbps "$bytes" "$(elapsed "$t0" "$t1")")
  drop_caches
  t0=$(now); dd if="$mnt/big" of=/dev/null bs=1M status=none; t1=$(now)
  result[$fs,seqread]=$(mbps "$bytes" "$(elapsed "$t0" "$t1")")
  t0=$(now); cp -a "$TREE" "$mnt/tree"; sync; t1=$(now)
  result[$fs,treecopy]=$(printf "%.2f" "$(elapsed "$t0" "$t1")")
  drop_caches
  t0=$(now); find "$mnt/tree" -type f -exec cat {} + > /dev/null; t1=$(now)
  result[$fs,treeread]=$(printf "%.2f" "$(elapsed "$t0" "$t1")")
  drop_caches
  iops=$(fio --name=rand --filename="$mnt/big" --rw=randread --bs=4k --ioengine=psync --numjobs=2 \
          --runtime="$FIO_SECONDS" --time_based --group_reporting --output-format=json 2>/dev/null \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
  result[$fs,randread]=$iops
  fusermount3 -u "$mnt"; mounts=("${mounts[@]/$mnt}")
done

ratio() { awk -v a="$1" -v b="$2" -v inv="${3:-0}" 'BEGIN { if (inv) printf "%.2f", b / a; else printf "%.2f", a / b }'; }
echo
echo "csap fs benchmark: $(date -u +%F), $(nproc) cores, tmpfs backing, ${SIZE_MIB} MiB file, tree = $TREE ($tree_files files, $(( tree_bytes / 1048576 )) MiB)"
echo
echo "| system | seq write MB/s | seq read MB/s | tree copy s | tree re-read s | random 4 KiB read IOPS |"
echo "|---|---|---|---|---|---|"
for fs in "${systems[@]}"; do
  g=gocryptfs
  printf "| %s | %s (%sx) | %s (%sx) | %s (%sx) | %s (%sx) | %s (%sx) |\n" "$fs" \
    "${result[$fs,seqwrite]}" "$(ratio "${result[$fs,seqwrite]}" "${result[$g,seqwrite]}")" \
    "${result[$fs,seqread]}" "$(ratio "${result[$fs,seqread]}" "${result[$g,seqread]}")" \
    "${result[$fs,treecopy]}" "$(ratio "${result[$fs,treecopy]}" "${result[$g,treecopy]}" 1)" \
    "${result[$fs,treeread]}" "$(ratio "${result[$fs,treeread]}" "${result[$g,treeread]}" 1)" \
    "${result[$fs,randread]}" "$(ratio "${result[$fs,randread]}" "${result[$g,randread]}")"
done
echo
echo "Ratios are against gocryptfs; higher is better in every column (time columns are inverted)."
