# The same host booted with apparmor=0: the agent, configured to enforce,
# refuses to run segments unconfined.

expect_match "$(cat /proc/cmdline)" "apparmor=0" "kernel command line"
expect_eq "$(aa-enabled 2>&1 || true)" "No - disabled at boot." "aa-enabled"
expect_fails "segment-agent check" segment-agent check --config "$CONFIG"
expect_match "$OUT" "AppArmor is not available" "check names AppArmor"
# The agent is Type=notify: "activating" while it recovers the segments the
# earlier phases left (none can start here), then "active".
agent_active() { [ "$(systemctl is-active segment-agent)" = active ]; }
wait_until 120 "the agent active" agent_active
say "ok: the agent still serves its API"
err=$(rpc_error CreateSegment '{"segment_id":"off-1","cluster_id":"vm","image":"dev"}')
expect_match "$err" "Code: FailedPrecondition" "CreateSegment"
expect_match "$err" "AppArmor is not available on this host" "its message"
expect_match "$(rpc GetHost | jq -r .apparmor)" "unavailable|not available" "GetHost's AppArmor state"
expect_fails "domain of off-1" virsh -q -c lxc:/// domuuid seg-off-1
