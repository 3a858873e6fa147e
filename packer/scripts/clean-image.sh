#!/usr/bin/env bash
# Remove instance state from a machine image before its snapshot, inside a target root.
#
#   clean-image.sh --root DIR                 clean the tree under DIR (a chroot, a mounted volume)
#   clean-image.sh --root / --live-image      clean the running system: it IS the image (an AMI
#                                             build instance); never run this on a machine you keep
#
# What an instance started from the image must not inherit, in the spirit of the official ECS AMI
# build's clean-up (github.com/aws/amazon-ecs-ami, scripts/cleanup.sh) and the EC2 Image Builder
# security guidance ("Security best practices for EC2 Image Builder", docs.aws.amazon.com/
# imagebuilder/latest/userguide/security-best-practices.html):
#   identity   /etc/machine-id (left empty: systemd makes a new one at first boot), SSH host
#              keys (sshd-keygen makes new ones), authorized_keys and shell histories
#   cloud-init /var/lib/cloud (so the instance runs its own first boot), cloud-init's logs and
#              the files its first boot wrote (/etc/hostname, /etc/locale.conf)
#   ECS agent  /var/lib/ecs/data (the agent's state: a copied container instance ARN would make
#              every instance claim the build instance's registration) and /var/log/ecs
#   logs       system logs, the journal, audit, sysstat, SSM agent logs, dhclient leases
#   packages   dnf/yum caches and histories, /tmp and /var/tmp
#   ARCH       /run/arch (per-container state), the contents of /checkpoint (images hold process
#              memory), /var/log/arch and the bootstrap log, ARCH's metrics file, the CRIU
#              build directory
# Kept: configuration (/etc/ecs/ecs.config, /etc/arch), the agent's cached image
# (/var/cache/ecs), installed software, /etc/arch/image.key (the fleet's signing key).
#
# Every path is taken inside the root; a path that resolves outside it (a symlink in the tree
# pointing at the host) is refused, so cleaning a chroot never touches the machine running it.
# Prints one line per removed path. Exit 0 when every path is gone or empty, 1 otherwise.
set -euo pipefail
shopt -s nullglob dotglob

root=""
live_image=false
removed=0
refused=0

usage() {
    echo "usage: $0 --root DIR [--live-image]" >&2
    exit 2
}

die() {
    echo "clean-image: error: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
    --root)
        [ $# -ge 2 ] || usage
        root=$2
        shift 2
        ;;
    --live-image)
        live_image=true
        shift
        ;;
    *) usage ;;
    esac
done
[ -n "$root" ] || usage
[ -d "$root" ] || die "--root $root is not a directory"
root=$(realpath -e -- "$root")
if [ "$root" = / ] && [ "$live_image" != true ]; then
    die "--root / cleans the running system (its SSH host keys, machine-id, logs): only on the" \
        "instance an image is built from, with --live-image"
fi

# inside PATH: the path under the root; exit 1 (and a message) when it resolves outside it.
inside() {
    local target resolved
    target="${root%/}$1"
    resolved=$(realpath -m -- "$target")
    case "$resolved" in
    "$root" | "${root%/}"/*) printf '%s\n' "$target" ;;
    *)
        echo "clean-image: refused $target: resolves to $resolved, outside $root" >&2
        return 1
        ;;
    esac
}

shred_file() {
    if command -v shred >/dev/null; then
        shred --zero --remove=unlink -- "$1" 2>/dev/null || rm -f -- "$1"
    else
        rm -f -- "$1"
    fi
}

shred_files_in() { # regular files only, on this file system (find never follows links)
    local file
    while IFS= read -r -d '' file; do
        shred_file "$file"
    done < <(find "$1" -xdev -type f -print0)
}

remove_path() { # remove_path TARGET (a file, link or directory inside the root)
    local target=$1
    [ -e "$target" ] || [ -L "$target" ] || return 0
    # Files are overwritten before they are unlinked (keys, logs, process memory in images), as
    # the official build does; links are removed, never followed.
    if [ -d "$target" ] && [ ! -L "$target" ]; then
        shred_files_in "$target"
        rm -rf -- "$target"
    elif [ -f "$target" ] && [ ! -L "$target" ]; then
        shred_file "$target"
    else
        rm -f -- "$target"
    fi
    echo "clean-image: removed ${target#"${root%/}"}"
    removed=$((removed + 1))
}

# remove PATH-OR-GLOB...: every match inside the root goes.
remove() {
    local pattern target match IFS=$'\n'
    for pattern in "$@"; do
        target=$(inside "$pattern") || { refused=$((refused + 1)); continue; }
        # Unquoted on purpose: the pattern's own glob characters expand (nullglob).
        # shellcheck disable=SC2206
        local matches=($target)
        for match in "${matches[@]}"; do
            inside "${match#"${root%/}"}" >/dev/null || { refused=$((refused + 1)); continue; }
            remove_path "$match"
        done
    done
}

# empty DIR...: the directory stays (with its owner and mode), its contents go.
empty() {
    local directory target
    for directory in "$@"; do
        target=$(inside "$directory") || { refused=$((refused + 1)); continue; }
        [ -d "$target" ] || continue
        remove "$directory/*"
    done
}

# truncate_file FILE...: kept, emptied (machine-id: empty means "generate at first boot").
truncate_file() {
    local file target
    for file in "$@"; do
        target=$(inside "$file") || { refused=$((refused + 1)); continue; }
        if [ ! -f "$target" ] || [ -L "$target" ]; then continue; fi
        [ -s "$target" ] || continue
        : >"$target"
        echo "clean-image: emptied $file"
        removed=$((removed + 1))
    done
}

echo "clean-image: cleaning instance state under $root"

# Identity
truncate_file /etc/machine-id
truncate_file /var/lib/dbus/machine-id # a copy on some systems (a link to /etc/machine-id is kept)
remove '/etc/ssh/ssh_host_*'
remove /root/.ssh/authorized_keys '/home/*/.ssh/authorized_keys'
remove /root/.bash_history '/home/*/.bash_history' /root/.python_history

# cloud-init
empty /var/lib/cloud
remove /var/log/cloud-init.log /var/log/cloud-init-output.log /etc/hostname /etc/locale.conf

# ECS agent
empty /var/lib/ecs/data /var/log/ecs

# Logs
remove /var/log/messages /var/log/secure /var/log/cron /var/log/boot.log /var/log/dmesg \
    /var/log/wtmp /var/log/btmp /var/log/lastlog /var/log/audit/audit.log '/var/log/sa/sa*' \
    /var/log/amazon/ssm /var/lib/rsyslog/imjournal.state
empty /var/log/journal
remove '/var/lib/dhclient/*.lease*' '/var/lib/dhcp/dhclient.*'

# Packages and scratch space
remove '/var/lib/dnf/history*' /var/lib/yum/history /etc/.updated /var/.updated
empty /var/cache/dnf /var/cache/yum /tmp /var/tmp

# ARCH. On a live image /run is a tmpfs that the snapshot does not hold, and ARCH's services
# still run there: its /run/arch is left to them.
if [ "$live_image" != true ]; then
    empty /run/arch
fi
empty /checkpoint /var/log/arch /var/cache/arch
remove /var/log/arch-bootstrap.log /var/lib/node_exporter/textfile_collector/arch.prom

if [ "$refused" -gt 0 ]; then
    die "$refused paths resolve outside $root and were left alone: the image is not clean"
fi
echo "clean-image: done, $removed paths removed or emptied"
