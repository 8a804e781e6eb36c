# Docker in a segment under AppArmor: dockerd, containerd and runc run under
# the agent's profile, containers under docker-default, and the customer's
# Docker works (run, build, named volume, bind under /var/lib/docker,
# --restart always). The containers' cgroups: 50-oom.
# Leaves segment dk-1 and its container "web" for the tests after it.

create_docker dk-1 >/dev/null
import_busybox dk-1

expect_eq "$(dk dk-1 run --rm busybox:vm cat /proc/self/attr/current | tr -d '\0')" \
    "$CONTAINER_LABEL" "a container's own view of its label"

dk dk-1 rm -f web >/dev/null 2>&1 || true
dk dk-1 run -d --name web --restart always busybox:vm sleep 100001 >/dev/null
wait_until 30 "container web" pgrep -fx "sleep 100001"
web=$(pgrep -fx "sleep 100001")
expect_eq "$(label_of "$web")" "$CONTAINER_LABEL" "label of the container's process (host PID $web)"
expect_eq "$(dk dk-1 exec web cat /proc/self/attr/current | tr -d '\0')" "$CONTAINER_LABEL" \
    "a process docker exec starts in the container"
expect_fails "a container under another profile" dk dk-1 run --rm --security-opt apparmor=unconfined busybox:vm true
for pid in $(segment_pids dk-1); do
    [ "$pid" = "$web" ] && continue
    # A short-lived process may be gone by now.
    label=$(label_of "$pid" 2>/dev/null) || continue
    case $label in
        "$PROFILE (enforce)" | "$CONTAINER_LABEL") ;;
        *) fail "PID $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline")) runs under '$label'" ;;
    esac
done
dockerd=$(for pid in $(segment_pids dk-1); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then echo "$pid"; fi
done)
[ -n "$dockerd" ] || fail "no dockerd in dk-1"
expect_eq "$(label_of "$dockerd")" "$PROFILE (enforce)" "dockerd's label"

# A build (the classic builder of dockerd 20.10), a named volume, a bind.
printf 'FROM busybox:vm\nRUN echo built >/built\n' | dk dk-1 build -q -t built:vm - >/dev/null
expect_eq "$(dk dk-1 run --rm built:vm cat /built)" built "a file made by a build step"
dk dk-1 volume create data >/dev/null
dk dk-1 run --rm -v data:/data busybox:vm sh -c 'echo kept >/data/f'
expect_eq "$(dk dk-1 run --rm -v data:/data busybox:vm cat /data/f)" kept "a named volume"
dk dk-1 run --rm -v /var/lib/docker/binds/b1:/data busybox:vm sh -c 'echo bound >/data/f'
expect_eq "$(dk dk-1 run --rm -v /var/lib/docker/binds/b1:/data busybox:vm cat /data/f)" bound \
    "a bind under /var/lib/docker"
expect_fails "a bind outside /var/lib/docker" dk dk-1 run --rm -v /etc:/data busybox:vm true
expect_match "$OUT" SEGMENT-1011 "refused by the policy"

# docker stop: SIGTERM, then SIGKILL (busybox's sleep as PID 1 ignores the
# first) from the segment's containerd to a docker-default process.
dk dk-1 rm -f stopper >/dev/null 2>&1 || true
dk dk-1 run -d --name stopper busybox:vm sleep 100002 >/dev/null
m=$(mark)
dk dk-1 stop -t 2 stopper >/dev/null
expect_eq "$(dk dk-1 inspect -f '{{.State.Running}}' stopper)" false "stopper after docker stop"
expect_eq "$(audit_since "$m" | grep 'operation="signal"' || true)" "" "signal denials during docker stop"

# --restart always: killed from the host, the container comes back.
kill -9 "$web"
wait_until 60 "web restarted" sh -c "pgrep -fx 'sleep 100001' | grep -vx $web"
expect_eq "$(dk dk-1 inspect -f '{{.RestartCount}}' web)" 1 "restart count of web"
expect_eq "$(label_of "$(pgrep -fx 'sleep 100001')")" "$CONTAINER_LABEL" "label after the restart"
