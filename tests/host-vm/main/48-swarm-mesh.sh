# Issue 14's services on the production-like host: two Docker segments made
# a swarm by the agent alone (CreateSegment with an init, then a worker
# join); a global service publishing 8080 on every node (`mode=host`)
# answers on both segments' public addresses. Docker's routing mesh
# (`-p 8081:80`, ingress mode) cannot work in a segment: IPVS's netlink
# family requires CAP_NET_ADMIN in the initial user namespace
# (GENL_ADMIN_PERM; dockerd logged "operation not permitted" on 6.12 before
# the policy refused it), so the policy refuses it (SEGMENT-1027).
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

# The routing mesh and VIPs are IPVS, which the kernel refuses to dockerd in
# the segment's user namespace (GENL_ADMIN_PERM): the policy refuses them up
# front (SEGMENT-1027) instead of letting a service answer nowhere.
expect_fails "a service published through the routing mesh" \
    dk sw-1 service create --detach --name mesh --no-resolve-image -p 8081:80 busybox:vm sh -c "$serve"
expect_match "$OUT" "SEGMENT-1027" "the routing mesh refused by the policy"
expect_match "$OUT" "mode=host" "the refusal says what works instead"
