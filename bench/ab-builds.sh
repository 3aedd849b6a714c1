#!/usr/bin/env bash
# A/B of csap builds: each `csap` binary given (and gocryptfs, for a ratio) mounted over one
# tmpfs, then ROUNDS rounds that take turns between them — sequential write and read of a
# SIZE_MIB file (dd, 1 MiB blocks, write with fsync, page cache dropped before the read) and a
# re-read of a copied tree (TREE, default /usr/share/doc; NOTREE=1 skips it). Taking turns puts
# every build under the same moment's load, which a run per build does not.
#
#   cp target/release/csap /tmp/csap-old; ...rebuild...; sudo bench/ab-builds.sh /tmp/csap-old target/release/csap
#
# Environment: SIZE_MIB [1024], ROUNDS [3], MODE [direct|page], TREE, NOTREE.
set -euo pipefail
SIZE_MIB=${SIZE_MIB:-1024}; ROUNDS=${ROUNDS:-3}; MODE=${MODE:-direct}; TREE=${TREE:-/usr/share/doc}
work=$(mktemp -d /tmp/ab.XXXX); mount -t tmpfs -o size=6g ab "$work"
trap 'for m in $work/*/mnt; do fusermount3 -u $m 2>/dev/null || true; done; sleep 0.3; umount -l $work' EXIT
now() { date +%s.%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
i=0
for sys in gocryptfs "$@"; do
  i=$((i+1)); d=$work/s$i; mkdir -p $d/backing $d/mnt
  if [ "$sys" = gocryptfs ]; then echo pw > $d/pw; gocryptfs -init -q -extpass "cat $d/pw" $d/backing >/dev/null; gocryptfs -q -extpass "cat $d/pw" $d/backing $d/mnt
  else head -c 32 /dev/urandom > $d/key; "$sys" mount $d/backing $d/mnt --key-file $d/key --cache $MODE --daemon >/dev/null 2>&1; fi
  for _ in $(seq 50); do mountpoint -q $d/mnt && break; sleep 0.1; done
  dd if=/dev/zero of=$d/mnt/big bs=1M count=$SIZE_MIB conv=fsync status=none
  [ -n "${NOTREE:-}" ] || cp -a $TREE $d/mnt/tree
done
for r in $(seq $ROUNDS); do
  i=0
  for sys in gocryptfs "$@"; do
    i=$((i+1)); d=$work/s$i
    t0=$(now); dd if=/dev/zero of=$d/mnt/big2 bs=1M count=$SIZE_MIB conv=fsync status=none; t1=$(now); rm $d/mnt/big2
    w=$(awk -v a=$t0 -v b=$t1 -v n=$SIZE_MIB 'BEGIN{printf "%.0f", n*1048576/(b-a)/1e6}')
    drop; t0=$(now); dd if=$d/mnt/big of=/dev/null bs=1M status=none; t1=$(now)
    rd=$(awk -v a=$t0 -v b=$t1 -v n=$SIZE_MIB 'BEGIN{printf "%.0f", n*1048576/(b-a)/1e6}')
    tr=-; if [ -z "${NOTREE:-}" ]; then drop; t0=$(now); find $d/mnt/tree -type f -exec cat {} + >/dev/null; t1=$(now); tr=$(awk -v a=$t0 -v b=$t1 'BEGIN{printf "%.2f", b-a}'); fi
    echo "round $r $sys write ${w} MB/s read ${rd} MB/s tree-reread ${tr} s"
  done
done
