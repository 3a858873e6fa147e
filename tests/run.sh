#!/usr/bin/env bash
# Run ARCH's test suite on this host: `sudo bash tests/run.sh [pytest args]`.
#
# Unit tests run anywhere. Appliance, integration and kernel tests need root and a host where
# ansible/install.sh ran (they check and drive the installed appliance).
#
# Without pytest args, as root, this runs (what CI runs after `sudo bash ansible/install.sh`):
#   1. the unit tests under Python 3.9 (Amazon Linux 2023's system python, the oldest supported);
#      a missing 3.9 is an error, not a silent skip (ARCH_TEST_PYTHON_OLDEST=none opts out);
#   2. the whole suite under the host's python3, against the host's container stack;
#   3. the newer-stack lane (Debian hosts): containerd 2.x, Docker 28 and runc 1.3, installed
#      by tests/newer-stack/install.sh into /opt/arch/newstack (Debian's packages untouched),
#      then the integration tests that drive a container stack, run again against it
#      (tests/stack.py; ARCH_TEST_NEWER_STACK=0 opts out).
# With pytest args only step 2 runs, with those args. As root, step 2 gets the installer Amazon
# Linux 2023 would get (make_al2023_controller) for the role's AL2023 check-mode test.
#
# Test-only packages are installed here (a static busybox for the test images, the newer
# stack); the appliance itself (containerd, Docker, runc, CRIU) comes from ansible/install.sh.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
test_venv=${ARCH_TEST_VENV:-/opt/arch/test-venv}
host_python=${ARCH_TEST_PYTHON:-/usr/bin/python3}
oldest_python=${ARCH_TEST_PYTHON_OLDEST:-$(ls -d "$HOME"/.pyenv/versions/3.9.*/bin/python 2>/dev/null | tail -n 1 || true)}
newer_stack_dir=${ARCH_NEWER_STACK_DIR:-/opt/arch/newstack}
# The tests that drive a container stack, and the runc flag tables against its runc.
newer_stack_tests=(
    tests/unit/test_parser.py
    tests/integration/test_passthrough_containerd.py
    tests/integration/test_passthrough_docker.py
    tests/integration/test_checkpoint_restore.py
    tests/integration/test_checkpoint_docker.py
    tests/integration/test_exit_status.py
    tests/integration/test_stack_wiring.py
    tests/integration/test_restore_options.py
    tests/integration/test_operator_cli.py
    tests/integration/test_spot_notice.py
    tests/integration/test_spot_drill.py
    tests/integration/test_docker_reload.py
    tests/integration/test_bounded_restore.py
)

is_root() { [ "$(id -u)" -eq 0 ]; }

# Test-only OS packages: a static busybox for the test containers' images; for the delivery
# tests (tests/integration/delivery) packer, shellcheck, OpenSSH's server and client, and what
# the first-boot test boots its Debian root with (debootstrap, systemd-nspawn, ip); protoc and
# protobuf's own .proto files for the tests that edit CRIU images.
install_test_packages() {
    is_root || return 0
    if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
        if command -v apt-get >/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static file >/dev/null
        elif command -v dnf >/dev/null; then
            dnf install -y -q busybox file >/dev/null
        fi
    fi
    local missing=() command package
    for command in packer:packer shellcheck:shellcheck /usr/sbin/sshd:openssh-server \
        ssh-keygen:openssh-client debootstrap:debootstrap systemd-nspawn:systemd-container \
        ip:iproute2 protoc:protobuf-compiler; do
        package=${command##*:}
        command=${command%:*}
        command -v "$command" >/dev/null 2>&1 || missing+=("$package")
    done
    # CRIU's core.proto imports protobuf's descriptor.proto (tests/integration/harness/criu_protos.py).
    [ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
    # fusepy (the NFS-like storage of tests/integration/harness/nfs_like.py) loads libfuse 2.
    ldconfig -p 2>/dev/null | grep -q 'libfuse\.so\.2' || missing+=(libfuse2)
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

run_unit_tests_oldest_python() {
    if [ "$oldest_python" = none ]; then
        echo "== unit tests under Python 3.9: not run (ARCH_TEST_PYTHON_OLDEST=none)"
        return 0
    fi
    if [ -z "$oldest_python" ] || [ ! -x "$oldest_python" ]; then
        echo "error: no Python 3.9 found (looked for $HOME/.pyenv/versions/3.9.*/bin/python):" \
            "set ARCH_TEST_PYTHON_OLDEST=/path/to/python3.9 (or =none to opt out)" >&2
        return 1
    fi
    echo "== unit tests under $("$oldest_python" --version 2>&1)"
    make_venv "$oldest_python" "$test_venv-py39" test
    "$test_venv-py39/bin/python" -m pytest -q -p no:cacheprovider tests/unit
}

# The installer Amazon Linux 2023 gets: ansible/requirements.txt under python3.11 (what install.sh
# picks there: AL2023's python3 is 3.9), which pins a supported ansible-core; the role's modules
# run on AL2023's python3, 3.9. The role's AL2023 check-mode test runs the role with both.
make_al2023_controller() {
    if [ "$oldest_python" = none ] || [ -z "$oldest_python" ] || [ ! -x "$oldest_python" ]; then
        return 0  # the test then reports the missing module interpreter
    fi
    local controller_python
    controller_python=$(ls -d /usr/bin/python3.11 "$HOME"/.pyenv/versions/3.11.*/bin/python \
        2>/dev/null | tail -n 1 || true)
    if [ -z "$controller_python" ]; then
        return 0  # the test then reports the missing controller
    fi
    local venv="$test_venv-al2023-controller-py311"
    [ -x "$venv/bin/python" ] || "$controller_python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$repo/ansible/requirements.txt"
    export ARCH_TEST_AL2023_ANSIBLE_PLAYBOOK="$venv/bin/ansible-playbook"
    export ARCH_TEST_AL2023_MODULE_PYTHON="$oldest_python"
}

run_newer_stack_lane() {
    if [ "${ARCH_TEST_NEWER_STACK:-1}" = 0 ]; then
        echo "== newer-stack lane: not run (ARCH_TEST_NEWER_STACK=0)"
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "== newer-stack lane: not run (it installs Debian sid's packages; this host has no apt)"
        return 0
    fi
    bash "$repo/tests/newer-stack/install.sh" "$newer_stack_dir"
    echo "== newer-stack lane: $("$newer_stack_dir/bin/containerd" --version | cut -d' ' -f3)," \
        "Docker $("$newer_stack_dir/bin/dockerd" --version | cut -d' ' -f3 | tr -d ,)," \
        "$("$newer_stack_dir/bin/runc" --version | head -n 1)"
    ARCH_TEST_STACK=$newer_stack_dir "$test_venv/bin/python" -m pytest -p no:cacheprovider \
        "${newer_stack_tests[@]}"
}

cd "$repo"
install_test_packages
echo "== full suite under $("$host_python" --version)"
make_venv "$host_python" "$test_venv" test,lint
# As root on an installed appliance nothing should skip: a skip is reported as a failure.
if is_root; then
    export ARCH_TESTS_STRICT=${ARCH_TESTS_STRICT:-1}
    make_al2023_controller
fi
if [ "$#" -gt 0 ]; then
    exec "$test_venv/bin/python" -m pytest "$@"
fi
status=0
run_unit_tests_oldest_python || status=1
"$test_venv/bin/python" -m pytest || status=1
if is_root; then
    run_newer_stack_lane || status=1
fi
exit "$status"
