# Issue 14's services on the production-like host: two Docker segments made
# a swarm by the agent alone (CreateSegment with an init, then a worker
# join); a global service publishing 8080 on every node (`mode=host`)
# answers on both segments' public addresses. Docker's routing mesh
# (`-p 8081:80`, ingress mode) does not: IPVS's netlink family requires
# CAP_NET_ADMIN in the initial user namespace (GENL_ADMIN_PERM) and dockerd
# runs in the segment's; this test pins that (the kernel's EPERM in
# dockerd's log), so that a kernel that allows it shows up here.

cleanup() {
    rpc DeleteSegment '{"segment_id":"sw-2"}' >/dev/null 2>&1 || true
    rpc DeleteSegment '{"segment_id":"sw-1"}' >/dev/null 2>&1 || true
}
trap cleanup EXIT

s1=$(create_docker sw-1 512 '{"mode":"SWARM_MODE_INIT"}')
ip1=$(jq -r .publicIpv4 <<<"$s1")
expect_eq "$(jq -r .swarm.role <<<"$s1")" SWARM_ROLE_MANAGER "sw-1's role"
join=$(jq -n --arg t "$(jq -r .swarm.workerJoinToken <<<"$s1")" --arg m "$ip1" \
    '{mode: "SWARM_MODE_JOIN_WORKER", join_token: $t, manager_addresses: [$m]}')
s2=$(create_docker sw-2 512 "$join")
ip2=$(jq -r .publicIpv4 <<<"$s2")
expect_eq "$(jq -r .swarm.role <<<"$s2")" SWARM_ROLE_WORKER "sw-2's role"
expect_eq "$(dk sw-1 info --format '{{.Swarm.Nodes}}')" 2 "docker info on sw-1: the swarm's nodes"

import_busybox sw-1
import_busybox sw-2
serve='mkdir -p /www && echo swarm-web >/www/index.html && exec httpd -f -p 80 -h /www'
dk sw-1 service create --detach --name web --mode global --no-resolve-image \
    --publish mode=host,target=80,published=8080 busybox:vm sh -c "$serve" >/dev/null
running() { [ "$(dk sw-1 service ps web --filter desired-state=running --format '{{.CurrentState}}' | grep -c Running)" = 2 ]; }
wait_until 300 "a task of web running on each node" running
answers() { curl -s -m 5 "http://$1:$2/" | grep -q swarm-web; }
for ip in "$ip1" "$ip2"; do
    wait_until 120 "http://$ip:8080/ answering" answers "$ip" 8080
    say "ok: http://$ip:8080/ answers swarm-web"
done

# The routing mesh: the kernel refuses dockerd's IPVS service, and the
# published port answers nowhere.
dk sw-1 service create --detach --name mesh --replicas 1 --no-resolve-image -p 8081:80 busybox:vm \
    sh -c "$serve" >/dev/null
refused() {
    local id init
    for id in sw-1 sw-2; do
        init=$(init_pid "$id")
        grep -q 'Failed to create a new service for vip .* in sbox ingress (ingress): operation not permitted' \
            "/proc/$init/root/var/log/segment/dockerd.log" && return 0
    done
    return 1
}
wait_until 300 "the kernel's refusal of the ingress's IPVS service" refused
say "ok: IPVS from the segment's user namespace is refused (operation not permitted)"
for ip in "$ip1" "$ip2"; do
    expect_fails "http://$ip:8081/ through the routing mesh" curl -sS -m 5 "http://$ip:8081/"
done
