#!/usr/bin/env bash
# POSIX conformance of the mount: pjdfstest and xfstests' fsx against `csap mount --key-file`
# (`--cache direct` and `--cache page`) and gocryptfs, each over its own tmpfs backing store.
# Prints a Markdown table of failing files / tests (pjdfstest) and failing runs (fsx).
#
#   cargo build --release -p cli && sudo bench/posix-suites.sh SRC_DIR
#
# SRC_DIR holds source trees fetched beforehand (this script downloads nothing):
#   SRC_DIR/pjdfstest   github.com/pjd/pjdfstest
#   SRC_DIR/xfstests    xfstests (only ltp/fsx.c, include/ and src/ are used)
# Both are built in a temporary directory, never in the repository.
#
# pjdfstest is run with `prove -r` as root from inside the mount point, in three groups:
#   core       every tests/ file except tests/chown and the multi-user ones
#   ownership  tests/chown
#   multiuser  the other files that run a call as another user or group (`pjdfstest -u/-g`)
# core runs on a plain mount; ownership and multiuser on one with `-o allow_other`, without which
# FUSE refuses every user but the mount's owner (most chown tests switch users too).
# Environment: SYSTEMS (default "csap-direct csap-page gocryptfs"), FSX_OPS (default 1000000),
# FSX_SEEDS (default "1"), FSX_SYSTEMS (default: the csap systems only), LOGS (default: a
# temporary directory, printed at the end), BACKING_FS (tmpfs, the default, or ext4 on a loop
# image), CSAP (the binary).
set -euo pipefail
[ $# = 1 ] || { echo "usage: $0 SRC_DIR (with SRC_DIR/pjdfstest and SRC_DIR/xfstests)" >&2; exit 2; }
src=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."

SYSTEMS=${SYSTEMS:-csap-direct csap-page gocryptfs}
FSX_OPS=${FSX_OPS:-1000000}
FSX_SEEDS=${FSX_SEEDS:-1}
FSX_SYSTEMS=${FSX_SYSTEMS:-csap-direct csap-page}
BACKING_FS=${BACKING_FS:-tmpfs}
CSAP=${CSAP:-$PWD/target/release/csap}
[ "$(id -u)" = 0 ] || { echo "run as root (pjdfstest changes owners; tmpfs mounts)" >&2; exit 1; }
[ -x "$CSAP" ] || { echo "build first: cargo build --release -p cli" >&2; exit 1; }
[ -f "$src/pjdfstest/pjdfstest.c" ] || { echo "no pjdfstest source tree at $src/pjdfstest" >&2; exit 1; }
[ -f "$src/xfstests/ltp/fsx.c" ] || { echo "no xfstests source tree at $src/xfstests" >&2; exit 1; }
for tool in autoreconf gcc make prove gocryptfs fusermount3; do
  command -v "$tool" >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq autoconf automake gcc make perl gocryptfs fuse3
    break
  }
done

work=$(mktemp -d /tmp/csap-posix.XXXXXX)
LOGS=${LOGS:-$work/logs}
mkdir -p "$LOGS" "$work/build" "$work/store"
case $BACKING_FS in
  tmpfs) mount -t tmpfs -o size=4g csap-posix "$work/store" ;;
  ext4) truncate -s 4G "$work/ext4.img"; mkfs.ext4 -q -F "$work/ext4.img"; mount -o loop "$work/ext4.img" "$work/store" ;;
  *) echo "BACKING_FS is tmpfs or ext4, not $BACKING_FS" >&2; exit 2 ;;
esac
mounted=""
cleanup() {
  cd /
  [ -n "$mounted" ] && { fusermount3 -u "$mounted" 2>/dev/null || umount -l "$mounted" 2>/dev/null || true; }
  sleep 0.5
  umount -l "$work/store" 2>/dev/null || true
  rm -rf "$work/build" "$work/ext4.img" "$work/key" "$work/pw" "$work"/fsxlog-*
}
trap cleanup EXIT

# --- build -------------------------------------------------------------------------------
build_pjdfstest() {
  cp -r "$src/pjdfstest" "$work/build/pjdfstest"
  (cd "$work/build/pjdfstest" && autoreconf -ifs && ./configure && make pjdfstest) \
    > "$LOGS/build-pjdfstest.log" 2>&1 || { echo "pjdfstest build failed: $LOGS/build-pjdfstest.log" >&2; exit 1; }
}
build_fsx() { # fsx alone, without xfstests' configure: the few HAVE_ macros its headers ask for
  mkdir -p "$work/build/fsx"
  local h
  for h in SYS_TYPES_H SYS_STAT_H SYS_STATVFS_H SYS_TIME_H SYS_IOCTL_H SYS_WAIT_H MALLOC_H \
           DIRENT_H STDLIB_H UNISTD_H ERRNO_H STRING_H SYS_FCNTL_H TIME_H SYS_PARAM_H LIBGEN_H \
           ASSERT_H STRINGS_H ERR_H SYS_MMAN_H LINUX_FALLOC_H COPY_FILE_RANGE; do
    echo "#define HAVE_$h 1"
  done > "$work/build/fsx/config.h" # without the last two, fsx skips fallocate and copy_file_range
  echo "#define STDC_HEADERS 1" >> "$work/build/fsx/config.h"
  gcc -O2 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -include getopt.h -I"$work/build/fsx" \
    -I"$src/xfstests/include" -I"$src/xfstests/src" -o "$work/build/fsx/fsx" "$src/xfstests/ltp/fsx.c" \
    > "$LOGS/build-fsx.log" 2>&1 || { echo "fsx build failed: $LOGS/build-fsx.log" >&2; exit 1; }
}
build_pjdfstest
build_fsx
tests=$work/build/pjdfstest/tests
fsx=$work/build/fsx/fsx

# --- test groups -------------------------------------------------------------------------
# A file is multi-user when it runs a call as another user or group.
(cd "$tests" && find . -name '*.t' ! -path './chown/*' | sort) > "$work/all"
(cd "$tests" && grep -l -E ' -[ug] ' $(cat "$work/all")) > "$work/multiuser" || true
grep -v -x -F -f "$work/multiuser" "$work/all" > "$work/core"
(cd "$tests" && find ./chown -name '*.t' | sort) > "$work/ownership"

# --- mounts ------------------------------------------------------------------------------
wait_mounted() { for _ in $(seq 100); do mountpoint -q "$1" && return 0; sleep 0.1; done; echo "mount $1 failed" >&2; exit 1; }
mount_system() { # system extra-option → mounts $work/mnt over a fresh backing store
  local system=$1 extra=$2 back=$work/store/$1
  rm -rf "$back"; mkdir -p "$back" "$work/mnt"
  case $system in
    csap-direct|csap-page)
      head -c 32 /dev/urandom > "$work/key"
      "$CSAP" mount "$back" "$work/mnt" --key-file "$work/key" --cache "${system#csap-}" \
        ${extra:+-o "$extra"} --daemon >> "$LOGS/mounts.log" 2>&1 ;;
    gocryptfs)
      echo posix-suites-password > "$work/pw"
      gocryptfs -init -q -passfile "$work/pw" "$back" >/dev/null 2>&1
      gocryptfs -q -passfile "$work/pw" ${extra:+-$extra} "$back" "$work/mnt" >> "$LOGS/mounts.log" 2>&1 ;;
    *) echo "unknown system $system" >&2; exit 2 ;;
  esac
  wait_mounted "$work/mnt"
  mounted=$work/mnt
}
unmount_system() {
  cd /
  case $1 in
    csap-*) "$CSAP" umount "$work/mnt" ;;
    *) fusermount3 -u "$work/mnt" ;;
  esac
  mounted=""
}

# --- runs --------------------------------------------------------------------------------
declare -A result
run_pjdfstest() { # system group mount-option
  local system=$1 group=$2 log=$LOGS/pjdfstest-$1-$2.log
  mount_system "$system" "$3"
  mkdir -p "$work/mnt/run" && cd "$work/mnt/run"
  prove -r $(sed "s|^\.|$tests|" "$work/$group") > "$log" 2>&1 || true
  unmount_system "$system"
  local files tests_n failed_files failed_tests
  files=$(sed -n 's/^Files=\([0-9]*\), Tests=\([0-9]*\).*/\1/p' "$log")
  tests_n=$(sed -n 's/^Files=\([0-9]*\), Tests=\([0-9]*\).*/\2/p' "$log")
  # Test Summary Report lines: "FILE (Wstat: W Tests: N Failed: F)". A file fails when it has
  # failed tests or exited non-zero (died before its plan); one listed only for TODO passes does not.
  read -r failed_files failed_tests < <(awk '
    match($0, /\(Wstat: [0-9]+ Tests: [0-9]+ Failed: [0-9]+\)/) {
      split(substr($0, RSTART + 1, RLENGTH - 2), f, /[: ]+/)
      if (f[2] != 0 || f[6] != 0) { files++; tests += f[6] }
    }
    END { print files + 0, tests + 0 }' "$log")
  result[$system,$group]="$failed_files / ${files:-?} files fail, $failed_tests / ${tests_n:-?} tests"
}
run_fsx() { # system seed
  local system=$1 seed=$2 log=$LOGS/fsx-$1-seed$2.log
  mount_system "$system" ""
  mkdir -p "$work/fsxlog-$system-$seed"
  if "$fsx" -p 50000 -N "$FSX_OPS" -S "$seed" -c 50 -f -P "$work/fsxlog-$system-$seed" "$work/mnt/fsx.$seed" > "$log" 2>&1; then
    result[$system,fsx,$seed]=pass
  else
    result[$system,fsx,$seed]=FAIL
    cp "$work/fsxlog-$system-$seed"/* "$LOGS/" 2>/dev/null || true
  fi
  unmount_system "$system"
}

for system in $SYSTEMS; do
  run_pjdfstest "$system" core ""
  run_pjdfstest "$system" ownership allow_other
  run_pjdfstest "$system" multiuser allow_other
  case " $FSX_SYSTEMS " in
    *" $system "*) for seed in $FSX_SEEDS; do run_fsx "$system" "$seed"; done ;;
  esac
done

# --- table -------------------------------------------------------------------------------
printf '| suite |'; for s in $SYSTEMS; do printf ' %s |' "$s"; done; echo
printf '|---|'; for _ in $SYSTEMS; do printf -- '---|'; done; echo
for group in core ownership multiuser; do
  label="pjdfstest $group"; [ $group = core ] || label="pjdfstest $group (-o allow_other)"
  printf '| %s |' "$label"; for s in $SYSTEMS; do printf ' %s |' "${result[$s,$group]}"; done; echo
done
for seed in $FSX_SEEDS; do
  printf '| fsx -N %s -S %s -c 50 -f |' "$FSX_OPS" "$seed"
  for s in $SYSTEMS; do printf ' %s |' "${result[$s,fsx,$seed]:-not run}"; done; echo
done
echo "logs: $LOGS"
