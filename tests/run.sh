#!/usr/bin/env bash
# Run ARCH's test suite on this host: `sudo bash tests/run.sh [pytest args]`.
#
# Unit tests run anywhere. Appliance, integration and kernel tests need root and a host where
# ansible/install.sh ran (they check and drive the installed appliance).
#
# The suite runs in a test virtualenv (default /opt/arch/test-venv) built with the host's
# python3. When a Python 3.9 interpreter is available (the oldest supported; Amazon Linux 2023's
# system python), the unit tests run under it too.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
test_venv=${ARCH_TEST_VENV:-/opt/arch/test-venv}
host_python=${ARCH_TEST_PYTHON:-/usr/bin/python3}
oldest_python=${ARCH_TEST_PYTHON_OLDEST:-$(ls -d "$HOME"/.pyenv/versions/3.9.*/bin/python 2>/dev/null | tail -n 1 || true)}

# Test-only OS packages: a static busybox for the test containers' images; for the delivery
# tests (tests/integration/delivery) packer, shellcheck and OpenSSH's server and client.
install_test_packages() {
    [ "$(id -u)" -eq 0 ] || return 0
    if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
        if command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static file >/dev/null
        elif command -v dnf >/dev/null; then
            dnf install -y -q busybox file >/dev/null
        fi
    fi
    local missing=() command package
    for command in packer:packer shellcheck:shellcheck /usr/sbin/sshd:openssh-server \
        ssh-keygen:openssh-client; do
        package=${command##*:}
        command=${command%:*}
        command -v "$command" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
        # A policy-rc.d that denies service starts: installing openssh-server must not start a
        # system sshd (the tests start their own). An existing policy-rc.d is left as it is.
        local policy=/usr/sbin/policy-rc.d created_policy=false status=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created_policy=true
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null || status=$?
        if [ "$created_policy" = true ]; then rm -f "$policy"; fi
        return "$status"
    fi
}

make_venv() {  # make_venv PYTHON DIR EXTRAS
    [ -x "$2/bin/python" ] || "$1" -m venv "$2"
    "$2/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo[$3]"
}

cd "$repo"
install_test_packages
# As root on an installed appliance nothing should skip: a skip is reported as a failure.
if [ "$(id -u)" -eq 0 ]; then
    export ARCH_TESTS_STRICT=${ARCH_TESTS_STRICT:-1}
fi
if [ -n "$oldest_python" ] && [ -x "$oldest_python" ]; then
    echo "== unit tests under $("$oldest_python" --version)"
    make_venv "$oldest_python" "$test_venv-py39" test
    "$test_venv-py39/bin/python" -m pytest -q -p no:cacheprovider tests/unit
fi
echo "== full suite under $("$host_python" --version)"
make_venv "$host_python" "$test_venv" test,lint
exec "$test_venv/bin/python" -m pytest "$@"
