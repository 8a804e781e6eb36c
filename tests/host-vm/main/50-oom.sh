# cgroup v2 caps hold for a segment: an allocation past its memory cap is
# killed by the OOM killer inside the segment's cgroup, and the segment keeps
# running. Docker's containers: 55-docker-cgroups.

oom_kills() { awk '/^oom_kill / {print $2}' "$1/memory.events"; }

create_dev oom-1 256 >/dev/null
cg=$(segment_cgroup oom-1)
expect_eq "$(cat "$cg/memory.max")" 268435456 "memory.max of a 256 MiB segment"
before=$(oom_kills "$cg")
expect_fails "segment: allocate 400 MiB" in_segment oom-1 dd if=/dev/zero of=/dev/null bs=400M count=1
expect_eq "$(oom_kills "$cg")" "$((before + 1))" "OOM kills in the segment's cgroup"
expect_eq "$(rpc GetSegment '{"segment_id":"oom-1"}' | jq -r .state)" SEGMENT_STATE_RUNNING "the segment after the kill"
rpc DeleteSegment '{"segment_id":"oom-1"}' >/dev/null

