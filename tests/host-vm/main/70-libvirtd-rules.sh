# The README's two lines in /etc/apparmor.d/local/usr.sbin.libvirtd are
# needed (without them libvirtd may not signal a confined segment: stop and
# delete fail, with AppArmor's audit line) and sufficient (with them both work).

local_rules=/etc/apparmor.d/local/usr.sbin.libvirtd
grep -qx "signal (read, send) peer=$PROFILE," "$local_rules" || fail "the signal rule is not in $local_rules"
grep -qx "ptrace (read, trace) peer=$PROFILE," "$local_rules" || fail "the ptrace rule is not in $local_rules"
cp "$local_rules" "$STATE/libvirtd.local"
restore() { cp "$STATE/libvirtd.local" "$local_rules" && apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd; }
trap restore EXIT

create_dev lr-1 >/dev/null
{ grep -v "peer=$PROFILE," "$STATE/libvirtd.local" || true; } >"$local_rules"
apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd
m=$(mark)
expect_fails "StopSegment without the local rules" rpc StopSegment '{"segment_id":"lr-1","timeout_seconds":2}'
expect_denied "$m" 'operation="signal".* profile="libvirtd".*peer="segment-agent-segment"' \
    "libvirtd's signal to the segment"
expect_fails "DeleteSegment without the local rules" rpc DeleteSegment '{"segment_id":"lr-1"}'
[ -e "/proc/$(init_pid lr-1)" ] || fail "lr-1 stopped although libvirtd may not signal it"

restore
trap - EXIT
# The cut-off delete is finished by the next one; a stop works again.
rpc DeleteSegment '{"segment_id":"lr-1"}' >/dev/null
expect_fails "lr-1 gone after DeleteSegment with the rules" virsh -q -c lxc:/// domuuid seg-lr-1
create_dev lr-2 >/dev/null
rpc StopSegment '{"segment_id":"lr-2","timeout_seconds":20}' >/dev/null
expect_eq "$(rpc GetSegment '{"segment_id":"lr-2"}' | jq -r .state)" SEGMENT_STATE_STOPPED "state after StopSegment with the rules"
rpc DeleteSegment '{"segment_id":"lr-2"}' >/dev/null
