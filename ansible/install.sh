#!/usr/bin/env bash
# Install (or update, or with -e arch_state=absent remove) the ARCH appliance on this host.
#
#   sudo bash ansible/install.sh [ansible-playbook options...]
#
# Runs as root on Debian 12/13 or Amazon Linux 2023. Creates /opt/arch/bootstrap, a venv with the
# pinned ansible-core of ansible/requirements.txt under a Python >= 3.11 (the host's python3, or
# python3.11 where python3 is older: Amazon Linux 2023), then runs ansible/site.yml against this
# host over a local connection (its modules run on the system python3). Every argument goes to ansible-playbook, e.g.
#   -e arch_install_docker=false   --check   -e arch_state=absent   -e @my-vars.yml
# Air-gapped hosts: set PIP_INDEX_URL / PIP_FIND_LINKS (pip's own variables) for the bootstrap.
# Environment: ARCH_BOOTSTRAP_VENV (default /opt/arch/bootstrap), ARCH_BOOTSTRAP_PYTHON
# (default: /usr/bin/python3 when >= 3.11, else /usr/bin/python3.11). Safe to run again: each
# step only acts when something is missing.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bootstrap_venv=${ARCH_BOOTSTRAP_VENV:-/opt/arch/bootstrap}
host_python=${ARCH_BOOTSTRAP_PYTHON:-}
# ansible-core's controller: every supported release needs Python 3.11 or newer.
readonly controller_python_minimum=3.11
requirements="$script_dir/requirements.txt"

log() { printf 'arch-install: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install_os_packages() {
    if command -v apt-get >/dev/null 2>&1; then
        log "installing $* (apt)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
    elif command -v dnf >/dev/null 2>&1; then
        log "installing $* (dnf)"
        dnf install -y -q "$@" >/dev/null || die "dnf install $* failed"
    else
        die "neither apt-get nor dnf found: install $* yourself"
    fi
}

recent_enough() {  # recent_enough PYTHON: at least controller_python_minimum
    "$1" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$controller_python_minimum'.split('.'))))" \
        >/dev/null 2>&1
}

choose_host_python() {
    [ -n "$host_python" ] && return 0
    [ -x /usr/bin/python3 ] || install_os_packages python3
    if recent_enough /usr/bin/python3; then
        host_python=/usr/bin/python3
    else
        # Amazon Linux 2023: python3 is 3.9 (arch keeps using it), python3.11 is packaged.
        host_python=/usr/bin/python$controller_python_minimum
        [ -x "$host_python" ] || install_os_packages "python$controller_python_minimum" \
            "python$controller_python_minimum-pip"
    fi
}

ensure_host_python() {
    choose_host_python
    [ -x "$host_python" ] || die "$host_python not found"
    recent_enough "$host_python" \
        || die "$host_python is older than $controller_python_minimum (ansible-core's controller)"
    # Debian splits venv/ensurepip into python3-venv; Amazon Linux ships them with the python.
    if ! "$host_python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1; then
            install_os_packages python3-venv
        else
            install_os_packages "$(basename "$host_python")-pip"
        fi
    fi
    "$host_python" -c 'import ensurepip, venv' >/dev/null 2>&1 \
        || die "$host_python cannot create virtual environments"
}

ensure_bootstrap_venv() {
    # Also a venv of an older installer (Python 3.9 on Amazon Linux 2023) is made anew.
    if ! recent_enough "$bootstrap_venv/bin/python"; then
        log "creating $bootstrap_venv"
        rm -rf "$bootstrap_venv"
        mkdir -p "$(dirname "$bootstrap_venv")"
        "$host_python" -m venv "$bootstrap_venv" || die "could not create $bootstrap_venv"
    fi
    local wanted current
    wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
    current=$(cat "$bootstrap_venv/.requirements.sha256" 2>/dev/null || true)
    if [ "$wanted" != "$current" ] || [ ! -x "$bootstrap_venv/bin/ansible-playbook" ]; then
        log "installing ansible-core into $bootstrap_venv"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$bootstrap_venv/bin/pip" install -q -r "$requirements" \
            || die "pip install -r $requirements failed"
        printf '%s\n' "$wanted" >"$bootstrap_venv/.requirements.sha256"
    fi
}

run_playbook() {
    local version
    version=$("$bootstrap_venv/bin/ansible-playbook" --version 2>/dev/null | sed -n 1p)
    log "running $script_dir/site.yml with $version"
    ANSIBLE_CONFIG="$script_dir/ansible.cfg" ANSIBLE_LOCALHOST_WARNING=False \
        "$bootstrap_venv/bin/ansible-playbook" -i localhost, -c local "$script_dir/site.yml" "$@"
}

main() {
    [ "$(id -u)" -eq 0 ] || die "run as root"
    [ -f "$requirements" ] || die "$requirements not found"
    ensure_host_python
    ensure_bootstrap_venv
    local status=0
    run_playbook "$@" || status=$?
    if [ "$status" -ne 0 ]; then
        die "ansible-playbook failed (exit $status)"
    fi
    log "done"
}

main "$@"
