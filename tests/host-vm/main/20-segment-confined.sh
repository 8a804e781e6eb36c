# Every process of a segment runs under the agent's profile, reached through
# libvirt's per-domain profile generated from the agent's trampoline template;
# the cgroup v2 caps of a default segment are the flavor's; a stop works
# (libvirtd may signal the segment: the README's local rules).

seg=$(create_dev conf-1)
uuid=$(virsh -q -c lxc:/// domuuid seg-conf-1)
expect_match "$(virsh -q -c lxc:/// dumpxml seg-conf-1)" \
    "<seclabel type='dynamic' model='apparmor' relabel='yes'>" "the domain's label is dynamic"
generated=/etc/apparmor.d/libvirt/libvirt-$uuid
expect_match "$(cat "$generated")" "^profile libvirt-$uuid " "libvirt generated the domain's profile"
expect_match "$(cat "$generated")" "^  /\*\* Px -> $PROFILE,\$" "from the agent's trampoline"

# A few processes more than the init: busybox's sleep and a shell started inside.
in_segment conf-1 /bin/sh -c 'sleep 300 </dev/null >/dev/null 2>&1 &'
pids=$(segment_pids conf-1)
[ "$(wc -l <<<"$pids")" -ge 3 ] || fail "expected at least 3 processes in the segment, got: $pids"
for pid in $pids; do
    expect_eq "$(label_of "$pid")" "$PROFILE (enforce)" "label of PID $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline"))"
done
expect_eq "$(in_segment conf-1 /bin/cat /proc/self/attr/current | tr -d '\0')" "$PROFILE (enforce)" \
    "label of a process entered into the segment"

# cgroup v2 caps of the default flavor (4096 MiB, 2 vCPUs).
cg=$(segment_cgroup conf-1)
say "segment cgroup: $cg"
expect_eq "$(cat "$cg/memory.max")" 4294967296 "memory.max"
expect_eq "$(cat "$cg/cpu.max")" "200000 100000" "cpu.max"
for pid in $pids; do
    case $(sed -n 's/^0:://p' "/proc/$pid/cgroup") in
        "${cg#/sys/fs/cgroup}" | "${cg#/sys/fs/cgroup}"/*) ;;
        *) fail "PID $pid is outside the segment's cgroup" ;;
    esac
done

# Stop (SIGTERM from libvirtd to a confined init), start, delete.
rpc StopSegment '{"segment_id":"conf-1","timeout_seconds":20}' >/dev/null
expect_eq "$(rpc GetSegment '{"segment_id":"conf-1"}' | jq -r .state)" SEGMENT_STATE_STOPPED "state after StopSegment"
rpc StartSegment '{"segment_id":"conf-1"}' >/dev/null
expect_eq "$(label_of "$(init_pid conf-1)")" "$PROFILE (enforce)" "label of the init after a restart"
rpc DeleteSegment '{"segment_id":"conf-1"}' >/dev/null
expect_fails "domain gone after DeleteSegment" virsh -q -c lxc:/// domuuid seg-conf-1
