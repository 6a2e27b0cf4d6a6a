#!/usr/bin/env bash
# Every lab machine, before its role's script: the lab's names in /etc/hosts and the
# packages every role uses. Idempotent.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "${LAB_DIR:-/vagrant/deploy/lab}/lib.sh"
: "${LAB_HOSTS:?set by the Vagrantfile: NAME=ADDRESS ...}"

# Names of the lab machines, in a block of their own (Vagrant keeps 127.0.1.1 NAME).
hosts="$(sed '/# openslb lab begin/,/# openslb lab end/d' /etc/hosts)"
block="# openslb lab begin"
for entry in $LAB_HOSTS; do
  block+=$'\n'"${entry#*=} ${entry%%=*}"
done
block+=$'\n'"# openslb lab end"
printf '%s\n%s\n' "$hosts" "$block" | put_file /etc/hosts 644

apt_install ca-certificates curl rsync openssl iproute2 python3-venv
