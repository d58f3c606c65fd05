#!/bin/sh
# composer-provision: installs the system extensions of a composer node plan on this node,
# verifying every byte, then merges them and starts the services they ship.
#
# Written by `composer provision cloud-init`; the plan is the `plan` function at the end of
# this file. composer-provision.service runs it, so what it prints is in the journal
# (journalctl -u composer-provision.service).
#
# The order keeps a failure from leaving a half-provisioned node:
#   1. check    every path the plan writes is free or replaceable, the tools are there;
#   2. fetch    every image not already on the node is downloaded into a scratch directory
#               beside the image directories and checked (size, SHA-256, SHA-512) against
#               the plan; an unreachable server (connection errors, HTTP 408, 429, 5xx) is
#               retried with backoff, anything else and any mismatch fails at once;
#   3. install  directories, then each image renamed into place, files and links written
#               under a temporary name and renamed over what was there;
#   4. activate systemd-sysext.service restarted (it merges; the plan also enables it for
#               later boots, Ubuntu ships it disabled), every extension checked to be
#               merged (systemd-sysext skips incompatible images silently), the manager
#               reloaded (systemd < 255 does not reload after a merge) and
#               multi-user.target started: its start job pulls in the units the
#               extensions' multi-user.target.d drop-ins name (Upholds= and Wants= both
#               add start jobs), which a reload alone does not start on systemd 252.
# Any failure exits non-zero with a message; before step 3 nothing on the node changed.
#
# Environment, for preparing a root filesystem offline and for tests:
#   ROOT                         prefix for every path written (default: this system);
#                                when set, step 4 is skipped: nothing is merged or started
#   COMPOSER_PROVISION_ATTEMPTS  downloads tried per image before giving up (default 30)
#   COMPOSER_PROVISION_BACKOFF   first wait between attempts in seconds, doubling up to 60
#                                (default 2)
#
# Needs: sh, curl or wget, sha256sum, sha512sum, mktemp and the POSIX utilities.

set -eu
umask 022

PROG=composer-provision
ROOT=${ROOT:-}
if [ "$ROOT" = / ]; then ROOT=; fi
ATTEMPTS=${COMPOSER_PROVISION_ATTEMPTS:-30}
BACKOFF=${COMPOSER_PROVISION_BACKOFF:-2}
MAX_BACKOFF=60
# Where units live, in systemd's order: the admin's (and this plan's own), then the OS's on
# merged-/usr systems and on older Debian and Ubuntu.
UNIT_DIRS="/etc/systemd/system /usr/lib/systemd/system /lib/systemd/system"

PHASE=
DOWNLOADER=
STAGE=
CREATED=
CREATED_TOP=
PENDING=
UNIT_FILE=
MISMATCH=
# Files the plan writes (collected in the check phase, before they exist).
PLANNED=

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

cleanup() {
    if [ -n "$PENDING" ]; then rm -f "$PENDING"; fi
    if [ -n "$STAGE" ]; then rm -rf "$STAGE"; fi
    # Directories made for the scratch directory go too, if nothing else landed in them.
    d=$CREATED
    while [ -n "$d" ] && rmdir "$ROOT$d" 2>/dev/null && [ "$d" != "$CREATED_TOP" ]; do
        d=${d%/*}
    done
}
trap cleanup EXIT
trap 'exit 1' HUP INT TERM

# Every existing component of $1 must be a directory (or a link to one).
check_dir() {
    rest=${1#/}
    cur=
    while [ -n "$rest" ]; do
        cur=$cur/${rest%%/*}
        case $rest in
            */*) rest=${rest#*/} ;;
            *) rest= ;;
        esac
        if [ -e "$ROOT$cur" ] && [ ! -d "$ROOT$cur" ]; then
            die "$cur exists and is not a directory"
        fi
    done
}

# $1 is written by renaming over it: a file or link there is replaced, a directory is not.
check_replaceable() {
    check_dir "${1%/*}"
    if [ -d "$ROOT$1" ]; then die "$1 is a directory (or a link to one); expected a file or link to replace"; fi
}

# Checks FILE against SIZE, SHA256 and SHA512; on a mismatch says why in MISMATCH.
verify() {
    got=$(wc -c <"$1")
    got=$((got))
    if [ "$got" -ne "$2" ]; then
        MISMATCH="$got bytes, the plan says $2"
        return 1
    fi
    got=$(sha256sum <"$1")
    got=${got%% *}
    if [ "$got" != "$3" ]; then
        MISMATCH="sha256 $got, the plan says $3"
        return 1
    fi
    got=$(sha512sum <"$1")
    got=${got%% *}
    if [ "$got" != "$4" ]; then
        MISMATCH="sha512 $got, the plan says $4"
        return 1
    fi
}

# Downloads URL $1 into $2 once: returns 0 when it arrived, 2 when trying again may help
# (the server is unreachable or overloaded), 1 when it will not.
fetch_once() {
    code=
    case $DOWNLOADER in
        curl)
            code=$(curl --silent --show-error --location --proto =http,https --proto-redir =http,https \
                --connect-timeout 30 --speed-limit 1024 --speed-time 60 \
                --output "$2" --write-out '%{http_code}' "$1" </dev/null) || {
                log "$1: connection failed"
                return 2
            }
            ;;
        wget)
            rc=0
            wget --quiet --server-response --tries=1 --timeout=60 --output-document="$2" "$1" \
                </dev/null 2>"$STAGE/.headers" || rc=$?
            while read -r proto status _; do
                case $proto in HTTP/*) code=$status ;; esac
            done <"$STAGE/.headers"
            case $rc in
                0) return 0 ;;
                4)
                    log "$1: connection failed"
                    return 2
                    ;;
                8) ;;
                *)
                    log "$1: wget failed (exit $rc)"
                    return 1
                    ;;
            esac
            ;;
    esac
    case $code in
        200) return 0 ;;
        408 | 429 | 5??)
            log "$1: HTTP $code"
            return 2
            ;;
        *)
            log "$1: HTTP ${code:-error}"
            return 1
            ;;
    esac
}

# Downloads URL $1 into $2 and checks it against SIZE $3, SHA256 $4, SHA512 $5.
fetch() {
    attempt=1
    wait=$BACKOFF
    while :; do
        rc=0
        fetch_once "$1" "$2" || rc=$?
        case $rc in
            0)
                if verify "$2" "$3" "$4" "$5"; then return 0; fi
                die "$1: $MISMATCH; refusing it (nothing on this node was changed)"
                ;;
            1) die "$1: download failed (nothing on this node was changed)" ;;
        esac
        if [ "$attempt" -ge "$ATTEMPTS" ]; then
            die "$1: still unreachable after $attempt attempts (nothing on this node was changed)"
        fi
        log "$1: attempt $attempt of $ATTEMPTS failed; retrying in ${wait}s"
        sleep "$wait"
        attempt=$((attempt + 1))
        wait=$((wait * 2))
        if [ "$wait" -gt "$MAX_BACKOFF" ]; then wait=$MAX_BACKOFF; fi
    done
}

# Points link $1 at $2: a new link under a temporary name renamed over the old one, so the
# link is never missing.
put_link() {
    PENDING=$ROOT$1.composer-new
    rm -f "$PENDING"
    ln -s "$2" "$PENDING"
    mv -f "$PENDING" "$ROOT$1"
    PENDING=
}

# ---- plan entries: each does its part of the current phase ----

# stage DIR: downloads go into a scratch directory inside DIR (same filesystem as the
# image directories, so installing is a rename).
stage() {
    case $PHASE in
        check) check_dir "$1" ;;
        fetch)
            if [ -z "$STAGE" ]; then
                if [ ! -d "$ROOT$1" ]; then
                    CREATED_TOP=$1
                    while [ -n "${CREATED_TOP%/*}" ] && [ ! -d "$ROOT${CREATED_TOP%/*}" ]; do
                        CREATED_TOP=${CREATED_TOP%/*}
                    done
                    mkdir -p "$ROOT$1"
                    CREATED=$1
                fi
                STAGE=$(mktemp -d "$ROOT$1/.composer-provision.XXXXXX")
            fi
            ;;
    esac
}

# dir PATH
dir() {
    case $PHASE in
        check) check_dir "$1" ;;
        install) mkdir -p "$ROOT$1" ;;
    esac
}

# image PATH NAME SIZE SHA256 SHA512 URL
image() {
    staged=$STAGE/${1##*/}
    case $PHASE in
        check) check_replaceable "$1" ;;
        fetch)
            if [ -f "$ROOT$1" ] && verify "$ROOT$1" "$3" "$4" "$5"; then
                log "$1: already installed"
            else
                log "fetching $6"
                fetch "$6" "$staged" "$3" "$4" "$5"
            fi
            ;;
        install)
            if [ -e "$staged" ]; then
                chmod 0644 "$staged"
                mv -f "$staged" "$ROOT$1"
                log "installed $1"
            fi
            ;;
        activate)
            if [ ! -e "/usr/lib/extension-release.d/extension-release.$2" ]; then
                die "systemd-sysext did not merge $2 ($1): it skips images that do not match this OS or architecture; see 'SYSTEMD_LOG_LEVEL=debug systemd-sysext refresh'"
            fi
            ;;
    esac
}

# file PATH MODE CONTENTS
file() { put_file "$1" "$2" text "$3"; }

# file_base64 PATH MODE BASE64: a binary file (an OpenPGP keyring).
file_base64() { put_file "$1" "$2" base64 "$3"; }

# put_file PATH MODE text|base64 CONTENTS
put_file() {
    case $PHASE in
        check)
            if [ "$3" = base64 ] && ! command -v base64 >/dev/null 2>&1; then
                die "base64 is not installed: cannot write $1"
            fi
            check_replaceable "$1"
            PLANNED="$PLANNED $1 "
            ;;
        install)
            PENDING=$ROOT$1.composer-new
            rm -f "$PENDING"
            case $3 in
                text) printf '%s' "$4" ;;
                base64) printf '%s' "$4" | base64 -d ;;
            esac >"$PENDING"
            chmod "$2" "$PENDING"
            mv -f "$PENDING" "$ROOT$1"
            PENDING=
            ;;
    esac
}

# link PATH TARGET
link() {
    case $PHASE in
        check) check_replaceable "$1" ;;
        install) put_link "$1" "$2" ;;
    esac
}

# Sets UNIT_FILE to where unit $1 is installed (or, for a unit the plan writes, will be).
# has_unit UNIT: whether the plan writes UNIT or the system has it in a unit directory.
has_unit() {
    for d in $UNIT_DIRS; do
        case $PLANNED in *" $d/$1 "*) return 0 ;; esac
        if [ -e "$ROOT$d/$1" ]; then return 0; fi
    done
    return 1
}

find_unit() {
    UNIT_FILE=
    for d in $UNIT_DIRS; do
        if [ -z "$UNIT_FILE" ]; then
            case $PLANNED in *" $d/$1 "*) UNIT_FILE=$d/$1 ;; esac
        fi
        if [ -z "$UNIT_FILE" ] && [ -e "$ROOT$d/$1" ]; then UNIT_FILE=$d/$1; fi
    done
    if [ -z "$UNIT_FILE" ]; then
        case $1 in
            systemd-sysext.service) die "no $1 in ${UNIT_DIRS#* }: this system's systemd cannot merge system extensions" ;;
            *) die "no $1 in $UNIT_DIRS" ;;
        esac
    fi
}

# enable_unit UNIT TARGET [if-present]: the link `systemctl enable` makes for
# WantedBy=TARGET; with if-present, nothing where the system has no such unit.
enable_unit() {
    wants=/etc/systemd/system/$2.wants
    if [ "${3-}" = if-present ] && ! has_unit "$1"; then
        return 0
    fi
    case $PHASE in
        check)
            find_unit "$1"
            check_replaceable "$wants/$1"
            ;;
        install)
            find_unit "$1"
            mkdir -p "$ROOT$wants"
            put_link "$wants/$1" "$UNIT_FILE"
            ;;
    esac
}

activate() {
    systemctl restart systemd-sysext.service
    PHASE=activate
    plan
    systemctl daemon-reload
    systemctl start multi-user.target
}

main() {
    if command -v curl >/dev/null 2>&1; then
        DOWNLOADER=curl
    elif command -v wget >/dev/null 2>&1; then
        DOWNLOADER=wget
    else
        die "neither curl nor wget is installed: cannot download the extension images"
    fi
    for tool in sha256sum sha512sum mktemp; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
    done
    PHASE=check
    plan
    PHASE=fetch
    plan
    PHASE=install
    plan
    sync
    rm -rf "$STAGE"
    STAGE=
    CREATED=
    if [ -n "$ROOT" ]; then
        log "installed into $ROOT; not merging (ROOT is set)"
        return 0
    fi
    activate
    log "extensions installed, merged and started"
}

# ---- the plan ----
