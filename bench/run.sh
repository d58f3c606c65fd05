#!/usr/bin/env bash
# Side-by-side benchmark: `bakery create kubernetes` against the reference pipeline Flatcar's
# sysext-bakery uses (curl + sha256sum + mksquashfs -all-root -noappend), both fetching the
# same ~160 MiB of real Go binaries from a loopback nginx mirror in dl.k8s.io's layout.
# Also shown for context: mksquashfs with zstd and gensquashfs (libsquashfs).
#
# Prints medians over BENCH_RUNS runs (default 5): wall time, image size, peak RSS, and cold
# read throughput of each image (loop mount, drop caches, read every file). Needs root
# (drop_caches, loop mounts) and the network only for apt. Usage: bash bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${BENCH_RUNS:-5}
W=${BENCH_WORK:-$ROOT/bench/work}
PORT=${BENCH_PORT:-18123}
VERSION=v1.31.3

[ "$(id -u)" = 0 ] || { echo "bench/run.sh needs root (drop_caches, loop mounts)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_packages bench/run.sh nginx:nginx curl:curl time:/usr/bin/time squashfs-tools:mksquashfs squashfs-tools-ng:gensquashfs

cargo build --release -p bakery --quiet
BAKERY=$ROOT/target/release/bakery

mkdir -p "$W"
# --- corpus: real Go binaries from Debian packages, renamed into the kubelet layout ---------
MIRROR=$W/mirror
BIN=$MIRROR/$VERSION/bin/linux/amd64
if [ ! -s "$BIN/kubectl.sha256" ]; then
  mkdir -p "$W/debs" "$BIN"
  (cd "$W/debs" && apt-get download containerd docker.io >/dev/null && for d in *.deb; do dpkg-deb -x "$d" x; done)
  cp "$W/debs/x/usr/sbin/dockerd" "$BIN/kubelet"
  cp "$W/debs/x/usr/bin/containerd" "$BIN/kubeadm"
  cp "$W/debs/x/usr/bin/docker" "$BIN/kubectl"
  for f in kubelet kubeadm kubectl; do sha256sum "$BIN/$f" | cut -d' ' -f1 | tr -d '\n' > "$BIN/$f.sha256"; done
fi
CORPUS_MIB=$(du -cm "$BIN"/kubelet "$BIN"/kubeadm "$BIN"/kubectl | tail -1 | cut -f1)

# --- loopback mirror ---------------------------------------------------------------------
start_mirror_nginx "$W" "$PORT" "$MIRROR"
MNT=$W/mnt
cleanup() { mountpoint -q "$MNT" && umount "$MNT"; kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$PORT/$VERSION/bin/linux/amd64/kubelet.sha256" >/dev/null 2>&1 && break; sleep 0.1; done

UNITS=$ROOT/extensions/kubernetes/files

# Each pipeline runs from an empty cache and an empty output directory, so every run
# downloads, verifies and compresses everything.
run_bakery() {
  rm -rf "$W/b" && mkdir -p "$W/b"
  "$BAKERY" create kubernetes "$VERSION" --arch x86-64 --mirror "http://127.0.0.1:$PORT" \
    --cache "$W/b/cache" --output "$W/b/out" >/dev/null 2>&1
  echo "$W/b/out/kubernetes-$VERSION-x86-64.raw"
}

reference_fetch() { # $1 = work dir: curl + sha256sum -c, then lay out the tree
  local d=$1 base="http://127.0.0.1:$PORT/$VERSION/bin/linux/amd64"
  mkdir -p "$d/dl" "$d/tree/usr/bin" "$d/tree/usr/lib/extension-release.d"
  for f in kubelet kubeadm kubectl; do
    curl -fsSLo "$d/dl/$f" "$base/$f"
    curl -fsSLo "$d/dl/$f.sha256" "$base/$f.sha256"
    (cd "$d/dl" && echo "$(cat "$f.sha256")  $f" | sha256sum -c --quiet)
    install -m 0755 "$d/dl/$f" "$d/tree/usr/bin/$f"
  done
  cp -r "$UNITS/usr" "$d/tree/"
  printf 'ID=_any\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n' > "$d/tree/usr/lib/extension-release.d/extension-release.kubernetes"
}
run_reference() {
  rm -rf "$W/r" && mkdir -p "$W/r"
  reference_fetch "$W/r"
  mksquashfs "$W/r/tree" "$W/r/ref.raw" -all-root -noappend -quiet -no-progress >/dev/null
  echo "$W/r/ref.raw"
}
run_mksquashfs_zstd() {
  rm -rf "$W/z" && mkdir -p "$W/z"
  reference_fetch "$W/z"
  mksquashfs "$W/z/tree" "$W/z/zstd.raw" -all-root -noappend -comp zstd -quiet -no-progress >/dev/null
  echo "$W/z/zstd.raw"
}
run_gensquashfs() {
  rm -rf "$W/g" && mkdir -p "$W/g"
  reference_fetch "$W/g"
  gensquashfs --pack-dir "$W/g/tree" --defaults uid=0,gid=0,mode=0755,mtime=0 --compressor zstd \
    --num-jobs "$(nproc)" --quiet "$W/g/gen.raw" >/dev/null
  echo "$W/g/gen.raw"
}

cold_read_mibs() { # $1 image: loop mount, drop caches, read every file; prints MiB/s
  mkdir -p "$MNT"
  mount -t squashfs -o loop,ro "$1" "$MNT"
  sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1 bytes
  bytes=$(find "$MNT" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
  t0=$(date +%s.%N)
  find "$MNT" -type f -exec cat {} + > /dev/null
  t1=$(date +%s.%N)
  umount "$MNT"
  awk -v b="$bytes" -v a="$t0" -v z="$t1" 'BEGIN { printf "%.0f", b / 1048576 / (z - a) }'
}

measure() { # $1 = function; prints "wall_s rss_kib size_bytes read_mibs"
  local out img
  out=$( { /usr/bin/time -f '%e %M' bash -c "$(declare -f "$1" reference_fetch); W='$W' PORT='$PORT' VERSION='$VERSION' BAKERY='$BAKERY' UNITS='$UNITS' $1" > "$W/last-image"; } 2>&1 | tail -1 )
  img=$(cat "$W/last-image")
  echo "$out $(stat -c %s "$img") $(cold_read_mibs "$img")"
}

TOOLS=(run_bakery run_reference run_mksquashfs_zstd run_gensquashfs)
declare -A RESULTS
for i in $(seq "$RUNS"); do
  # Alternate the order so neither side always runs on a warmer machine.
  order=("${TOOLS[@]}"); [ $((i % 2)) = 0 ] && order=(run_reference run_gensquashfs run_mksquashfs_zstd run_bakery)
  for t in "${order[@]}"; do
    RESULTS[$t]+="$(measure "$t")"$'\n'
    echo "run $i/$RUNS $t: $(echo "${RESULTS[$t]}" | grep -v '^$' | tail -1)" >&2
  done
done

col() { echo "${RESULTS[$1]}" | grep -v '^$' | awk -v c="$2" '{print $c}' | median; }

printf '\nkubernetes %s from a loopback mirror, %s MiB of Go binaries, %s runs, %s cores (medians)\n\n' "$VERSION" "$CORPUS_MIB" "$RUNS" "$(nproc)"
printf '| pipeline | wall s | image MiB | peak RSS MiB | cold read MiB/s |\n|---|---:|---:|---:|---:|\n'
for t in "${TOOLS[@]}"; do
  awk -v n="$t" -v w="$(col "$t" 1)" -v r="$(col "$t" 2)" -v s="$(col "$t" 3)" -v m="$(col "$t" 4)" \
    'BEGIN { printf "| %s | %.2f | %.1f | %.1f | %.0f |\n", n, w, s/1048576, r/1024, m }'
done
awk -v bw="$(col run_bakery 1)" -v rw="$(col run_reference 1)" -v bs="$(col run_bakery 3)" -v rs="$(col run_reference 3)" \
  -v br="$(col run_bakery 2)" 'BEGIN {
    printf "\nbakery / reference: wall %.2fx (target <= 0.5x), size %.2fx (target <= 0.9x); bakery peak RSS %.1f MiB (target <= 64)\n", bw/rw, bs/rs, br/1024 }'
