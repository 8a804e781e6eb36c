# After `systemctl reboot`: systemd started the agent by itself, the agent
# started every segment that was running, with its address and under its
# profile, and Docker restarted the --restart always container.

[ -f "$STATE/before-reboot" ] || fail "main/90-before-reboot did not run"
. "$STATE/before-reboot"
[ "$(cat /proc/sys/kernel/random/boot_id)" != "$boot_id" ] || fail "this is the same boot"
say "ok: a new boot"
expect_eq "$(systemctl is-active segment-agent)" active "agent after the reboot"
running() { rpc GetSegment "{\"segment_id\":\"$1\"}" | grep -q SEGMENT_STATE_RUNNING; }
wait_until 120 "rb-1 running" running rb-1
wait_until 120 "dk-1 running" running dk-1
expect_eq "$(address_of rb-1)" "$rb1_address" "address of rb-1"
expect_eq "$(address_of dk-1)" "$dk1_address" "address of dk-1"
for id in rb-1 dk-1; do
    expect_eq "$(label_of "$(init_pid "$id")")" "$PROFILE (enforce)" "label of $id's init"
    busybox ping -c 1 -W 5 "$(address_of "$id")" >/dev/null || fail "$id does not answer ping"
done
wait_until 120 "container web running again" pgrep -fx "sleep 100001"
expect_eq "$(dk dk-1 inspect -f '{{.State.Running}}' web)" true "web runs again"
expect_eq "$(label_of "$(pgrep -fx 'sleep 100001')")" "$CONTAINER_LABEL" "label of web"
