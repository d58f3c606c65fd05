#!/usr/bin/env bash
# Side-by-side benchmark: `composer compose` against the loop-mount + cp + ln method
# (what Flatcar's bake_flatcar_image.sh does, and what needs root), in the same run.
#
# Fixture (built once into $BENCH_WORK): an 8 GiB sparse disk with Flatcar's partition table
# at its current sizes (alpha-4487+: ESP 1 GiB, USR-A/B 2 GiB, OEM 1 GiB, ROOT the rest, ext4)
# whose USR-A holds 600 MiB of incompressible data (a real image carries ~0.5-1 GiB), and three
# squashfs extensions of the sizes bakery produces (kubernetes 45 MiB, containerd 30 MiB,
# cni 20 MiB; random payload, real extension-release files).
#
# Both methods start from the same input and produce a new output file next to it:
#   composer:  composer compose --image base.img --out out.img -e … (no root)
#   reference: cp --sparse=always base.img out.img; mount -o loop,offset=…,sizelimit=… ROOT;
#              mkdir -p + cp + ln -s for each extension; umount
# and both end with `sync out.img`, so the data is on disk in both cases. Page caches are
# dropped before every run; the order alternates each round. Prints medians over BENCH_RUNS
# rounds (default 5). Needs root (loop mount, drop_caches). Usage: bash bench/compose.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$PWD
RUNS=${BENCH_RUNS:-5}
W=${BENCH_WORK:-$ROOT/bench/work/compose}
[ "$(id -u)" = 0 ] || { echo "bench/compose.sh needs root (loop mounts, drop_caches)" >&2; exit 1; }
for t in sfdisk mkfs.ext4 mkfs.vfat mksquashfs debugfs e2fsck; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install fdisk e2fsprogs dosfstools squashfs-tools)" >&2; exit 1; }
done

cargo build --release -p composer --quiet
COMPOSER=$ROOT/target/release/composer
mkdir -p "$W"
MIB=$((1024 * 1024))

# --- fixture ------------------------------------------------------------------------------
BASE=$W/flatcar-8g.img
ROOT_START=$((1 + 1024 + 2 + 2048 + 2048 + 1024 + 64))   # MiB
ROOT_MIB=$((8192 - ROOT_START - 1))
if [ ! -s "$BASE" ]; then
  rm -f "$BASE"; truncate -s 8G "$BASE"
  s() { echo $(($1 * MIB / 512)); }
  sfdisk --quiet "$BASE" <<SF
label: gpt
${BASE}1 : start=$(s 1), size=$(s 1024), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI-SYSTEM"
${BASE}2 : start=$(s 1025), size=$(s 2), type=21686148-6449-6E6F-744E-656564454649, name="BIOS-BOOT"
${BASE}3 : start=$(s 1027), size=$(s 2048), type=5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6, name="USR-A", uuid=7130C94A-213A-4E5A-8E26-6CCE9662F132
${BASE}4 : start=$(s 3075), size=$(s 2048), type=5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6, name="USR-B", uuid=E03DD35C-7C2D-4A47-B3FE-27F15780A57C
${BASE}6 : start=$(s 5123), size=$(s 1024), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="OEM"
${BASE}7 : start=$(s 6147), size=$(s 64), type=C95DC21A-DF0E-4340-8D7B-26CBFA9A03E0, name="OEM-CONFIG"
${BASE}9 : start=$(s $ROOT_START), size=$(s $ROOT_MIB), type=3884DD41-8582-4404-B9A8-E9B84F2DF50E, name="ROOT"
SF
  mkfs.vfat -n EFI-SYSTEM --offset $((1 * MIB / 512)) "$BASE" $((1024 * 1024)) >/dev/null
  USR=$W/usr-tree; rm -rf "$USR"; mkdir -p "$USR/lib/systemd" "$USR/share"
  printf 'ID=flatcar\nID_LIKE=coreos\nVERSION_ID=4152.2.0\nSYSEXT_LEVEL=1.0\n' > "$USR/lib/os-release"
  cp /bin/true "$USR/lib/systemd/systemd"
  head -c $((600 * MIB)) /dev/urandom > "$USR/share/payload"
  mkfs.ext2 -q -F -L USR-A -d "$USR" -E offset=$((1027 * MIB)) "$BASE" 2048M
  ROOTTREE=$W/root-tree; rm -rf "$ROOTTREE"; mkdir -p "$ROOTTREE/etc" "$ROOTTREE/var/lib"
  ln -s ../usr/lib/os-release "$ROOTTREE/etc/os-release"
  mkfs.ext4 -q -F -L ROOT -d "$ROOTTREE" -E offset=$((ROOT_START * MIB)) "$BASE" "${ROOT_MIB}M"
  rm -rf "$USR" "$ROOTTREE"
fi
EXTS=()
for spec in kubernetes:v1.31.3:45 containerd:2.0.4:30 cni:v1.6.2:20; do
  IFS=: read -r name ver mib <<<"$spec"
  img=$W/$name-$ver-x86-64.raw
  EXTS+=("$img")
  [ -s "$img" ] && continue
  t=$W/tree-$name; rm -rf "$t"; mkdir -p "$t/usr/lib/extension-release.d" "$t/usr/bin"
  printf 'ID=_any\nARCHITECTURE=x86-64\nSYSEXT_ID=%s\nSYSEXT_VERSION_ID=%s\n' "$name" "$ver" \
    > "$t/usr/lib/extension-release.d/extension-release.$name"
  head -c $((mib * MIB)) /dev/urandom > "$t/usr/bin/$name-payload"
  mksquashfs "$t" "$img" -all-root -noappend -quiet -comp zstd >/dev/null
  rm -rf "$t"
done
DATA_MIB=$(( $(du -k "$BASE" | cut -f1) / 1024 ))
EXT_MIB=$(( $(du -ck "${EXTS[@]}" | tail -1 | cut -f1) / 1024 ))

# --- methods ------------------------------------------------------------------------------
OUT=$W/out.img
MNT=$W/mnt
cleanup() { mountpoint -q "$MNT" && umount "$MNT"; rm -f "$OUT"; }
trap cleanup EXIT

run_composer() {
  local args=()
  for e in "${EXTS[@]}"; do args+=(-e "$e"); done
  "$COMPOSER" compose --image "$BASE" --out "$OUT" "${args[@]}" >/dev/null 2>"$W/composer.err" \
    || { cat "$W/composer.err" >&2; exit 1; }
  sync "$OUT"
}

run_reference() {
  cp --sparse=always "$BASE" "$OUT"
  mkdir -p "$MNT"
  mount -o loop,offset=$((ROOT_START * MIB)),sizelimit=$((ROOT_MIB * MIB)) "$OUT" "$MNT"
  mkdir -p "$MNT/etc/extensions"
  for e in "${EXTS[@]}"; do
    f=$(basename "$e"); n=${f%%-*}
    mkdir -p "$MNT/opt/extensions/$n"
    cp "$e" "$MNT/opt/extensions/$n/$f"
    ln -sf "/opt/extensions/$n/$f" "$MNT/etc/extensions/$n.raw"
  done
  umount "$MNT"
  sync "$OUT"
}

timed() {
  rm -f "$OUT"; sync; echo 3 > /proc/sys/vm/drop_caches
  local t0 t1
  t0=$(date +%s.%N); "$1"; t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}


: > "$W/composer.times"; : > "$W/reference.times"
for i in $(seq "$RUNS"); do
  if [ $((i % 2)) = 1 ]; then order="composer reference"; else order="reference composer"; fi
  for m in $order; do timed "run_$m" >> "$W/$m.times"; done
done
# Sanity: the composer output really has the links (read back with debugfs).
rm -f "$OUT"; run_composer
debugfs -R "ls -p /etc/extensions" "$OUT?offset=$((ROOT_START * MIB))" 2>/dev/null | grep -c '\.raw/' \
  | grep -qx 3 || { echo "composer output is missing links" >&2; exit 1; }
rm -f "$OUT"

C=$(median < "$W/composer.times"); R=$(median < "$W/reference.times")
printf 'fixture: 8 GiB sparse Flatcar-layout disk, %s MiB allocated; extensions %s MiB\n' "$DATA_MIB" "$EXT_MIB"
printf '%-44s %8s\n' method "wall s"
printf '%-44s %8.2f\n' "composer compose (debugfs, no root)" "$C"
printf '%-44s %8.2f\n' "reference (cp + loop mount + cp + ln, root)" "$R"
printf 'ratio composer/reference: %.2fx (target <= 1.0x); %s rounds, medians\n' "$(awk -v c="$C" -v r="$R" 'BEGIN { print c / r }')" "$RUNS"
printf 'composer runs: %s\nreference runs: %s\n' "$(tr '\n' ' ' < "$W/composer.times")" "$(tr '\n' ' ' < "$W/reference.times")"
