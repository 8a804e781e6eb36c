# Helpers of the production-like host suite; `run` sources this before each
# test. Runs inside the VM as root, against the agent that systemd runs.
# shellcheck shell=bash
set -euo pipefail

SOCK=/run/segment-agent/agent.sock
CONFIG=/etc/segment-agent/agent.toml
PROFILE=segment-agent-segment
# A container's label: docker-default stacked on the segment's profile (the
# image's runc wrapper asks for it; no-new-privileges allows only a stack).
CONTAINER_LABEL="docker-default//&segment-agent-segment (enforce)"
# Shared by the phases of one run (it survives the reboot).
STATE=/var/lib/host-vm-tests
mkdir -p "$STATE"

say() { printf '%s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# expect_eq ACTUAL EXPECTED WHAT
expect_eq() { [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"; say "ok: $3 = '$2'"; }
# expect_match TEXT EXTENDED-REGEX WHAT
expect_match() { grep -Eq -- "$2" <<<"$1" || fail "$3: '$1' does not match /$2/"; say "ok: $3"; }
# expect_no_match TEXT EXTENDED-REGEX WHAT
expect_no_match() { ! grep -Eq -- "$2" <<<"$1" || fail "$3: '$1' matches /$2/"; say "ok: $3"; }
# expect_fails WHAT CMD...: CMD must exit non-zero; its output is left in $OUT.
expect_fails() {
    local what=$1
    shift
    if OUT=$("$@" 2>&1); then fail "$what: succeeded: $OUT"; fi
    say "ok: $what fails: $(head -c 300 <<<"$OUT")"
}

# wait_until SECONDS WHAT CMD...: polls CMD every half second.
wait_until() {
    local seconds=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after $seconds s waiting for $what"
        sleep 0.5
    done
}

# ---- the agent's API ----

# G JSON METHOD: grpcurl on the agent's socket (flags before the address).
G() { grpcurl -plaintext -authority localhost -max-time 300 -d "$1" -unix "$SOCK" "$2"; }
# rpc METHOD [JSON]: the response on stdout; fails on an error status.
rpc() { G "${2:-{\}}" "segment.agent.v1.SegmentAgent/$1"; }
# rpc_error METHOD JSON: the error's "Code: ..." and "Message: ..." lines; fails on success.
rpc_error() {
    local out
    if out=$(G "$2" "segment.agent.v1.SegmentAgent/$1" 2>&1); then fail "$1 succeeded: $out"; fi
    printf '%s\n' "$out"
}
agent_serving() { G '{}' grpc.health.v1.Health/Check | grep -q '"SERVING"'; }

# ---- segments ----

# create_dev ID [MEMORY_MIB]: a busybox segment; prints the segment (JSON).
create_dev() {
    local seg
    seg=$(rpc CreateSegment "{\"segment_id\":\"$1\",\"cluster_id\":\"vm\",\"image\":\"dev\",\"flavor\":{\"memory_mib\":${2:-0}}}")
    expect_eq "$(jq -r .state <<<"$seg")" SEGMENT_STATE_RUNNING "state of new segment $1"
    remember_address "$1" "$seg"
    printf '%s\n' "$seg"
}

# The cluster CA and a customer client certificate of it, made once per run.
make_ca() {
    local d=$STATE/ca
    [ -f "$d/cert.pem" ] && return 0
    mkdir -p "$d"
    (
        cd "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -keyout ca-key.pem -out ca.pem -subj /CN=cluster-vm \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem \
            -out client.csr -subj /CN=customer
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
            -out cert.pem -extfile <(printf 'extendedKeyUsage=clientAuth\n')
    ) >/dev/null 2>&1
}

# create_docker ID [MEMORY_MIB [SWARM]]: a Docker segment (SWARM: the
# request's swarm part, JSON); prints the segment (JSON).
create_docker() {
    make_ca
    local req seg
    req=$(jq -n --arg id "$1" --argjson mem "${2:-0}" --argjson swarm "${3:-null}" \
        --rawfile ca "$STATE/ca/ca.pem" --rawfile key "$STATE/ca/ca-key.pem" \
        '{segment_id: $id, cluster_id: "vm", image: "docker", flavor: {memory_mib: $mem},
          tls: {ca_cert_pem: $ca, ca_key_pem: $key}}
         + (if $swarm == null then {} else {swarm: $swarm} end)')
    seg=$(rpc CreateSegment "$req")
    expect_eq "$(jq -r .state <<<"$seg")" SEGMENT_STATE_RUNNING "state of new Docker segment $1"
    remember_address "$1" "$seg"
    printf '%s\n' "$seg"
}

# A segment keeps its address for its life; every create above writes it
# down, so `dk` (hundreds of calls) does not ask the agent each time (a
# grpcurl call is 0.7 s in the emulated VM, the docker CLI itself 0.4 s).
remember_address() {
    mkdir -p "$STATE/addresses"
    jq -r .publicIpv4 <<<"$2" >"$STATE/addresses/$1"
}
address_of() {
    local known=$STATE/addresses/$1 seg
    if [ -s "$known" ]; then
        cat "$known"
        return
    fi
    seg=$(rpc GetSegment "{\"segment_id\":\"$1\"}")
    remember_address "$1" "$seg"
    jq -r .publicIpv4 <<<"$seg"
}

# The customer's docker CLI against segment ID over mutual TLS.
dk() {
    local id=$1
    shift
    docker --tlsverify --tlscacert "$STATE/ca/ca.pem" --tlscert "$STATE/ca/cert.pem" \
        --tlskey "$STATE/ca/key.pem" -H "tcp://$(address_of "$id"):2376" "$@"
}

# A 2 MB busybox image in segment ID's Docker (no image can be pulled here).
import_busybox() {
    local root=$STATE/busybox-rootfs
    if [ ! -d "$root" ]; then
        mkdir -p "$root"/{bin,tmp,proc,sys,dev,etc}
        cp /bin/busybox "$root/bin/"
        for a in sh ls cat echo sleep dd mount mkdir true false id grep head httpd; do ln -sf busybox "$root/bin/$a"; done
    fi
    tar -C "$root" -c . | dk "$1" import - busybox:vm >/dev/null
}

# init_pid ID: the segment's init, the only child of its libvirt_lxc controller.
init_pid() {
    local ctl
    ctl=$(virsh -q -c lxc:/// domid "seg-$1")
    [ -n "$ctl" ] && [ "$ctl" != - ] || fail "seg-$1 is not running"
    awk '{print $1}' "/proc/$ctl/task/$ctl/children"
}

# The segment's capped cgroup v2 directory: the nearest one above (or at)
# its init's that carries a memory limit (the init may sit in a child).
segment_cgroup() {
    local pid dir
    pid=$(init_pid "$1")
    dir=/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
    while [ "$dir" != /sys/fs/cgroup ]; do
        if [ -f "$dir/memory.max" ] && [ "$(cat "$dir/memory.max")" != max ]; then
            printf '%s\n' "$dir"
            return
        fi
        dir=$(dirname "$dir")
    done
    fail "no cgroup with a memory limit above PID $pid of $1"
}

# Every process of the segment: its cgroup tree (its init, dockerd, the
# containers...) but for libvirt's controller, which libvirt puts there too.
segment_pids() {
    local ctl
    ctl=$(virsh -q -c lxc:/// domid "seg-$1")
    find "$(segment_cgroup "$1")" -name cgroup.procs -exec cat {} + | grep -vx "$ctl" | sort -n
}

# io_weight_file CGROUP: where the segments' disk scheduler reads CGROUP's
# weight: BFQ's file (the segments' disk runs BFQ in this VM; libvirt writes
# it when it exists), else the io controller's.
io_weight_file() { if [ -e "$1/io.bfq.weight" ]; then echo "$1/io.bfq.weight"; else echo "$1/io.weight"; fi; }
# io_weight_line CGROUP WEIGHT: what that file holds for libvirt's weight
# WEIGHT. libvirt sets it through systemd (the scope's IOWeight=), which maps
# io.weight's scale (1..10000, 100 the default) onto BFQ's (1..1000): above
# 100, 100 + (WEIGHT - 100) * 900 / 9900 (300 is 118).
io_weight_line() {
    local w=$2
    if [ -e "$1/io.bfq.weight" ] && ((w > 100)); then w=$((100 + (w - 100) * 900 / 9900)); fi
    echo "default $w"
}

label_of() { tr -d '\0' <"/proc/$1/attr/current"; }

# in_segment ID CMD...: CMD as a process of the segment: in its cgroup, its
# namespaces and under its AppArmor profile, but with the VM root's full
# capabilities (more than libvirt leaves a segment, so in a denial test
# AppArmor alone decides). Not `virsh lxc-enter-namespace`: libvirt 9.0 writes
# the new process into the domain's scope, which cgroup v2 refuses (EBUSY:
# the scope has controllers enabled), with or without --noseclabel.
in_segment() {
    local id=$1 init
    shift
    init=$(init_pid "$id")
    # shellcheck disable=SC2016 # expanded by the inner shell
    sh -c 'p=$1 cg=$2 pid=$3 && shift 3 && echo $$ >"$cg/cgroup.procs" &&
        exec aa-exec -p "$p" -- nsenter -t "$pid" -a -- "$@"' _ \
        "$PROFILE" "/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$init/cgroup")" "$init" "$@"
}

# ---- AppArmor's audit trail ----

# mark: a unique line in the kernel log; audit_since MARK prints the AppArmor
# audit lines logged after it.
mark() {
    local m="host-vm-mark-$RANDOM$RANDOM"
    echo "$m" >/dev/kmsg
    printf '%s\n' "$m"
}
audit_since() { dmesg | sed -n "/$1/,\$p" | grep 'apparmor="' || true; }

# expect_denied MARK PATTERN WHAT: an AppArmor DENIED line matching PATTERN
# was logged after MARK.
expect_denied() {
    local lines
    lines=$(audit_since "$1" | grep 'apparmor="DENIED"' || true)
    grep -Eq -- "$2" <<<"$lines" || fail "$3: no AppArmor denial matching /$2/ after $1; audit: ${lines:-none}"
    say "ok: $3; AppArmor: $(grep -E -- "$2" <<<"$lines" | head -1 | sed 's/^\[[^]]*\] //')"
}

# AppArmor logs a denied capability once per CPU for the same profile (a
# per-CPU cache of the last denial). A denial under a throwaway profile on
# every CPU clears it, so the next capability denial is logged.
reset_capability_audit() {
    local cpu
    printf 'profile host-vm-cap-reset flags=(attach_disconnected) { /** rmix, capability, audit deny capability sys_module, }\n' |
        apparmor_parser -r
    cp /bin/true /tmp/host-vm-cap-reset.ko
    for cpu in $(seq 0 $(($(nproc) - 1))); do
        taskset -c "$cpu" aa-exec -p host-vm-cap-reset -- insmod /tmp/host-vm-cap-reset.ko >/dev/null 2>&1 || true
    done
}
