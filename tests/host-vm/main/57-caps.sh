# Issue 10's caps on cgroup v2, on segments the VM's agent made: the cgroup
# files read back the flavor (pids.max, memory.max, cpu.max, io.weight,
# memory.swap.max 0) and the port's nftables limits its network_mbit; a
# bounded fork loop stops at pids.max while a neighbour still forks; with
# swap on, an allocation past the memory cap is OOM-killed, never swapped.
# A fill stops at the disk quota (btrfs simple quotas on the segments' own
# disk) while the neighbour and the host keep writing.
# That the segment's root cannot raise these files: 56-cgroup-boundary.

read_cg() { cat "$1/$2"; }
# The VM's installed config (install-agent sets io_weight off the default).
io_weight=$(sed -n 's/^io_weight = //p' "$CONFIG")
[ -n "$io_weight" ] && [ "$io_weight" != 100 ] ||
    fail "the VM's io_weight is '${io_weight}': the kernel's default, a read-back could not fail"

flavor='{"memory_mib":256,"vcpus":1,"disk_gib":1,"pids":128,"network_mbit":40}'
seg=$(rpc CreateSegment "{\"segment_id\":\"cap-a\",\"cluster_id\":\"vm\",\"image\":\"dev\",\"flavor\":$flavor}")
remember_address cap-a "$seg"
expect_eq "$(jq -r .state <<<"$seg")" SEGMENT_STATE_RUNNING "state of cap-a"
expect_eq "$(jq -c '.flavor | [.memoryMib, .vcpus, .diskGib, .pids, .networkMbit]' <<<"$seg")" \
    "[256,1,1,128,40]" "GetSegment's flavor of cap-a"
create_dev cap-b >/dev/null

# ---- the cgroup files ----
a=$(segment_cgroup cap-a)
b=$(segment_cgroup cap-b)
say "cap-a's cgroup: $a"
expect_eq "$(read_cg "$a" memory.max)" 268435456 "cap-a memory.max (256 MiB)"
expect_eq "$(read_cg "$a" cpu.max)" "100000 100000" "cap-a cpu.max (1 vCPU)"
expect_eq "$(read_cg "$a" pids.max)" 128 "cap-a pids.max"
expect_eq "$(read_cg "$b" pids.max)" 4096 "cap-b pids.max (the default flavor)"
expect_eq "$(read_cg "$a" memory.swap.max)" 0 "cap-a memory.swap.max"
# libvirt writes the weight on the domain's scope, the parent of the
# segment's cgroup: the scopes of the segments are siblings, which share
# the disk by weight.
weight_file=$(io_weight_file "$(dirname "$a")")
expect_eq "${weight_file##*/}" io.bfq.weight "the weight's file (the segments' disk runs BFQ)"
expect_eq "$(cat "$weight_file")" "$(io_weight_line "$(dirname "$a")" "$io_weight")" \
    "cap-a's ${weight_file##*/} (on its scope) is the host's io_weight $io_weight"
expect_match "$(virsh -q -c lxc:/// dumpxml seg-cap-a)" "<weight>$io_weight</weight>" "cap-a's <blkiotune>"
# Every process of the segment is below these files (init in management/).
init=$(init_pid cap-a)
case /sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$init/cgroup") in
    "$a" | "$a"/*) say "ok: cap-a's init is under its capped cgroup" ;;
    *) fail "cap-a's init is in $(cat "/proc/$init/cgroup"), outside $a" ;;
esac

# The port's two limits: 40 Mbit/s = 4882 KiB/s each way.
# shellcheck disable=SC2046 # the address's four numbers
port=sg-$(printf '%02x' $(address_of cap-a | tr . ' '))
for way in from to; do
    expect_match "$(nft list limit bridge segment_agent "${port}_$way")" "rate over 4882 kbytes/second" \
        "the nftables limit ${port}_$way"
done

# ---- no swap past the cap ----
# The VM has no swap of its own: a 512 MiB swap file for this test, so that
# an allocation past the cap could swap if memory.swap.max let it.
say "swap before the test: $(swapon --show --noheadings | wc -l) devices"
swapfile=/var/tmp/host-vm-swap
cleanup_swap() { swapoff "$swapfile" 2>/dev/null || true; rm -f "$swapfile"; }
trap cleanup_swap EXIT
cleanup_swap
dd if=/dev/zero of="$swapfile" bs=1M count=512 status=none
chmod 600 "$swapfile"
mkswap "$swapfile" >/dev/null
swapon "$swapfile"
expect_match "$(swapon --show --noheadings)" "$swapfile" "swap is on"
kills_before=$(awk '/^oom_kill / {print $2}' "$a/memory.events")
expect_fails "cap-a: allocate 400 MiB in a 256 MiB segment with swap on" \
    in_segment cap-a dd if=/dev/zero of=/dev/null bs=400M count=1
expect_eq "$(awk '/^oom_kill / {print $2}' "$a/memory.events")" "$((kills_before + 1))" "OOM kills in cap-a"
expect_eq "$(read_cg "$a" memory.swap.current)" 0 "cap-a's memory.swap.current"
# The same allocation in a cgroup of the VM's with the same memory.max but
# swap allowed goes through: it swaps (so the swap above was really there).
control=/sys/fs/cgroup/host-vm-swap-control
rmdir "$control" 2>/dev/null || true
mkdir "$control"
echo 268435456 >"$control/memory.max"
sh -c 'echo $$ >"$1/cgroup.procs" && exec dd if=/dev/zero of=/dev/null bs=400M count=1 status=none' _ "$control" ||
    fail "400 MiB under a 256 MiB memory.max with swap allowed did not go through"
say "ok: with swap allowed the same allocation swaps and succeeds"
rmdir "$control"
cleanup_swap
trap - EXIT

# ---- the fork loop ----
# Bounded: at most 2x the cap of long sleepers, from one shell in cap-a;
# busybox's shell ends at its first refused fork (its error goes to a
# file). The sleepers keep no pipe open; they are the test's, killed by
# PID below.
events_before=$(awk '{print $2}' "$a/pids.events")
root=/proc/$init/root
in_segment cap-a sh -c 'i=0; while [ $i -lt 256 ]; do sleep 100077 </dev/null >/dev/null 2>&1 & i=$((i+1)); done 2>/tmp/fork-errors' ||
    say "the fork loop's shell ended with status $?"
# sleepers_in CGROUP ARG: the PIDs of `sleep ARG` in CGROUP and below.
sleepers_in() {
    local p
    for p in $(find "$1" -name cgroup.procs -exec cat {} +); do
        if [ "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" = "sleep $2 " ]; then echo "$p"; fi
    done
}
sleepers=$(sleepers_in "$a" 100077 | wc -l)
current=$(read_cg "$a" pids.current)
say "cap-a: $sleepers sleepers, pids.current $current, pids.events $(cat "$a/pids.events")"
((sleepers > 64 && sleepers < 128)) || fail "cap-a holds $sleepers sleepers; pids.max is 128"
((current <= 128 && current >= 120)) || fail "cap-a's pids.current is $current at a full loop"
((${current} <= $(read_cg "$a" pids.max))) || fail "pids.current past pids.max"
events=$(awk '{print $2}' "$a/pids.events")
((events > events_before)) || fail "the kernel refused no fork in cap-a (pids.events max $events)"
say "ok: the kernel refused $((events - events_before)) forks in cap-a"
expect_match "$(cat "$root/tmp/fork-errors")" "can't fork" "the loop's shell saw its forks refused"
# Meanwhile the neighbour forks 50 and the VM itself forks.
in_segment cap-b sh -c 'for i in $(seq 50); do sleep 100078 </dev/null >/dev/null 2>&1 & done' ||
    fail "cap-b could not fork while cap-a was full"
b_sleepers=$(sleepers_in "$b" 100078)
expect_eq "$(wc -l <<<"$b_sleepers")" 50 "cap-b's sleepers while cap-a is full"
/bin/true || fail "the VM cannot fork"
# shellcheck disable=SC2046 # one PID a word
kill $(sleepers_in "$a" 100077) $b_sleepers
# (The segment's init, a shell, reaps them at its own pace: minutes under
# TCG; the segments are deleted below.)

# ---- disk: the quota on the segments' btrfs (/dev/vdb, simple quotas) ----
expect_match "$(segment-agent check --config "$CONFIG")" "^ok +disk quota +enforce: " \
    "segment-agent check reports disk quotas enforced"
expect_eq "$(findmnt -n -o FSTYPE /var/lib/segment-agent/segments)" btrfs "the segments' filesystem"
limit=$(rpc GetSegment '{"segment_id":"cap-a"}' | jq -r .disk.limitBytes)
expect_eq "$limit" $((1024 * 1024 * 1024)) "GetSegment's disk limit of cap-a (1 GiB)"
# Bounded: 1200 MiB into a 1 GiB segment on a 16 GiB disk.
expect_fails "cap-a: write 1200 MiB into a 1 GiB segment" \
    in_segment cap-a dd if=/dev/zero of=/fill bs=1M count=1200
expect_match "$OUT" "Disk quota exceeded" "the kernel's refusal inside cap-a"
used=$(rpc GetSegment '{"segment_id":"cap-a"}' | jq -r .disk.usedBytes)
say "cap-a: $used bytes used of $limit"
((used > limit * 9 / 10 && used <= limit + 64 * 1024 * 1024)) ||
    fail "cap-a's disk use $used is not at its 1 GiB limit"
# Meanwhile the neighbour and the host still write.
in_segment cap-b dd if=/dev/zero of=/fill bs=1M count=100 status=none ||
    fail "cap-b could not write 100 MiB while cap-a was full"
dd if=/dev/zero of=/var/lib/segment-agent/segments/host-vm-fill bs=1M count=100 status=none ||
    fail "the host could not write 100 MiB to the segments' disk while cap-a was full"
rm -f /var/lib/segment-agent/segments/host-vm-fill
say "ok: cap-b and the host wrote 100 MiB each beside the full cap-a"
# What the segment deletes it may write again (use, not a high-water mark).
in_segment cap-a rm -f /fill
in_segment cap-a dd if=/dev/zero of=/fill bs=1M count=500 status=none ||
    fail "cap-a could not write 500 MiB after deleting its fill"
say "ok: cap-a wrote 500 MiB again after deleting its fill"

rpc DeleteSegment '{"segment_id":"cap-a"}' >/dev/null
rpc DeleteSegment '{"segment_id":"cap-b"}' >/dev/null
