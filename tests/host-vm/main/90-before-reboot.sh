# Sets up what after-reboot/ checks: a busybox segment, the Docker segment
# dk-1 with its --restart always container "web", their addresses, the boot.

create_dev rb-1 >/dev/null
pgrep -fx "sleep 100001" >/dev/null || fail "container web of dk-1 is not running"
{
    echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
    echo "rb1_address=$(address_of rb-1)"
    echo "dk1_address=$(address_of dk-1)"
} >"$STATE/before-reboot"
cat "$STATE/before-reboot" >&2
sync
