#!/usr/bin/env bash
# The compression frontier of `bakery create kubernetes` on real Kubernetes-built Go binaries,
# side by side with the Flatcar sysext-bakery pipeline in one run.
#
# Corpus: this machine's kubectl builds (Google Cloud SDK's kubectl.1.33, .1.32, .1.31, built
# by the Kubernetes release tooling) laid out as kubelet, kubeadm and kubectl of v1.31.3 in
# dl.k8s.io's layout (with .sha256 files) and served by a loopback nginx.
#
# Flatcar pipeline (sysext-bakery's kubernetes.sysext + lib/generate.sh): `curl --parallel`
# the three binaries and their .sha256, `shasum -a 256 --check` each, lay out the tree (same
# units, extension-release and symlink as bakery's), then with SOURCE_DATE_EPOCH=0
# `mksquashfs TREE IMAGE -all-root -noappend` (plus `-xattrs-exclude ^btrfs.` on mksquashfs
# >= 4.6.1, as generate.sh does), then `sha256sum IMAGE > SHA256SUMS`.
#
# bakery: `bakery create kubernetes v1.31.3 --arch x86-64 --mirror http://127.0.0.1:PORT` with
# an empty cache and output each run, once per setting (BENCH_SETTINGS, one `bakery create`
# argument list per line, `defaults` for none; the default list covers both of bakery's tuned
# zstd levels (10, the default, and 16), stock zstd levels, a smaller block size and lz4;
# add e.g. `--compression xz` or `--level 19` for the slow end, at 3-6x Flatcar's time each).
#
# Runs interleave: Flatcar, BENCH_GROUP settings (default 3), Flatcar, the next settings, ...,
# Flatcar, round after round (settings in reverse order every other round), and a setting's
# ratio in a round is taken against the mean of the Flatcar runs just before and after its
# group, so load drift on a shared machine cancels out. Prints, per setting, medians over BENCH_RUNS rounds (default 3) of
# wall time, CPU time (user + sys), peak RSS, image size, and the ratios to Flatcar with
# their min-max spread. Every image is loop-mounted once and its binaries compared with the
# corpus. Needs root (apt for missing tools, loop mounts). Usage: bash bench/frontier.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${BENCH_RUNS:-3}
GROUP=${BENCH_GROUP:-3}
W=${BENCH_WORK:-$ROOT/bench/work/frontier}
PORT=${BENCH_PORT:-18124}
KUBECTLS=${BENCH_KUBECTLS:-/usr/lib/google-cloud-sdk/bin}
VERSION=v1.31.3
DEFAULT_SETTINGS='
defaults
--level 16
--level 12
--level 9
--level 10 --block-size 128K
--compression lz4'
SETTINGS=${BENCH_SETTINGS:-$DEFAULT_SETTINGS}

[ "$(id -u)" = 0 ] || { echo "bench/frontier.sh needs root (loop mounts, apt)" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_packages bench/frontier.sh nginx:nginx curl:curl time:/usr/bin/time squashfs-tools:mksquashfs perl:shasum

cargo build --release -p bakery --quiet
BAKERY=$ROOT/target/release/bakery
mkdir -p "$W"

# --- corpus: real Kubernetes-built Go binaries in dl.k8s.io's layout -----------------------
MIRROR=$W/mirror
BIN=$MIRROR/$VERSION/bin/linux/amd64
declare -A SOURCE=([kubelet]=kubectl.1.33 [kubeadm]=kubectl.1.32 [kubectl]=kubectl.1.31)
for f in kubelet kubeadm kubectl; do
  [ -x "$KUBECTLS/${SOURCE[$f]}" ] || { echo "bench/frontier.sh: $KUBECTLS/${SOURCE[$f]} missing; set BENCH_KUBECTLS" >&2; exit 1; }
done
if [ ! -s "$BIN/kubectl.sha256" ]; then
  mkdir -p "$BIN"
  for f in kubelet kubeadm kubectl; do
    cp "$KUBECTLS/${SOURCE[$f]}" "$BIN/$f"
    sha256sum "$BIN/$f" | cut -d' ' -f1 | tr -d '\n' > "$BIN/$f.sha256"
  done
fi
CORPUS_BYTES=$(cat "$BIN"/kubelet "$BIN"/kubeadm "$BIN"/kubectl | wc -c)

# --- loopback mirror -----------------------------------------------------------------------
start_mirror_nginx "$W" "$PORT" "$MIRROR"
MNT=$W/mnt
cleanup() {
  if mountpoint -q "$MNT"; then umount "$MNT"; fi
  kill "$NGINX_PID" 2>/dev/null || true
  wait "$NGINX_PID" 2>/dev/null || true
}
trap cleanup EXIT
BASE=http://127.0.0.1:$PORT
for _ in $(seq 50); do curl -fsS "$BASE/$VERSION/bin/linux/amd64/kubelet.sha256" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS -o /dev/null "$BASE/$VERSION/bin/linux/amd64/kubelet.sha256"

UNITS=$ROOT/extensions/kubernetes/files
MKSQUASHFS_VERSION=$({ mksquashfs -version || true; } | head -n1 | cut -d' ' -f3)

# --- the pipelines: each prints the image it wrote -----------------------------------------
flatcar() {
  local d=$W/flatcar u=$BASE/$VERSION/bin/linux/amd64
  rm -rf "$d" && mkdir -p "$d/tree/usr/bin" && cd "$d"
  curl --parallel --fail --silent --show-error --location 2>curl.err \
    --output tree/usr/bin/kubectl "$u/kubectl" --output kubectl.sha256 "$u/kubectl.sha256" \
    --output tree/usr/bin/kubeadm "$u/kubeadm" --output kubeadm.sha256 "$u/kubeadm.sha256" \
    --output tree/usr/bin/kubelet "$u/kubelet" --output kubelet.sha256 "$u/kubelet.sha256" \
    || { cat curl.err >&2; return 1; }
  for b in kubectl kubeadm kubelet; do
    echo "$(cat "$b.sha256")  tree/usr/bin/$b" | shasum -a 256 --check >/dev/null
  done
  chmod +x tree/usr/bin/*
  cp -r "$UNITS/usr" tree/
  mkdir -p tree/usr/libexec/kubernetes tree/usr/lib/extension-release.d
  ln -s /var/kubernetes/kubelet-plugins tree/usr/libexec/kubernetes/kubelet-plugins
  printf 'ID=_any\nARCHITECTURE=x86-64\nEXTENSION_RELOAD_MANAGER=1\n' \
    > tree/usr/lib/extension-release.d/extension-release.kubernetes
  local args=(-all-root -noappend) version
  version=$({ mksquashfs -version || true; } | head -n1 | cut -d' ' -f3)
  if [ "$(printf '%s\n' "$version" 4.6.1 | sort -V | head -n1)" = 4.6.1 ]; then
    args+=(-xattrs-exclude '^btrfs.')
  fi
  SOURCE_DATE_EPOCH=0 mksquashfs tree kubernetes.raw "${args[@]}" -quiet -no-progress >/dev/null
  sha256sum kubernetes.raw > SHA256SUMS.kubernetes
  echo "$d/kubernetes.raw"
}
bakery() { # $@ = settings
  local d=$W/bakery
  rm -rf "$d" && mkdir -p "$d"
  "$BAKERY" create kubernetes "$VERSION" --arch x86-64 --mirror "$BASE" --cache "$d/cache" \
    --output "$d/out" "$@" >/dev/null 2>"$d/err" || { cat "$d/err" >&2; return 1; }
  echo "$d/out/kubernetes-$VERSION-x86-64.raw"
}

# Runs one pipeline under /usr/bin/time; appends "wall cpu rss_kib size" to $W/$2.runs.
measure() { # $1 = label for messages, $2 = result key, $3... = command
  local label=$1 key=$2 t img
  shift 2
  t=$W/time.out
  img=$( (cd "$W" && /usr/bin/time -o "$t" -f '%e %U %S %M' "$@") )
  read -r wall user sys rss < "$t"
  local row
  row="$wall $(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }') $rss $(stat -c %s "$img")"
  echo "$row" >> "$W/$key.runs"
  LAST_IMAGE=$img
  awk -v l="$label" -v r="$row" 'BEGIN { split(r, R, " ")
    printf "  %-42s wall %7.2f s  cpu %7.2f s  %6.1f MiB\n", l, R[1], R[2], R[4] / 1048576 }' | tee -a "$W/log" >&2
}
export -f flatcar bakery
export W BASE VERSION BAKERY UNITS

# The kernel reads every image, and it holds the corpus' binaries bit for bit.
check_image() { # $1 image
  mkdir -p "$MNT"
  mount -t squashfs -o loop,ro "$1" "$MNT"
  for f in kubelet kubeadm kubectl; do
    cmp -s "$MNT/usr/bin/$f" "$BIN/$f" || { umount "$MNT"; echo "bench/frontier.sh: $1: usr/bin/$f differs from the corpus" >&2; exit 1; }
  done
  umount "$MNT"
}

mapfile -t SET < <(printf '%s\n' "$SETTINGS" | sed '/^[[:space:]]*$/d')
key_of() { echo "s$1"; }
rm -f "$W"/*.runs "$W"/ratios-* "$W/log"
echo "corpus: $((CORPUS_BYTES / 1048576)) MiB (kubelet=${SOURCE[kubelet]} kubeadm=${SOURCE[kubeadm]} kubectl=${SOURCE[kubectl]}); $RUNS rounds, $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "Flatcar: mksquashfs $MKSQUASHFS_VERSION" >&2
checked=()
run_flatcar() {
  measure "Flatcar (curl + shasum + mksquashfs)" flatcar bash -c flatcar
  F_LAST=$(tail -1 "$W/flatcar.runs" | cut -d' ' -f1,2)
}
run_flatcar
check_image "$LAST_IMAGE"
for round in $(seq "$RUNS"); do
  echo "round $round/$RUNS (load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$W/log" >&2
  mapfile -t idx < <(seq 0 $((${#SET[@]} - 1)))
  [ $((round % 2)) = 0 ] && mapfile -t idx < <(seq $((${#SET[@]} - 1)) -1 0)
  for ((g = 0; g < ${#idx[@]}; g += GROUP)); do
    before=$F_LAST
    group=("${idx[@]:g:GROUP}")
    for i in "${group[@]}"; do
      measure "bakery ${SET[$i]}" "$(key_of "$i")" bash -c "bakery ${SET[$i]#defaults}"
      [ -n "${checked[$i]:-}" ] || { check_image "$LAST_IMAGE"; checked[i]=1; }
    done
    run_flatcar
    # wall and CPU ratios against the mean of the Flatcar runs just before and after the group
    for i in "${group[@]}"; do
      awk -v b="$before" -v a="$F_LAST" -v s="$(tail -1 "$W/$(key_of "$i").runs")" 'BEGIN {
        split(b, B, " "); split(a, A, " "); split(s, S, " ")
        printf "%.4f %.4f\n", S[1] / ((B[1] + A[1]) / 2), S[2] / ((B[2] + A[2]) / 2) }' >> "$W/ratios-$i"
    done
  done
done

col() { awk -v c="$2" '{ print $c }' "$1" | median; }
range() { awk -v c="$2" '{ print $c }' "$1" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'; }
F_WALL=$(col "$W/flatcar.runs" 1); F_CPU=$(col "$W/flatcar.runs" 2); F_RSS=$(col "$W/flatcar.runs" 3); F_SIZE=$(col "$W/flatcar.runs" 4)

printf '\nkubernetes %s: %.1f MiB of Kubernetes-built Go binaries; %s rounds, %s cores, load %s; medians (ratio spread min-max)\n\n' \
  "$VERSION" "$(awk -v b="$CORPUS_BYTES" 'BEGIN { print b / 1048576 }')" "$RUNS" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '| pipeline / bakery setting | wall s | CPU s | image MiB | peak RSS MiB | wall × Flatcar | CPU × Flatcar | size × Flatcar |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
awk -v w="$F_WALL" -v c="$F_CPU" -v s="$F_SIZE" -v r="$F_RSS" -v n="$(wc -l < "$W/flatcar.runs")" \
  'BEGIN { printf "| Flatcar: curl + shasum + mksquashfs -all-root -noappend (%d runs) | %.2f | %.2f | %.1f | %.0f | 1 | 1 | 1 |\n", n, w, c, s / 1048576, r / 1024 }'
for i in "${!SET[@]}"; do
  k=$W/$(key_of "$i").runs
  awk -v name="${SET[$i]}" -v w="$(col "$k" 1)" -v c="$(col "$k" 2)" -v r="$(col "$k" 3)" -v s="$(col "$k" 4)" \
    -v fs="$F_SIZE" -v rw="$(col "$W/ratios-$i" 1)" -v rc="$(col "$W/ratios-$i" 2)" \
    -v sw="$(range "$W/ratios-$i" 1)" -v sc="$(range "$W/ratios-$i" 2)" \
    'BEGIN { printf "| bakery `%s` | %.2f | %.2f | %.1f | %.0f | %.2f (%s) | %.2f (%s) | %.3f |\n", name, w, c, s / 1048576, r / 1024, rw, sw, rc, sc, s / fs }'
done
printf '\nmeeting <= 0.5x wall and <= 0.85x size:'
met=0
for i in "${!SET[@]}"; do
  if awk -v rw="$(col "$W/ratios-$i" 1)" -v s="$(col "$W/$(key_of "$i").runs" 4)" -v fs="$F_SIZE" 'BEGIN { exit !(rw <= 0.5 && s / fs <= 0.85) }'; then
    printf ' "%s"' "${SET[$i]}"; met=1
  fi
done
[ "$met" = 1 ] || printf ' none'
printf '\n'
