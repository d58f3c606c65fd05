# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run).

# need_packages SCRIPT PACKAGE:COMMAND...: installs, with apt, the Debian packages whose command
# is missing (as root; otherwise says which to install and exits).
need_packages() {
  local script=$1 need=() pkg_cmd
  shift
  for pkg_cmd in "$@"; do
    command -v "${pkg_cmd#*:}" >/dev/null || need+=("${pkg_cmd%%:*}")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  [ "$(id -u)" = 0 ] || { echo "$script: install ${need[*]} (or run as root)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# start_mirror_nginx WORK PORT DIR: a one-worker nginx serving DIR on 127.0.0.1:PORT in the
# foreground of a background job, its files under WORK; sets NGINX_PID.
start_mirror_nginx() {
  cat > "$1/nginx.conf" <<NGINX
worker_processes 1;
pid $1/nginx.pid;
error_log $1/nginx-error.log;
daemon off;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  server { listen 127.0.0.1:$2; root $3; }
}
NGINX
  nginx -c "$1/nginx.conf" &
  # shellcheck disable=SC2034 # the caller stops it
  NGINX_PID=$!
}

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
