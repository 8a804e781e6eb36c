# Issue 10's disk I/O weight: the segments' disk (/dev/vdb, qemu
# throttled to 24 MiB/s, below what this emulated CPU writes, so that the
# disk is the bottleneck as a real one is) runs BFQ, and libvirt puts each
# segment's <blkiotune> weight (the agent's isolation.io_weight) in its
# scope's io.bfq.weight. Two segments write with O_DIRECT at once, for a
# fixed time; their shares of what reached the disk:
#   1. equal weights, 6 writers in io-a against 3 in io-b: BFQ shares the
#      disk by segment, not by writer (io-b near half, well above its 33 %
#      by writer; with a single writer io-b's share depended on BFQ idling
#      for it, which this emulated CPU makes erratic: 26-47 %);
#   2. the same under mq-deadline (no cgroup weights): by writer (the
#      contrast);
#   3. io-b's weight raised to libvirt's most (blkiotune 1000, live), 4
#      writers each (with one writer each the shares stayed near half):
#      io-b's share against its share of the BFQ weights (libvirt goes
#      through systemd, which maps 300 to BFQ's 118 and 1000 to 181),
#      printed; the weight itself reaching BFQ is asserted.
# Measured: README "Disk I/O weight".
SECS=20
seg_a=$(create_dev io-a 256)
seg_b=$(create_dev io-b 256)
cleanup() {
    echo bfq >/sys/block/vdb/queue/scheduler 2>/dev/null || true
    rpc DeleteSegment '{"segment_id":"io-a"}' >/dev/null 2>&1 || true
    rpc DeleteSegment '{"segment_id":"io-b"}' >/dev/null 2>&1 || true
}
trap cleanup EXIT
expect_match "$(cat /sys/block/vdb/queue/scheduler)" '\[bfq\]' "the segments' disk runs BFQ"
# BFQ keeps a sync queue's turn only while its next request comes within
# slice_idle (8 ms); a writer in this emulated CPU takes longer between two
# requests, so BFQ would hand the disk over at every request and the shares
# would be by writer. The window is widened to what the emulated CPU needs,
# as an operator tunes BFQ for a slow device (a switch of scheduler resets it).
bfq_window() { echo "${BFQ_IDLE_US:-50000}" >/sys/block/vdb/queue/iosched/slice_idle_us; }
bfq_window
weight=$(sed -n 's/^io_weight = //p' "$CONFIG")
bfq_weight() { awk '/^default/ {print $2}' "$(dirname "$(segment_cgroup "$1")")/io.bfq.weight"; }
for id in io-a io-b; do
    scope=$(dirname "$(segment_cgroup "$id")")
    expect_eq "$(cat "$scope/io.bfq.weight")" "$(io_weight_line "$scope" "$weight")" \
        "$id's BFQ weight is the agent's io_weight $weight (systemd's mapping)"
done

# writers ID N: N O_DIRECT writers in segment ID for $SECS s; prints the bytes they wrote.
writers() {
    in_segment "$1" sh -c 'n=$1 s=$2 pids= i=0
        while [ $i -lt $n ]; do
            dd if=/dev/zero of=/io-$i bs=256k count=100000 oflag=direct 2>/dev/null &
            pids="$pids $!" i=$((i + 1))
        done
        sleep "$s"; kill $pids; wait
        ls -ln /io-* | awk "{ s += \$5 } END { print s }"
        rm -f /io-*' _ "$2" "$SECS"
}
# share NA NB: io-b's share of what both wrote at once, in percent.
share() {
    local a b
    writers io-a "$1" >"$STATE/io-a.out" &
    local pa=$!
    writers io-b "$2" >"$STATE/io-b.out"
    wait "$pa"
    a=$(cat "$STATE/io-a.out") b=$(cat "$STATE/io-b.out")
    ((a > 0 && b > 0)) || fail "a writer wrote nothing: io-a $a, io-b $b bytes"
    say "  io-a ($1 writers): $((a / SECS / 1048576)) MiB/s, io-b ($2): $((b / SECS / 1048576)) MiB/s"
    echo $((100 * b / (a + b)))
}

say "1. BFQ, equal weights ($weight), 6 writers against 3:"
fair=$(share 6 3)
say "   io-b's share: $fair %"
echo mq-deadline >/sys/block/vdb/queue/scheduler
say "2. mq-deadline (no weights), 6 writers against 3:"
plain=$(share 6 3)
say "   io-b's share: $plain %"
echo bfq >/sys/block/vdb/queue/scheduler
bfq_window
virsh -q -c lxc:/// blkiotune seg-io-b --weight 1000 --live >/dev/null
wa=$(bfq_weight io-a) wb=$(bfq_weight io-b)
((wb > wa)) || fail "io-b's BFQ weight $wb after blkiotune --weight 1000 is not above io-a's $wa"
expected=$((100 * wb / (wa + wb)))
say "3. BFQ, io-b's weight raised (libvirt's 1000: BFQ $wb against $wa), 4 writers each:"
weighted=$(share 4 4)
say "   io-b's share: $weighted % (by weight: $expected %)"

((fair >= plain + 6 && fair >= 40)) ||
    fail "under BFQ a segment with 3 writers got $fair % against 6 writers of an equal weight (mq-deadline, by writer: $plain %)"
say "ok: BFQ shares the disk by segment: $fair % for 3 writers against 6 (mq-deadline: $plain %)"
# The weight's proportion is printed, not asserted: alone it measured 56-61 %
# (60 % by weight), in a full run of this phase once 52 %.
say "measured: io-b's share with the raised weight: $weighted % (by weight $expected %, equal 50 %)"
