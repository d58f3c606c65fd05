#!/usr/bin/env bash
# Time from "new version published" to "kubelet restarted on the new version" on a scratch
# node, and what each upgrade costs the node in downloads and disk.
#
# The node: the running system's paths in a private mount namespace (a tmpfs /run, /opt and
# /var/lib, an overlay over /etc, an Ubuntu os-release), where the merge is the real
# systemd-sysext. PID 1 here is not systemd, so a recording `systemctl` stand-in plays the
# service manager: it runs the real `systemd-sysext refresh` for the refresh and logs, with a
# timestamp, the version of the merged kubelet when the kubelet is restarted. The release:
# kubernetes images built by `bakery create` from this machine's Kubernetes-built Go binaries
# (kubectl builds in dl.k8s.io's layout, as in bench/serve.sh), v1.31.3 installed by `composer
# node sync`, then per round one new patch published with `bakery publish` and served by
# `composer serve` on loopback, and `composer node upgrade` run (patch policy, default steps,
# `--health-check` of the merged binary's identity since the stand-in kubelet is a kubectl
# build). Then the same upgrades by stock systemd-sysupdate 257 (Debian 13's, in a chroot) on a
# node set up by `composer node sync --sysupdate` from the release published with --openpgp
# (Verify=yes): `systemd-sysupdate update`, then `systemd-sysext refresh`. BENCH_ROUNDS rounds
# (default 3), medians. Needs root (namespaces, loop devices).
# Usage: bash bench/upgrade.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BENCH_ROUNDS:-3}
W=${BENCH_WORK:-$ROOT/bench/work/upgrade}
PORT=${BENCH_PORT:-18251}
KUBECTLS=${BENCH_KUBECTLS:-/usr/lib/google-cloud-sdk/bin}
[ "$(id -u)" = 0 ] || { echo "bench/upgrade.sh needs root (mount namespaces, loop devices)" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. bench/lib.sh
need_packages bench/upgrade.sh curl:curl systemd:systemd-sysext

BAKERY=$ROOT/target/release/bakery COMPOSER=$ROOT/target/release/composer
cargo build --release -p bakery -p composer --quiet
rm -rf "$W"; mkdir -p "$W/images"

# --- the images: v1.31.3 and one new patch per round, from real Go binaries ---------------
srcs=("$KUBECTLS"/kubectl.1.31 "$KUBECTLS"/kubectl.1.30 "$KUBECTLS"/kubectl.1.29)
for s in "${srcs[@]}"; do [ -x "$s" ] || { echo "bench/upgrade.sh: $s missing; set BENCH_KUBECTLS" >&2; exit 1; }; done
VERSIONS=(v1.31.3)
for r in $(seq "$ROUNDS"); do VERSIONS+=("v1.31.$((3 + r))"); done
for v in "${VERSIONS[@]}"; do
  BIN=$W/mirror/$v/bin/linux/amd64
  mkdir -p "$BIN"
  # A different arrangement per version, so each image really differs.
  n=$(( ${v##*.} % 3 ))
  cp "${srcs[$n]}" "$BIN/kubelet"; cp "${srcs[$(( (n + 1) % 3 ))]}" "$BIN/kubeadm"; cp "${srcs[$(( (n + 2) % 3 ))]}" "$BIN/kubectl"
  for f in kubelet kubeadm kubectl; do sha256sum "$BIN/$f" | cut -d' ' -f1 | tr -d '\n' > "$BIN/$f.sha256"; done
  "$BAKERY" create kubernetes "$v" --arch x86-64 --mirror "file://$W/mirror" --cache "$W/cache" \
    --output "$W/images" --force >/dev/null
  rm -rf "$W/mirror/$v"
done
"$BAKERY" keygen --out "$W/keys" >/dev/null
"$BAKERY" publish "$W/images/kubernetes-v1.31.3-x86-64.raw" --to "$W/release" --key "$W/keys/private.pem" \
  --base-url "http://127.0.0.1:$PORT/" >/dev/null
"$COMPOSER" serve "$W/release" --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true; wait $SERVE_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT/index.json" 2>/dev/null && break; sleep 0.1; done

# --- the stand-in service manager --------------------------------------------------------
mkdir -p "$W/bin"
cat > "$W/bin/systemctl" <<'SH'
#!/bin/sh
case "$1" in
  reload-or-restart) systemd-sysext refresh >/dev/null ;;
  restart)
    v=$(sed -n 's/^SYSEXT_VERSION_ID=//p' /usr/lib/extension-release.d/extension-release.kubernetes)
    echo "$(date +%s.%N) restart $v" >>"$BENCH_LOG" ;;
  is-active) echo active ;;
esac
exit 0
SH
chmod 0755 "$W/bin/systemctl"

cat > "$W/node.sh" <<SH
set -eu
mount --make-rshared /
mount -t tmpfs tmpfs /run
mkdir -p $W/etc-up $W/etc-work
mount -t overlay overlay -o lowerdir=/etc,upperdir=$W/etc-up,workdir=$W/etc-work /etc
mount -t tmpfs tmpfs /opt
mount -t tmpfs tmpfs /var/lib
printf 'ID=ubuntu\nVERSION_ID=24.04\n' >$W/os-release
rm -f /etc/os-release && cp $W/os-release /etc/os-release
mount --bind $W/os-release /usr/lib/os-release
trap 'systemd-sysext unmerge >/dev/null 2>&1 || true' EXIT
export PATH=$W/bin:\$PATH BENCH_LOG=$W/log
"$COMPOSER" node sync --index http://127.0.0.1:$PORT/ --pubkey $W/keys/public.pem -e kubernetes@1.31 >/dev/null 2>&1
systemd-sysext refresh >/dev/null
for v in ${VERSIONS[*]:1}; do
  t0=\$(date +%s.%N)
  "$BAKERY" publish $W/images/kubernetes-\$v-x86-64.raw --to $W/release --key $W/keys/private.pem >/dev/null 2>&1
  t1=\$(date +%s.%N)
  "$COMPOSER" node upgrade --index http://127.0.0.1:$PORT/ --pubkey $W/keys/public.pem --json \
    --health-check 'grep -qx "SYSEXT_VERSION_ID=\$COMPOSER_TO_VERSION" /usr/lib/extension-release.d/extension-release.kubernetes' \
    >$W/upgrade-\$v.json 2>$W/upgrade-\$v.err
  t2=\$(date +%s.%N)
  restarted=\$(awk -v v="\$v" '\$3 == v { print \$1 }' $W/log | tail -1)
  [ -n "\$restarted" ] || { echo "kubelet never restarted on \$v" >&2; cat $W/upgrade-\$v.err >&2; exit 1; }
  bytes=\$(stat -c %s /opt/extensions/kubernetes/kubernetes-\$v-x86-64.raw)
  disk=\$(du -sk /opt/extensions/kubernetes | cut -f1)
  images=\$(ls /opt/extensions/kubernetes | grep -c '\.raw\$')
  echo "\$v \$t0 \$t1 \$restarted \$t2 \$bytes \$disk \$images"
done
SH
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
unshare -m sh "$W/node.sh" > "$W/results"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# --- the same upgrades by stock systemd-sysupdate -------------------------------------------
# Debian 13's systemd-sysupdate 257 in a chroot (the tests' cached root, or a debootstrap of
# our own), on a node that `composer node sync --sysupdate` set up (image, transfer file with
# Verify=yes, keyring), from a second release published with --openpgp; per round the time
# from the end of the publish to the switched link merged (`systemd-sysupdate update`, then
# `systemd-sysext refresh`: sysupdate itself merges nothing and restarts nothing).
DEB13=${BENCH_DEBIAN13:-$ROOT/target/sysupdate-debian13/root}
if [ ! -x "$DEB13/usr/lib/systemd/systemd-sysupdate" ]; then
  need_packages bench/upgrade.sh debootstrap:debootstrap
  DEB13=$W/debian13
  debootstrap --variant=minbase --include=systemd,systemd-container,dbus,gpg trixie "$DEB13" \
    "${SYSEXT_TESTS_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
fi
PORT_PGP=$((PORT + 1))
"$BAKERY" publish "$W/images/kubernetes-v1.31.3-x86-64.raw" --to "$W/release-pgp" --key "$W/keys/private.pem" \
  --openpgp --base-url "http://127.0.0.1:$PORT_PGP/" >/dev/null
"$COMPOSER" serve "$W/release-pgp" --listen "127.0.0.1:$PORT_PGP" >/dev/null 2>&1 &
PGP_PID=$!
trap 'kill $SERVE_PID $PGP_PID 2>/dev/null || true; wait $SERVE_PID $PGP_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$PORT_PGP/index.json" 2>/dev/null && break; sleep 0.1; done
cat > "$W/sysupdate.sh" <<SH
set -eu
# shared within this namespace: systemd-sysext merges from a child namespace of its own
mount --make-rshared /
M=$W/merged
mkdir -p $W/up $W/ovl \$M
mount -t overlay overlay -o lowerdir=$DEB13,upperdir=$W/up,workdir=$W/ovl \$M
mount -t proc proc \$M/proc
mount -t sysfs sysfs \$M/sys
mount --bind /dev \$M/dev
mount -t tmpfs tmpfs \$M/run
mount -t tmpfs tmpfs \$M/tmp
trap 'chroot \$M systemd-sysext unmerge >/dev/null 2>&1 || true' EXIT
"$COMPOSER" node sync --index http://127.0.0.1:$PORT_PGP/ --pubkey $W/keys/public.pem -e kubernetes@1.31 \
  --sysupdate --root \$M >/dev/null 2>&1
grep -q '^Verify=yes' \$M/etc/sysupdate.kubernetes.d/kubernetes-v1.31.transfer
chroot \$M systemd-sysext refresh --no-reload >/dev/null
for v in ${VERSIONS[*]:1}; do
  t0=\$(date +%s.%N)
  "$BAKERY" publish $W/images/kubernetes-\$v-x86-64.raw --to $W/release-pgp --key $W/keys/private.pem >/dev/null 2>&1
  t1=\$(date +%s.%N)
  chroot \$M /usr/lib/systemd/systemd-sysupdate -C kubernetes update >$W/sysupdate-\$v.log 2>&1
  t2=\$(date +%s.%N)
  chroot \$M systemd-sysext refresh --no-reload >/dev/null
  t3=\$(date +%s.%N)
  merged=\$(chroot \$M sed -n 's/^SYSEXT_VERSION_ID=//p' /usr/lib/extension-release.d/extension-release.kubernetes)
  [ "\$merged" = "\$v" ] || { echo "sysupdate: \$v not merged (\$merged)" >&2; cat $W/sysupdate-\$v.log >&2; exit 1; }
  bytes=\$(stat -c %s \$M/opt/extensions/kubernetes/kubernetes-\$v-x86-64.raw)
  disk=\$(du -sk \$M/opt/extensions/kubernetes | cut -f1)
  images=\$(ls \$M/opt/extensions/kubernetes | grep -c '\\.raw\$')
  echo "\$v \$t0 \$t1 \$t2 \$t3 \$bytes \$disk \$images"
done
SH
unshare -m sh "$W/sysupdate.sh" > "$W/results-sysupdate"

printf '\n| new version | publish s | published -> kubelet restarted s | upgrade command s | downloaded MB | /opt/extensions/kubernetes MB (images) |\n|---|---:|---:|---:|---:|---:|\n'
while read -r v t0 t1 restarted t2 bytes disk images; do
  awk -v v="$v" -v t0="$t0" -v t1="$t1" -v r="$restarted" -v t2="$t2" -v b="$bytes" -v d="$disk" -v n="$images" 'BEGIN {
    printf "| %s | %.2f | %.2f | %.2f | %.1f | %.1f (%d) |\n", v, t1 - t0, r - t1, t2 - t1, b / 1e6, d * 1024 / 1e6, n }'
done < "$W/results"
awk '{ print $4 - $3 }' "$W/results" | median | awk -v n="$ROUNDS" '{ printf "median published -> kubelet restarted: %.2f s over %d upgrades\n", $1, n }'

printf '\nStock systemd-sysupdate 257 (Verify=yes), the same images:\n\n| new version | publish s | published -> link switched s | published -> merged s | downloaded MB | /opt/extensions/kubernetes MB (images) |\n|---|---:|---:|---:|---:|---:|\n'
while read -r v t0 t1 t2 t3 bytes disk images; do
  awk -v v="$v" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v t3="$t3" -v b="$bytes" -v d="$disk" -v n="$images" 'BEGIN {
    printf "| %s | %.2f | %.2f | %.2f | %.1f | %.1f (%d) |\n", v, t1 - t0, t2 - t1, t3 - t1, b / 1e6, d * 1024 / 1e6, n }'
done < "$W/results-sysupdate"
awk '{ print $5 - $3 }' "$W/results-sysupdate" | median | awk '{ printf "median published -> merged by sysupdate + refresh: %.2f s\n", $1 }'

