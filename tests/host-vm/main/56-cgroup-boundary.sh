# cgroup v2 as a tenant boundary: root of a Docker segment (host uid
# 1000000+, full capabilities in the segment's user namespace, under the
# segment's AppArmor profile) cannot lift its caps, raise its share, escape
# its cgroup or reach the host's cgroup namespace, from either place it can
# run: the supervisor's cgroup namespace (what every customer process
# inherits) or the host's (the segment's init stays there; a segment root may
# inject code into it). libvirt hands a user-namespaced domain its whole
# cgroup, limit files included; the agent takes it back (src/cgroups/v2.rs).
# Uses dk-1 (30-docker).

cg=$(segment_cgroup dk-1)
init=$(init_pid dk-1)
supervisor=$(awk '{print $1}' "/proc/$init/task/$init/children")
[ -n "$supervisor" ] || fail "no supervisor under the init of dk-1"
limits="memory.max memory.high memory.low memory.min memory.swap.max cpu.max cpu.weight pids.max io.weight io.bfq.weight io.max cgroup.subtree_control"

# Host root owns the segment's cgroup and its limits; the segment's root
# keeps only what moves processes (runc moves between management and docker).
expect_eq "$(stat -c %u "$cg")" 0 "owner of the segment's cgroup directory"
for f in $limits; do
    [ -e "$cg/$f" ] || continue
    expect_eq "$(stat -c %u "$cg/$f")" 0 "owner of $f"
done
expect_eq "$(stat -c %u "$cg/docker/memory.max")" 0 "owner of the containers' memory.max"
owner=$(stat -c %u "$cg/cgroup.procs")
((owner >= 1000000)) || fail "the segment's root does not own cgroup.procs (uid $owner)"

# as_segment_root PID CMD...: CMD as root of dk-1 in PID's namespaces (user,
# mount, cgroup, ...), from the segment's management cgroup, confined.
as_segment_root() {
    local pid=$1
    shift
    # shellcheck disable=SC2016 # expanded by the inner shell
    sh -c 'cg=$1 pid=$2 p=$3 && shift 3 && echo $$ >"$cg/management/cgroup.procs" &&
        exec aa-exec -p "$p" -- nsenter -t "$pid" -a -- "$@"' _ "$cg" "$pid" "$PROFILE" "$@"
}
expect_eq "$(as_segment_root "$supervisor" id -u)" 0 "uid of the attacker inside"
expect_eq "$(as_segment_root "$supervisor" cat /proc/self/cgroup)" "0::/management" \
    "the attacker's cgroup, seen from the supervisor's namespace"

# try WHERE WHAT CMD: CMD (a shell line) must fail as segment root in WHERE's
# namespaces.
try() {
    local pid=$1 what=$2
    if OUT=$(as_segment_root "$pid" sh -c "$3" 2>&1); then fail "$what: succeeded: $OUT"; fi
    say "ok: $what fails: $(head -c 200 <<<"$OUT")"
}
limit_values() { for f in $limits; do if [ -e "$cg/$f" ]; then echo "$f: $(cat "$cg/$f")"; fi; done; }
values=$(limit_values)
for ns in supervisor init; do
    pid=${!ns}
    for f in memory.max memory.high memory.swap.max memory.min cpu.max cpu.weight io.weight io.bfq.weight io.max pids.max; do
        value=max
        case $f in
            cpu.weight) value=10000 ;;
            io.weight) value="default 10000" ;;
            io.bfq.weight) value="default 1000" ;;
            memory.min) value=4294967296 ;;
            cpu.max) value="max 100000" ;;
            io.max) value="$(stat -c %Hr:%Lr /dev/vda) wbps=1" ;;
        esac
        # A file that is not there could not be written either: no proof.
        [ -f "$cg/$f" ] || fail "the segment's cgroup has no $f"
        try "$pid" "$ns's namespace: write '$value' to the segment's $f" "echo '$value' >/sys/fs/cgroup/$f"
        # Refused at open (not a value the kernel would not parse).
        expect_match "$OUT" "Permission denied|Read-only file system" "refused for its owner or mount"
    done
    try "$pid" "$ns's namespace: lift the containers' memory.max" "echo max >/sys/fs/cgroup/docker/memory.max"
    try "$pid" "$ns's namespace: a cgroup beside the containers'" "mkdir /sys/fs/cgroup/escape"
    try "$pid" "$ns's namespace: a cgroup2 mount of its own" \
        "unshare -m sh -c 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && ls /sys/fs/cgroup/machine.slice'"
done
# The host's cgroup namespace is the init's: as root of the segment's user
# namespace (entered with the supervisor's cgroup namespace, from the host's
# mount namespace so that util-linux nsenter is at hand), joining it fails.
if OUT=$(sh -c 'echo $$ >"$1/management/cgroup.procs" && exec aa-exec -p "$2" -- nsenter -t "$3" -U -C -- \
    nsenter --cgroup="/proc/$4/ns/cgroup" cat /proc/self/cgroup' _ "$cg" "$PROFILE" "$supervisor" "$init" 2>&1); then
    fail "segment root joined the host's cgroup namespace: $OUT"
fi
expect_match "$OUT" "Operation not permitted" "segment root cannot join the host's cgroup namespace"
# The host's hierarchy is nowhere in the segment's mount namespace.
expect_eq "$(as_segment_root "$init" sh -c 'ls /sys/fs/cgroup/machine.slice 2>&1 >/dev/null | wc -l')" 1 \
    "the host's cgroup tree is not mounted in the segment"

expect_eq "$(cat "$cg/memory.max") $(cat "$cg/cpu.max") $(cat "$cg/cpu.weight") $(cat "$cg/memory.min")" \
    "4294967296 200000 100000 100 0" "the segment's caps and shares after the attempts"
expect_eq "$(cat "$cg/pids.max") $(cat "$cg/memory.swap.max") $(cat "$cg/memory.high")" "4096 0 max" \
    "the segment's pids.max, memory.swap.max and memory.high after the attempts"
expect_eq "$(limit_values)" "$values" "every limit file of the segment after the attempts"
expect_eq "$(cat "$(io_weight_file "$(dirname "$cg")")")" "$(io_weight_line "$(dirname "$cg")" "$(sed -n 's/^io_weight = //p' "$CONFIG")")" \
    "the I/O weight of the segment's scope (libvirt's, outside the segment's view) after the attempts"
[ ! -e "$cg/escape" ] || fail "a cgroup escape/ was made"

# The red-team suite's other attacks of segment root (tests/e2e_tenant/
# boundary.rs), from the supervisor's namespaces: the kernel's knobs, the
# clock, kernel memory and I/O ports, and Docker's management files (host
# root's, read-only; a remount in a mount namespace of its own changes
# nothing for dockerd and still cannot write them).
for attack in "the modprobe path:echo /tmp/x >/proc/sys/kernel/modprobe" \
    "the clock:date -s 2030-01-01 >/dev/null && [ \$(date +%Y) = 2030 ]" \
    "read /proc/kcore:head -c1 /proc/kcore >/dev/null" "read /dev/port:head -c1 /dev/port >/dev/null" \
    "write daemon.json:echo {} >/etc/docker/daemon.json" "a file in /etc/docker:echo x >/etc/docker/extra" \
    "replace the server certificate:cp /etc/docker/ca.pem /etc/docker/server-cert.pem" \
    "remount /etc/docker and write daemon.json:unshare -m sh -c 'mount -o remount,rw /etc/docker; echo {} >/etc/docker/daemon.json'"; do
    try "$supervisor" "segment root: ${attack%%:*}" "${attack#*:}"
done
[ "$(date +%Y)" != 2030 ] || fail "the VM's clock was set"

# Docker's own ways to pick a cgroup: refused, or inside the segment's.
expect_fails "docker run --cgroup-parent=/" dk dk-1 run --rm --cgroup-parent=/ busybox:vm true
expect_match "$OUT" SEGMENT-1014 "refused by the policy"
# A build step (and a container) sees "/" in its own cgroup namespace; the
# host sees where it really runs: below the segment's containers' cgroup.
printf 'FROM busybox:vm\nRUN sleep 100003\n' | dk dk-1 build -q -t cgroup-probe:vm - >/dev/null 2>&1 &
build=$!
wait_until 60 "the build step" pgrep -fx "sleep 100003"
step=$(pgrep -fx "sleep 100003")
step_cg=/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$step/cgroup")
kill -KILL "$step" # a container's PID 1 ignores SIGTERM from outside
wait "$build" || true
case $step_cg in
    "$cg"/docker/*) say "ok: the build step ran in $step_cg" ;;
    *) fail "the build step ran in $step_cg, outside the segment's containers' cgroup $cg/docker" ;;
esac
