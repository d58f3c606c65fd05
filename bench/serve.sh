#!/usr/bin/env bash
# Side-by-side benchmark: `composer serve` against nginx (sendfile on) serving the same
# published release on loopback, measured with wrk. The release holds a real kubernetes
# extension built by `bakery create` from real Go binaries (this machine's kubectl builds,
# renamed into the kubelet/kubeadm/kubectl layout, served to bakery from a file:// mirror),
# published with `bakery publish`.
#
# Measures requests/s on index.json and SHA256SUMS and MB/s on the image, in BENCH_ROUNDS
# alternating rounds (default 5), and prints medians and composer/nginx ratios. Both servers
# write an access log line per request, to /dev/null (one write(2) each). Installs nginx,
# wrk and curl when missing (apt, as root). Usage: bash bench/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-5s}
SMALL_CONNS=${BENCH_SMALL_CONNECTIONS:-64}
IMAGE_CONNS=${BENCH_IMAGE_CONNECTIONS:-8}
W=${BENCH_WORK:-$ROOT/bench/work/serve}
PORT_COMPOSER=${BENCH_PORT:-18231}
PORT_NGINX=$((PORT_COMPOSER + 1))
VERSION=v1.31.3
KUBECTLS=${BENCH_KUBECTLS:-/usr/lib/google-cloud-sdk/bin}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need_packages bench/serve.sh nginx:nginx wrk:wrk curl:curl

cargo build --release -p bakery -p composer --quiet
BAKERY=$ROOT/target/release/bakery
COMPOSER=$ROOT/target/release/composer
mkdir -p "$W"

# --- the release: a real image from real Go binaries, published ----------------------------
RELEASE=$W/release
if [ ! -e "$RELEASE/index.json" ]; then
  BIN=$W/mirror/$VERSION/bin/linux/amd64
  mkdir -p "$BIN"
  srcs=("$KUBECTLS"/kubectl.1.31 "$KUBECTLS"/kubectl.1.30 "$KUBECTLS"/kubectl.1.29)
  for s in "${srcs[@]}"; do [ -x "$s" ] || { echo "bench/serve.sh: $s missing; set BENCH_KUBECTLS" >&2; exit 1; }; done
  cp "${srcs[0]}" "$BIN/kubelet"; cp "${srcs[1]}" "$BIN/kubeadm"; cp "${srcs[2]}" "$BIN/kubectl"
  for f in kubelet kubeadm kubectl; do sha256sum "$BIN/$f" | cut -d' ' -f1 | tr -d '\n' > "$BIN/$f.sha256"; done
  "$BAKERY" create kubernetes "$VERSION" --arch x86-64 --mirror "file://$W/mirror" --cache "$W/cache" \
    --output "$W/out" --level 9 --force >/dev/null
  "$BAKERY" keygen --out "$W/keys" >/dev/null
  "$BAKERY" publish "$W/out/kubernetes-$VERSION-x86-64.raw" --to "$RELEASE" --key "$W/keys/private.pem" \
    --base-url "http://127.0.0.1:$PORT_COMPOSER/" >/dev/null
  rm -rf "$W/mirror" "$W/cache" "$W/out" # only the release is needed from here on
fi
IMAGE=kubernetes-$VERSION-x86-64.raw
IMAGE_BYTES=$(stat -L -c %s "$RELEASE/$IMAGE")

# --- the servers ---------------------------------------------------------------------------
cat > "$W/nginx.conf" <<NGINX
worker_processes auto;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
daemon off;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  types { text/plain SHA256SUMS; }
  access_log /dev/null;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$PORT_NGINX; root $RELEASE; }
}
NGINX
nginx -c "$W/nginx.conf" &
NGINX_PID=$!
"$COMPOSER" serve "$RELEASE" --listen "127.0.0.1:$PORT_COMPOSER" > "$W/composer.out" 2> /dev/null &
COMPOSER_PID=$!
cleanup() {
  kill "$NGINX_PID" "$COMPOSER_PID" 2>/dev/null || true
  wait "$NGINX_PID" "$COMPOSER_PID" 2>/dev/null || true
}
trap cleanup EXIT
for port in "$PORT_NGINX" "$PORT_COMPOSER"; do
  for _ in $(seq 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/index.json" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://127.0.0.1:$port/index.json"
done
# Same bytes from both.
for f in index.json SHA256SUMS "$IMAGE"; do
  a=$(curl -fsS "http://127.0.0.1:$PORT_COMPOSER/$f" | sha256sum)
  b=$(curl -fsS "http://127.0.0.1:$PORT_NGINX/$f" | sha256sum)
  [ "$a" = "$b" ] || { echo "bench/serve.sh: $f differs between the servers" >&2; exit 1; }
done

# Server CPU time, from /proc (clock ticks, all threads or all worker processes): a second
# figure that holds up when other work shares the machine and skews wall-clock rates.
TICK_US=$((1000000 / $(getconf CLK_TCK)))
NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
cpu_ticks() { for p in "$@"; do awk '{ print $14 + $15 }' "/proc/$p/stat"; done | awk '{ s += $1 } END { print s }'; }

# $1 server, $2 path, $3 connections: prints "requests/s cpu-us-per-request"
measure() {
  local port=$PORT_COMPOSER pids=$COMPOSER_PID out before after
  if [ "$1" = nginx ]; then port=$PORT_NGINX; pids=$NGINX_WORKERS; fi
  # shellcheck disable=SC2086
  before=$(cpu_ticks $pids)
  out=$(wrk -t2 -c"$3" -d"$DURATION" "http://127.0.0.1:$port/$2")
  # shellcheck disable=SC2086
  after=$(cpu_ticks $pids)
  awk -v b="$before" -v a="$after" -v t="$TICK_US" '
    / requests in / { n = $1 } /^Requests\/sec:/ { r = $2 }
    END { printf "%s %.1f\n", r, (a - b) * t / n }' <<< "$out"
}

declare -A rps cpu
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="composer nginx"; else order="nginx composer"; fi
  for target in index.json SHA256SUMS "$IMAGE"; do
    conns=$SMALL_CONNS; [ "$target" = "$IMAGE" ] && conns=$IMAGE_CONNS
    for server in $order; do
      read -r r c <<< "$(measure "$server" "$target" "$conns")"
      rps[$server/$target]+="$r "
      cpu[$server/$target]+="$c "
      echo "round $round $server $target: $r req/s, $c us CPU/request (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

printf '\n| file | composer | nginx | composer / nginx | server CPU per request, composer / nginx |\n|---|---:|---:|---:|---:|\n'
for target in index.json SHA256SUMS "$IMAGE"; do
  c=$(tr ' ' '\n' <<< "${rps[composer/$target]}" | grep . | median)
  n=$(tr ' ' '\n' <<< "${rps[nginx/$target]}" | grep . | median)
  cc=$(tr ' ' '\n' <<< "${cpu[composer/$target]}" | grep . | median)
  nc=$(tr ' ' '\n' <<< "${cpu[nginx/$target]}" | grep . | median)
  if [ "$target" = "$IMAGE" ]; then
    awk -v c="$c" -v n="$n" -v cc="$cc" -v nc="$nc" -v b="$IMAGE_BYTES" -v f="$target" 'BEGIN {
      printf "| %s (%.1f MB) | %.0f MB/s | %.0f MB/s | %.2f | %.0f / %.0f us = %.2f |\n",
        f, b / 1e6, c * b / 1e6, n * b / 1e6, c / n, cc, nc, cc / nc }'
  else
    awk -v c="$c" -v n="$n" -v cc="$cc" -v nc="$nc" -v f="$target" 'BEGIN {
      printf "| %s | %.0f req/s | %.0f req/s | %.2f | %.1f / %.1f us = %.2f |\n", f, c, n, c / n, cc, nc, cc / nc }'
  fi
done
echo "(medians of $ROUNDS rounds, wrk -t2 -d$DURATION, $SMALL_CONNS connections for small files, $IMAGE_CONNS for the image)"
