# The agent under systemd: Type=notify readiness, restarts and SIGKILL leave
# every segment running with the same init PID, Restart=on-failure brings
# the agent back, and the journal holds plain text.

create_dev sd-1 >/dev/null
declare -A init
for id in sd-1 dk-1; do init[$id]=$(init_pid "$id"); done
same_inits() {
    local id
    for id in "${!init[@]}"; do
        expect_eq "$(init_pid "$id")" "${init[$id]}" "init PID of $id $1"
        expect_eq "$(rpc GetSegment "{\"segment_id\":\"$id\"}" | jq -r .state)" SEGMENT_STATE_RUNNING "state of $id $1"
    done
}

# systemctl returns only once the agent said READY: the socket answers at once.
systemctl stop segment-agent
expect_eq "$(systemctl is-active segment-agent || true)" inactive "agent after systemctl stop"
systemctl start segment-agent
agent_serving || fail "the agent did not answer right after systemctl start returned"
say "ok: the agent answers as soon as systemctl start returns"
same_inits "after stop and start"

systemctl restart segment-agent
agent_serving || fail "the agent did not answer right after systemctl restart returned"
same_inits "after systemctl restart"

main=$(systemctl show -P MainPID segment-agent)
restarts=$(systemctl show -P NRestarts segment-agent)
systemctl kill -s KILL segment-agent
wait_until 30 "systemd to restart the agent" sh -c \
    "[ \$(systemctl show -P NRestarts segment-agent) -gt $restarts ] && systemctl is-active -q segment-agent"
[ "$(systemctl show -P MainPID segment-agent)" != "$main" ] || fail "MainPID unchanged after SIGKILL"
wait_until 30 "the restarted agent to answer" agent_serving
say "ok: Restart=on-failure brought the agent back after SIGKILL"
same_inits "after SIGKILL"

journal=$(journalctl -b -u segment-agent -o cat --no-pager)
[ -n "$journal" ] || fail "the journal holds nothing from the agent"
if grep -q $'\x1b' <<<"$journal"; then fail "the agent's journal holds terminal escape codes"; fi
expect_match "$journal" "AppArmor profile" "the journal names the AppArmor profile"
say "ok: $(wc -l <<<"$journal") journal lines, plain text"
rpc DeleteSegment '{"segment_id":"sd-1"}' >/dev/null
