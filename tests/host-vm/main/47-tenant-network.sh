# The red-team suite's network class (tests/e2e_tenant/network.rs) in the
# VM: from the network namespace of dk-1 (where every --net host container
# of its customer sends from; here with the VM root's capabilities, more
# than CAP_NET_RAW), spoofed ARP, a stolen MAC and a spoofed IPv4 source go
# out of eth0 as raw frames, and a macvlan and a second address are put on
# eth0. The gateway (segbr0's own stack), the victim segment and the
# bridge's MAC table keep the true mappings; the bridge filter's counters
# show the drops; a control frame with dk-1's own address arrives.
# Uses dk-1 (30-docker).

RAWSEND="perl $(dirname "${BASH_SOURCE[0]}")/../rawsend.pl"
create_dev net-v >/dev/null
a_ip=$(address_of dk-1)
v_ip=$(address_of net-v)
gw_ip=203.0.113.1
in_a() { nsenter -t "$(init_pid dk-1)" -n -- "$@"; }
in_v() { nsenter -t "$(init_pid net-v)" -n -- "$@"; }
mac_of() { "$@" ip -o link show eth0 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2; }
a_mac=$(mac_of in_a)
v_mac=$(mac_of in_v)
gw_mac=$(cat /sys/class/net/segbr0/address)
# shellcheck disable=SC2046 # the address's four numbers
port_of() { printf 'sg-%02x%02x%02x%02x' $(tr . ' ' <<<"$1"); }
a_port=$(port_of "$a_ip")
v_port=$(port_of "$v_ip")
say "attacker dk-1 $a_ip $a_mac ($a_port), victim net-v $v_ip $v_mac ($v_port), gateway $gw_ip $gw_mac"

# Mappings for an attack to move: the gateway learns both, the victim the gateway.
busybox ping -c 1 -W 5 "$a_ip" >/dev/null || fail "the gateway does not reach dk-1"
busybox ping -c 1 -W 5 "$v_ip" >/dev/null || fail "the gateway does not reach net-v"
in_v busybox ping -c 1 -W 5 "$gw_ip" >/dev/null || fail "net-v does not reach the gateway"
neigh() { "${@:2}" ip neigh show "$1" | grep -o 'lladdr [0-9a-f:]*' | cut -d' ' -f2; }
true_mappings() {
    expect_eq "$(neigh "$v_ip")" "$v_mac" "$1: the gateway's MAC for net-v"
    expect_eq "$(neigh "$gw_ip" in_v)" "$gw_mac" "$1: net-v's MAC for the gateway"
    local learned
    learned=$(neigh "$a_ip")
    [ -z "$learned" ] || expect_eq "$learned" "$a_mac" "$1: the gateway's MAC for dk-1"
    expect_no_match "$(bridge fdb show br segbr0 dev "$a_port")" "$v_mac" \
        "$1: no foreign MAC learned on dk-1's port"
}
true_mappings before

counter() { nft list counter bridge segment_agent "$1" | grep -o 'packets [0-9]*' | cut -d' ' -f2; }
declare -A before
for c in foreign_mac foreign_arp foreign_ipv4; do before[$c]=$(counter "$c"); done
# What reaches the gateway's own stack, by source address.
nft -f - <<EOF
table inet host_vm_probe {
    counter control {}
    counter spoof {}
    chain input {
        type filter hook input priority -500; policy accept;
        udp dport 31337 ip saddr $a_ip counter name control
        udp dport 31337 ip saddr $v_ip counter name spoof
    }
}
EOF
cleanup() {
    nft delete table inet host_vm_probe 2>/dev/null || true
    in_a ip link del mv0 2>/dev/null || true
    in_a ip addr del 203.0.113.251/32 dev eth0 2>/dev/null || true
}
trap cleanup EXIT
probe() { nft list counter inet host_vm_probe "$1" | grep -o 'packets [0-9]*' | cut -d' ' -f2; }

send() { in_a $RAWSEND eth0 "$@" >/dev/null || fail "rawsend $*"; }
bcast=ff:ff:ff:ff:ff:ff zero=00:00:00:00:00:00
# ARP: a gratuitous claim of the victim's address, a reply telling the
# gateway the same, a reply telling the victim the gateway is dk-1.
send arp 1 "$a_mac" "$a_mac" "$v_ip" "$zero" "$v_ip" "$bcast"
send arp 2 "$a_mac" "$a_mac" "$v_ip" "$gw_mac" "$gw_ip" "$gw_mac"
send arp 2 "$a_mac" "$a_mac" "$gw_ip" "$v_mac" "$v_ip" "$v_mac"
# The victim's MAC as the source (a MAC theft), claiming its own address.
send arp 2 "$v_mac" "$v_mac" "$v_ip" "$gw_mac" "$gw_ip" "$gw_mac"
send udp "$v_mac" "$gw_mac" "$a_ip" "$gw_ip" 31337 stolen-mac
# An IPv4 packet with the victim's source address, and the control.
send udp "$a_mac" "$gw_mac" "$v_ip" "$gw_ip" 31337 spoofed-source
send udp "$a_mac" "$gw_mac" "$a_ip" "$gw_ip" 31337 control
sleep 1
expect_eq "$(probe control)" 1 "the control packet from dk-1's own address reached the gateway"
expect_eq "$(probe spoof)" 0 "packets with net-v's address from dk-1 at the gateway"
d() { echo $(($(counter "$1") - ${before[$1]})); }
(($(d foreign_arp) >= 3)) || fail "the filter's foreign_arp counter grew by $(d foreign_arp), not 3"
(($(d foreign_mac) >= 2)) || fail "the filter's foreign_mac counter grew by $(d foreign_mac), not 2"
(($(d foreign_ipv4) >= 1)) || fail "the filter's foreign_ipv4 counter grew by $(d foreign_ipv4), not 1"
say "ok: dropped at dk-1's port: $(d foreign_arp) ARP, $(d foreign_mac) foreign MAC, $(d foreign_ipv4) foreign IPv4"
true_mappings "after the spoofed frames"

# A macvlan on eth0 (what a policy bypass of `network create -d macvlan`
# would leave) with its own MAC and address, and a second address on eth0:
# each sends (the attempt is real) and nothing answers.
in_a ip link add mv0 link eth0 type macvlan mode bridge
in_a ip addr add 203.0.113.250/24 dev mv0
in_a ip link set mv0 up
out=$(in_a busybox ping -c 2 -W 1 -I mv0 "$gw_ip" 2>&1 || true)
expect_match "$out" "2 packets transmitted, 0 packets received" "a macvlan on dk-1's eth0 reaches nothing"
in_a ip link del mv0
in_a ip addr add 203.0.113.251/32 dev eth0
out=$(in_a busybox ping -c 2 -W 1 -I 203.0.113.251 "$gw_ip" 2>&1 || true)
expect_match "$out" "2 packets transmitted, 0 packets received" "a second address on dk-1's eth0 reaches nothing"
in_a ip addr del 203.0.113.251/32 dev eth0
for ip in 203.0.113.250 203.0.113.251; do
    expect_eq "$(neigh "$ip")" "" "the gateway's MAC for $ip"
done
true_mappings "after the macvlan"

# The segments' own traffic still flows.
in_a busybox ping -c 1 -W 5 "$gw_ip" >/dev/null || fail "dk-1 no longer reaches the gateway"
in_a busybox ping -c 1 -W 5 "$v_ip" >/dev/null || fail "dk-1 no longer reaches net-v"
busybox ping -c 1 -W 5 "$v_ip" >/dev/null || fail "the gateway no longer reaches net-v"
rpc DeleteSegment '{"segment_id":"net-v"}' >/dev/null
