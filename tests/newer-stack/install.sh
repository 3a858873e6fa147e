#!/usr/bin/env bash
# Install the newer container stack that ECS on Amazon Linux 2023 runs, for the test lane that
# drives ARCH with it on Debian: containerd 2.x (containerd, containerd-shim-runc-v2, ctr) and
# Docker 28 (dockerd, docker) from Debian sid, and a runc 1.3 built from sid's runc source
# package with sid's Go (sid's own runc binary needs glibc 2.38, which Debian 12 lacks).
#
#   sudo bash tests/newer-stack/install.sh [PREFIX]      (default /opt/arch/newstack)
#
# Everything goes into PREFIX/bin; Debian's own containerd, docker.io and runc stay installed
# and untouched. apt is used with a private state directory (sid sources, lists, downloads):
# /etc/apt and the host's package database are never changed. A second run with the same
# versions and the same copy of this script does nothing. Debian hosts only (apt-get).
#
# Environment: ARCH_NEWER_STACK_CACHE (default /var/cache/arch-tests/newer-stack; keeps the Go
# build cache, so a rebuild after a version change is quick), ARCH_NEWER_STACK_MIRROR (default:
# the host's Debian mirror), and the pinned versions below.
set -euo pipefail

prefix=${1:-${ARCH_NEWER_STACK_DIR:-/opt/arch/newstack}}
cache=${ARCH_NEWER_STACK_CACHE:-/var/cache/arch-tests/newer-stack}
containerd_version=${ARCH_NEWER_CONTAINERD_VERSION:-2.1.9+ds1-5}
docker_version=${ARCH_NEWER_DOCKER_VERSION:-28.5.2+dfsg4-5}
runc_source_version=${ARCH_NEWER_RUNC_SOURCE_VERSION:-1.3.6+ds1-1}
go_package=${ARCH_NEWER_GO_PACKAGE:-golang-1.27-go}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# runc's Go build dependencies (its Build-Depends), each a Debian source-only -dev package.
runc_go_dependencies=(
    golang-dbus-dev golang-github-checkpoint-restore-go-criu-dev golang-github-cilium-ebpf-dev
    golang-github-containerd-console-dev golang-github-coreos-go-systemd-dev
    golang-github-cyphar-filepath-securejoin-dev golang-github-docker-go-units-dev
    golang-github-moby-sys-dev golang-github-mrunalp-fileutils-dev
    golang-github-opencontainers-cgroups-dev golang-github-opencontainers-selinux-dev
    golang-github-opencontainers-specs-dev golang-github-seccomp-libseccomp-golang-dev
    golang-github-sirupsen-logrus-dev golang-github-urfave-cli-dev
    golang-github-vishvananda-netlink-dev golang-gocapability-dev golang-golang-x-net-dev
    golang-google-protobuf-dev
)

log() { printf 'newer-stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
command -v apt-get >/dev/null || die "needs apt-get (Debian): this lane installs Debian sid's packages"

stamp_wanted=$(printf '%s\n' "$containerd_version" "$docker_version" "$runc_source_version" \
    "$go_package" "$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)" | sha256sum | cut -d' ' -f1)
binaries=(containerd containerd-shim-runc-v2 ctr dockerd docker runc)
installed() {
    [ "$(cat "$prefix/.stamp" 2>/dev/null)" = "$stamp_wanted" ] || return 1
    local binary
    for binary in "${binaries[@]}"; do [ -x "$prefix/bin/$binary" ] || return 1; done
}
if installed; then
    log "up to date in $prefix"
    exit 0
fi

host_mirror() {  # the first .../debian URI of the host's apt sources, if any
    { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null || true; } | grep -oE '(https?|file)://[^ ]*/debian/?( |$)' | head -n1 \
        | tr -d ' ' || true
}
mirror=${ARCH_NEWER_STACK_MIRROR:-$(host_mirror)}
mirror=${mirror:-http://deb.debian.org/debian}

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/empty"
: >"$apt_dir/status"
cat >"$apt_dir/sid.sources" <<SOURCES
Types: deb deb-src
URIs: $mirror
Suites: sid
Components: main
Signed-By: $keyring
SOURCES
apt_private=(
    -o "Dir::Etc::SourceList=$apt_dir/sid.sources" -o "Dir::Etc::SourceParts=$apt_dir/empty"
    -o "Dir::Etc::Preferences=$apt_dir/empty/none" -o "Dir::Etc::PreferencesParts=$apt_dir/empty"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Cache=$apt_dir" -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root
)
log "reading sid's package lists from $mirror (private apt state in $apt_dir)"
apt-get "${apt_private[@]}" -qq update || die "apt-get update of sid failed"

work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/root"

log "downloading containerd $containerd_version, docker.io + docker-cli $docker_version"
(cd "$work/debs" && apt-get "${apt_private[@]}" -qq download \
    "containerd=$containerd_version" "docker.io=$docker_version" "docker-cli=$docker_version") \
    || die "downloading the sid packages failed (are these versions still in sid?)"

# runc: build dependencies from the host's own suite; libseccomp is linked dynamically.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    gcc libc6-dev libseccomp-dev pkg-config patch xz-utils >/dev/null \
    || die "installing runc's build dependencies failed"
log "downloading $go_package, runc's Go dependencies and the runc $runc_source_version source"
(cd "$work/debs" && apt-get "${apt_private[@]}" -qq download "$go_package" \
    "${go_package%-go}-src" "${runc_go_dependencies[@]}") \
    || die "downloading Go and runc's Go dependencies failed"
# The dependencies' own dependencies (also -dev source packages), as apt resolves them.
mapfile -t indirect < <(apt-cache "${apt_private[@]}" depends --recurse --no-recommends \
    --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
    "${runc_go_dependencies[@]}" | grep -E '^golang-.*-dev$' | sort -u)
(cd "$work/debs" && apt-get "${apt_private[@]}" -qq download "${indirect[@]}") \
    || die "downloading runc's indirect Go dependencies failed"
(cd "$work" && apt-get "${apt_private[@]}" -qq source --download-only "runc=$runc_source_version") \
    || die "downloading the runc $runc_source_version source package failed"

for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done

log "building runc from the $runc_source_version source with Debian's patches"
mkdir -p "$work/src" "$work/gopath/src/github.com/opencontainers"
tar -xf "$work"/runc_*.orig.tar.* -C "$work/src"
tar -xf "$work"/runc_*.debian.tar.* -C "$work/src"
source_dir=$(find "$work/src" -mindepth 1 -maxdepth 1 -type d ! -name debian | head -n1)
while read -r patch_name; do
    case $patch_name in ''|'#'*) continue ;; esac
    patch -d "$source_dir" -p1 -s <"$work/src/debian/patches/$patch_name" \
        || die "Debian patch $patch_name does not apply"
done <"$work/src/debian/patches/series"
ln -s "$source_dir" "$work/gopath/src/github.com/opencontainers/runc"
goroot=$(find "$work/root/usr/lib" -mindepth 1 -maxdepth 1 -name 'go-*' | head -n1)
[ -x "$goroot/bin/go" ] || die "no Go toolchain in $go_package"
[ -e "$goroot/src" ] || ln -s "../../share/$(basename "$goroot")/src" "$goroot/src"
runc_version=$(cat "$source_dir/VERSION")
started=$(date +%s)
(
    cd "$work/gopath/src/github.com/opencontainers/runc"
    export GOROOT="$goroot" PATH="$goroot/bin:$PATH" GOTOOLCHAIN=local GOFLAGS= GO111MODULE=off
    export GOPATH="$work/gopath:$work/root/usr/share/gocode" GOCACHE="$cache/go-build"
    go build -trimpath -buildmode=pie -tags "seccomp urfave_cli_no_docs" \
        -ldflags "-X main.version=$runc_version -X main.gitCommit=debian-$runc_source_version" \
        -o "$work/runc" .
) || die "building runc $runc_version failed"
log "runc $runc_version built in $(($(date +%s) - started)) s"

mkdir -p "$prefix/bin"
install -m 0755 "$work/root/usr/bin/containerd" "$work/root/usr/bin/containerd-shim-runc-v2" \
    "$work/root/usr/bin/ctr" "$work/root/usr/sbin/dockerd" "$work/root/usr/bin/docker" \
    "$work/runc" "$prefix/bin/"
for binary in "${binaries[@]}"; do
    version_flag=--version
    [ "$binary" = containerd-shim-runc-v2 ] && version_flag=-v
    "$prefix/bin/$binary" "$version_flag" >/dev/null 2>&1 || die "$prefix/bin/$binary does not run here"
done
printf '%s\n' "$stamp_wanted" >"$prefix/.stamp"
log "installed in $prefix/bin: $("$prefix/bin/containerd" --version | cut -d' ' -f3),"\
" $("$prefix/bin/dockerd" --version | cut -d' ' -f3 | tr -d ,), $("$prefix/bin/runc" --version | head -n1)"
