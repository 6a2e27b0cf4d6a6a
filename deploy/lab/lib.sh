#!/usr/bin/env bash
# Helpers the lab's provisioning scripts source. Nothing here runs by itself.
# Every helper is idempotent: a second `vagrant provision` changes nothing that is current.

REPO="${LAB_REPO:-/vagrant}"               # the synced folder: this repository
STATE="${LAB_STATE:-$REPO/.lab-state}"     # secrets and the kubeconfig, shared by the machines
LAB_DIR="${LAB_DIR:-$REPO/deploy/lab}"     # these scripts
SRC=/opt/openslb/src                       # this machine's private copy of the source
VENV=/opt/openslb                          # openslb's virtualenv

# `cmd | put_file ...` runs put_file in this shell, so its change is counted in CHANGED.
shopt -s lastpipe

log() { printf '==> %s\n' "$*"; }

# Install the Debian packages that are missing (apt-get update at most once a day).
apt_install() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  export DEBIAN_FRONTEND=noninteractive
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 -print -quit)" ]; then
    apt-get update -qq
  fi
  log "apt: installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The interface that holds address $1 (the lab network is eth1 on Debian's boxes, but
# the name depends on the provider).
iface_of() {
  ip -o -4 addr show | awk -v ip="$1" '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }'
}

# Wait until file $1 exists (another machine writes it), at most $2 seconds.
wait_for_file() {
  local file="$1" timeout="${2:-1200}" waited=0
  until [ -s "$file" ]; do
    ((waited % 60)) || log "waiting for $file (written by another machine: bring it up first)"
    ((waited < timeout)) || { echo "error: $file did not appear in ${timeout} s" >&2; return 1; }
    sleep 5
    waited=$((waited + 5))
  done
}

# Run "$@" until it succeeds, at most $1 seconds; $2 names what is awaited.
wait_until() {
  local timeout="$1" what="$2" waited=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((waited < timeout)) || { echo "error: no $what after ${timeout} s" >&2; return 1; }
    sleep 1
    waited=$((waited + 1))
  done
}

# Files that changed during this run (put_file, put_copy, sync_source): what to restart.
CHANGED=()

# Write stdin to $1 with mode $2 (and group $3) if the content or mode differs; atomic,
# and never readable by others meanwhile. A change is added to CHANGED.
put_file() {
  local dst="$1" mode="$2" group="${3:-root}" tmp
  tmp="$(mktemp "$(dirname "$dst")/.put.XXXXXX")"
  cat > "$tmp"
  if [ -f "$dst" ] && cmp -s "$tmp" "$dst" && [ "$(stat -c '%a %G' "$dst")" = "$mode $group" ]; then
    rm -f "$tmp"
    return 0
  fi
  chmod "$mode" "$tmp"
  chgrp "$group" "$tmp"
  mv -f "$tmp" "$dst"
  CHANGED+=("$dst")
  log "updated $dst"
}

# Copy file $1 to $2 with mode $3 (and group $4), as put_file.
put_copy() {
  put_file "$2" "$3" "${4:-root}" < "$1"
}

# Whether anything changed since CHANGED had $1 entries.
changed_since() {
  ((${#CHANGED[@]} > $1))
}

# A random secret in $STATE/$1, made once (the other machines read it from there).
# Only the file's name is printed, never its content.
make_secret() {
  local file="$STATE/$1"
  [ -s "$file" ] && return 0
  mkdir -p "$STATE"
  (umask 077 && openssl rand -hex 24 > "$file.tmp" && mv -f "$file.tmp" "$file")
  log "secret: generated ${file#"$REPO"/}"
}

# Copy the parts of the repository openslb is built from into $SRC. A private copy: pip
# builds in the source tree, and the machines must not build in the shared folder at
# once. A change is added to CHANGED.
sync_source() {
  local changes
  mkdir -p "$SRC"
  # --omit-dir-times: a directory only touched here (npm, pip) is not a change.
  changes="$(rsync -a --omit-dir-times --delete --itemize-changes \
    --exclude='__pycache__/' --exclude='*.egg-info/' \
    --exclude='/web/node_modules/' --exclude='/web/static/vendor/' \
    "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/slb" "$REPO/cmi" "$REPO/l4" "$REPO/l7" \
    "$REPO/web" "$REPO/devbed" \
    "$REPO/deploy" "$SRC/")"
  [ -z "$changes" ] || { CHANGED+=("$SRC"); log "source: copied to $SRC"; }
}

# openslb in $VENV, installed from $SRC in editable mode: the wheel leaves out the
# console's templates and static files (no package data for them yet), which an
# editable install serves from $SRC. Reinstalls only when pyproject.toml changed.
install_openslb() {
  local stamp="$VENV/.openslb-installed" want
  want="$(sha256sum "$SRC/pyproject.toml" | cut -c1-16)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "python: installing openslb into $VENV (a few minutes the first time)"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -e "$SRC"
    echo "$want" > "$stamp"
  fi
  ln -sfn "$VENV/bin/slb" /usr/local/bin/slb   # on sudo's PATH, for looking around
}

# Enable and start units; with --restart first, restart those already running (their
# code or configuration changed).
run_units() {
  local restart="" unit
  if [ "${1:-}" = --restart ]; then restart=1; shift; fi
  for unit in "$@"; do
    if [ -n "$restart" ] && systemctl is-active --quiet "$unit"; then
      log "systemd: restarting $unit"
      systemctl restart "$unit"
    elif ! systemctl is-active --quiet "$unit" || ! systemctl is-enabled --quiet "$unit"; then
      log "systemd: starting $unit"
      systemctl enable --now --quiet "$unit"
    fi
  done
}
