# Docker's containers stay under their segment's caps: a container's cgroup
# lies under the segment's capped one, and an allocation in a container past
# the segment's memory cap is OOM-killed while the segment and its Docker keep
# running. Uses dk-1 and its container "web" (30-docker).

oom_kills() { awk '/^oom_kill / {print $2}' "$1/memory.events"; }

# dk-1's container "web" (30-docker) is under the cgroup that carries the caps.
cg=$(segment_cgroup dk-1)
expect_eq "$(cat "$cg/memory.max") $(cat "$cg/cpu.max")" "4294967296 200000 100000" "caps of dk-1"
web=$(pgrep -fx "sleep 100001") || fail "container web of dk-1 is not running"
container_cg=/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$web/cgroup")
say "container cgroup: $container_cg"
case $container_cg in
    "$cg"/*) say "ok: the container's cgroup is under the segment's" ;;
    *) fail "the container's cgroup $container_cg is outside the segment's capped cgroup $cg (memory.max there: $(cat "$container_cg/memory.max"), above it: $(cat "$(dirname "$container_cg")/memory.max"))" ;;
esac

create_docker oomdk-1 512 >/dev/null
import_busybox oomdk-1
cg=$(segment_cgroup oomdk-1)
expect_eq "$(cat "$cg/memory.max")" 536870912 "memory.max of a 512 MiB Docker segment"
dk oomdk-1 rm -f hog >/dev/null 2>&1 || true
expect_fails "container: allocate 700 MiB" dk oomdk-1 run --name hog busybox:vm dd if=/dev/zero of=/dev/null bs=700M count=1
expect_eq "$(dk oomdk-1 inspect -f '{{.State.OOMKilled}} {{.State.ExitCode}}' hog)" "true 137" "the container was OOM-killed"
expect_eq "$(rpc GetSegment '{"segment_id":"oomdk-1"}' | jq -r .state)" SEGMENT_STATE_RUNNING "the Docker segment after the kill"
dk oomdk-1 info >/dev/null || fail "Docker of oomdk-1 does not answer after the kill"
rpc DeleteSegment '{"segment_id":"oomdk-1"}' >/dev/null
