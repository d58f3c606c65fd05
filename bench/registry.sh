#!/usr/bin/env bash
# Side-by-side benchmark: one node pulling its three extensions (kubernetes, containerd, cni)
# from an OCI registry against pulling them from `composer serve`, and against plain `curl` of
# the same bytes from each, in one run on loopback.
#
# - registry: Debian's docker-registry (Docker distribution 2.8), plain HTTP, filesystem
#   storage, holding the release copied into it with `bakery mirror DIR oci+http://…` (the
#   publisher's signatures kept).
# - serve: `composer serve` over the same release directory.
# - agent: `composer node sync -e kubernetes@1.31 -e containerd@2.0 -e cni@latest` into a fresh
#   scratch root (a Flatcar os-release) each run: open and verify the signed index, resolve
#   the channels, download each image verified while it streams (size, sha256 and sha512 from
#   the index), fsync, rename, link, write the node's state.
# - curl: the three images with one `curl` (one connection, sequential), into files, nothing
#   checked: the transfer alone. From the registry it fetches the blob URLs
#   (/v2/REPO/blobs/sha256:…) that the agent ends up reading too.
# - hash: sha256sum and sha512sum of the three images from the page cache, what verifying
#   costs by itself.
#
# The images: kubernetes built by `bakery create` from real Go binaries (this machine's kubectl
# builds in dl.k8s.io's layout, as in bench/serve.sh); containerd and cni are squashfs images
# of real Go binaries too (kubectl builds renamed into containerd's and the CNI plugins'
# layout), since their upstream tarballs are not on this machine. BENCH_ROUNDS alternating
# rounds (default 5), medians. Installs docker-registry, curl and GNU time when missing (apt,
# as root). Usage: bash bench/registry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BENCH_ROUNDS:-5}
W=${BENCH_WORK:-$ROOT/bench/work/registry}
PORT_SERVE=${BENCH_PORT:-18241}
PORT_REGISTRY=$((PORT_SERVE + 1))
KUBECTLS=${BENCH_KUBECTLS:-/usr/lib/google-cloud-sdk/bin}
REPO=bench/release
CHANNELS=(-e kubernetes@1.31 -e containerd@2.0 -e cni@latest)

# shellcheck source=bench/lib.sh
. bench/lib.sh
if ! command -v docker-registry >/dev/null; then
  need_packages bench/registry.sh docker-registry:docker-registry
  # The package starts its own registry on :5000; this bench starts one of its own.
  systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi
need_packages bench/registry.sh curl:curl time:/usr/bin/time squashfs-tools:mksquashfs

BAKERY=$ROOT/target/release/bakery COMPOSER=$ROOT/target/release/composer
cargo build --release -p bakery -p composer --quiet
mkdir -p "$W"

# --- the release ---------------------------------------------------------------------------
RELEASE=$W/release
if [ ! -e "$RELEASE/index.json" ]; then
  srcs=("$KUBECTLS"/kubectl.1.31 "$KUBECTLS"/kubectl.1.30 "$KUBECTLS"/kubectl.1.29)
  for s in "${srcs[@]}"; do [ -x "$s" ] || { echo "bench/registry.sh: $s missing; set BENCH_KUBECTLS" >&2; exit 1; }; done
  BIN=$W/mirror/v1.31.3/bin/linux/amd64
  mkdir -p "$BIN"
  cp "${srcs[0]}" "$BIN/kubelet"; cp "${srcs[1]}" "$BIN/kubeadm"; cp "${srcs[2]}" "$BIN/kubectl"
  for f in kubelet kubeadm kubectl; do sha256sum "$BIN/$f" | cut -d' ' -f1 | tr -d '\n' > "$BIN/$f.sha256"; done
  "$BAKERY" create kubernetes v1.31.3 --arch x86-64 --mirror "file://$W/mirror" --cache "$W/cache" \
    --output "$W/out" --force >/dev/null
  # containerd and cni: real Go binaries in their layouts, with extension-release files.
  squash() { # name version tree-setup...
    local name=$1 ver=$2 t=$W/tree-$1
    shift 2
    rm -rf "$t"; mkdir -p "$t/usr/lib/extension-release.d"
    printf 'ID=_any\nARCHITECTURE=x86-64\nSYSEXT_ID=%s\nSYSEXT_VERSION_ID=%s\n' "$name" "$ver" \
      > "$t/usr/lib/extension-release.d/extension-release.$name"
    for spec in "$@"; do mkdir -p "$t/$(dirname "${spec%%=*}")"; cp "${spec#*=}" "$t/${spec%%=*}"; done
    SOURCE_DATE_EPOCH=0 mksquashfs "$t" "$W/out/$name-$ver-x86-64.raw" -all-root -noappend -quiet -comp zstd >/dev/null
    rm -rf "$t"
  }
  squash containerd 2.0.4 usr/bin/containerd="${srcs[1]}" usr/bin/ctr="${srcs[2]}"
  squash cni v1.6.2 usr/libexec/cni/bridge="${srcs[2]}"
  "$BAKERY" keygen --out "$W/keys" >/dev/null
  "$BAKERY" publish "$W"/out/*.raw --to "$RELEASE" --key "$W/keys/private.pem" \
    --base-url "http://127.0.0.1:$PORT_SERVE/" >/dev/null
  rm -rf "$W/mirror" "$W/cache" "$W/out"
fi
IMAGES=(kubernetes-v1.31.3-x86-64.raw containerd-2.0.4-x86-64.raw cni-v1.6.2-x86-64.raw)
BYTES=0
for i in "${IMAGES[@]}"; do BYTES=$((BYTES + $(stat -L -c %s "$RELEASE/$i"))); done

# --- the servers ---------------------------------------------------------------------------
REG=$W/registry
rm -rf "$REG"; mkdir -p "$REG/data"
cat > "$REG/config.yml" <<YAML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $REG/data
http:
  addr: 127.0.0.1:$PORT_REGISTRY
  secret: bench-secret
YAML
docker-registry serve "$REG/config.yml" > "$REG/log" 2>&1 &
REGISTRY_PID=$!
"$COMPOSER" serve "$RELEASE" --listen "127.0.0.1:$PORT_SERVE" > /dev/null 2>&1 &
SERVE_PID=$!
cleanup() {
  kill "$REGISTRY_PID" "$SERVE_PID" 2>/dev/null || true
  wait "$REGISTRY_PID" "$SERVE_PID" 2>/dev/null || true
  rm -rf "$W/node" "$W/curl"
}
trap cleanup EXIT
for url in "http://127.0.0.1:$PORT_SERVE/index.json" "http://127.0.0.1:$PORT_REGISTRY/v2/"; do
  for _ in $(seq 100); do curl -fsS -o /dev/null "$url" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "$url"
done
OCI=oci+http://127.0.0.1:$PORT_REGISTRY/$REPO
"$BAKERY" mirror "$RELEASE" "$OCI" --pubkey "$W/keys/public.pem" >/dev/null
"$BAKERY" verify-release "$OCI" --pubkey "$W/keys/public.pem" >/dev/null
BLOBS=()
SERVED=()
for i in "${IMAGES[@]}"; do
  BLOBS+=("http://127.0.0.1:$PORT_REGISTRY/v2/$REPO/blobs/sha256:$(sha256sum "$RELEASE/$i" | cut -d' ' -f1)")
  SERVED+=("http://127.0.0.1:$PORT_SERVE/$i")
done

# --- methods: each prints "wall-seconds cpu-seconds" of the client --------------------------
timed() { # command...: GNU time's elapsed and user+sys of the command
  /usr/bin/time -f '%e %U %S' -o "$W/time" "$@" >/dev/null
  awk '{ printf "%s %.2f\n", $1, $2 + $3 }' "$W/time"
}
fresh_root() {
  rm -rf "$W/node"
  mkdir -p "$W/node/etc" "$W/node/usr/lib64/systemd"
  printf 'ID=flatcar\nVERSION_ID=4152.2.0\nSYSEXT_LEVEL=1.0\n' > "$W/node/etc/os-release"
  : > "$W/node/usr/lib64/systemd/libsystemd-shared-257.so"
}
run() {
  case $1 in
    agent-registry) fresh_root; timed "$COMPOSER" node sync --index "$OCI" --pubkey "$W/keys/public.pem" \
      --root "$W/node" "${CHANNELS[@]}" ;;
    agent-serve) fresh_root; timed "$COMPOSER" node sync --index "http://127.0.0.1:$PORT_SERVE/" \
      --pubkey "$W/keys/public.pem" --root "$W/node" "${CHANNELS[@]}" ;;
    curl-registry | curl-serve)
      local urls=("${BLOBS[@]}") args=()
      [ "$1" = curl-serve ] && urls=("${SERVED[@]}")
      rm -rf "$W/curl"; mkdir -p "$W/curl"
      for n in 0 1 2; do args+=(-o "$W/curl/$n" "${urls[$n]}"); done
      timed curl -fsS "${args[@]}" ;;
    hash) timed sh -c 'sha256sum "$@" && sha512sum "$@"' sh "${IMAGES[@]/#/$RELEASE/}" ;;
  esac
}
# The agent really installed what it was sent.
run agent-registry >/dev/null
for i in "${IMAGES[@]}"; do
  ext=${i%%-*}
  cmp "$RELEASE/$i" "$W/node/opt/extensions/$ext/$i"
done
METHODS=(agent-registry agent-serve curl-registry curl-serve hash)
declare -A wall cpu
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$ROUNDS"); do
  order=("${METHODS[@]}")
  if [ $((round % 2)) = 0 ]; then order=(hash curl-serve curl-registry agent-serve agent-registry); fi
  for m in "${order[@]}"; do
    read -r w c <<< "$(run "$m")"
    wall[$m]+="$w "; cpu[$m]+="$c "
    echo "round $round $m: ${w} s wall, ${c} s CPU (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

med() { tr ' ' '\n' <<< "$1" | grep . | median; }
AR=$(med "${wall[agent-registry]}")
printf '\n| method | wall s | client CPU s | MB/s | wall x agent from the registry |\n|---|---:|---:|---:|---:|\n'
for m in "${METHODS[@]}"; do
  w=$(med "${wall[$m]}"); c=$(med "${cpu[$m]}")
  awk -v m="$m" -v w="$w" -v c="$c" -v b="$BYTES" -v ar="$AR" 'BEGIN {
    printf "| %s | %.2f | %.2f | %.0f | %.2f |\n", m, w, c, (w > 0 ? b / 1e6 / w : 0), w / ar }'
done
awk -v b="$BYTES" -v r="$ROUNDS" 'BEGIN { printf "(three images, %.1f MB in all; medians of %d rounds)\n", b / 1e6, r }'
