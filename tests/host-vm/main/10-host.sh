# The host as the README's install left it: AppArmor enforcing with the
# agent's profile, libvirtd confined by its own, cgroup v2, systemd as PID 1,
# the agent active under systemd, its preflight passing.

expect_eq "$(cat /proc/1/comm)" systemd "PID 1"
expect_eq "$(stat -f -c %T /sys/fs/cgroup)" cgroup2fs "/sys/fs/cgroup filesystem"
expect_eq "$(aa-enabled)" Yes "aa-enabled"

status=$(aa-status)
expect_match "$status" "^[0-9]+ profiles are in enforce mode" "aa-status reports enforce mode"
enforced=$(sed -n '/profiles are in enforce mode/,/profiles are in complain mode/p' <<<"$status")
expect_match "$enforced" "^   $PROFILE\$" "$PROFILE is loaded in enforce mode"
expect_match "$enforced" "^   libvirtd\$" "libvirtd's profile is loaded in enforce mode"
expect_match "$status" "/usr/sbin/libvirtd \([0-9]+\) libvirtd" "libvirtd runs confined"

expect_eq "$(systemctl is-active segment-agent)" active "segment-agent.service"
expect_eq "$(systemctl is-enabled segment-agent)" enabled "segment-agent.service enabled"
expect_eq "$(systemctl show -P Type segment-agent)" notify "unit Type"
segment-agent check --config "$CONFIG"
agent_serving || fail "the agent's health check is not SERVING"

# The agent installed libvirt's LXC template: the trampoline into its profile.
expect_eq "$(sha256sum </etc/apparmor.d/libvirt/TEMPLATE.lxc)" \
    "$(sha256sum </root/segment-agent/apparmor/libvirt/TEMPLATE.lxc)" "TEMPLATE.lxc is the agent's"
expect_eq "$(sha256sum </etc/apparmor.d/$PROFILE)" \
    "$(sha256sum </root/segment-agent/apparmor/$PROFILE)" "the installed profile is the repo's"
expect_eq "$(rpc GetHost | jq -r .apparmor)" "enforce ($PROFILE)" "GetHost's AppArmor state"
