# Issue 14's routing mesh on the production-like host: two Docker segments
# made a swarm by the agent alone (CreateSegment with an init, then a worker
# join), a service with one task and `-p 8080:80` (Docker's default ingress
# mode: IPVS in each segment's ingress namespace, VXLAN between them), and
# the port answers on both segments' public addresses, the one without the
# task through the mesh. IPVS is configurable from a segment's user
# namespace since kernel 6.9 (the VM's 6.12); the host loads ip_vs (README's
# install block), which a segment cannot.

cleanup() {
    rpc DeleteSegment '{"segment_id":"sw-2"}' >/dev/null 2>&1 || true
    rpc DeleteSegment '{"segment_id":"sw-1"}' >/dev/null 2>&1 || true
}
trap cleanup EXIT

expect_match "$(lsmod)" "^ip_vs " "the host has IPVS loaded"
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
dk sw-1 service create --detach --name web --replicas 1 --no-resolve-image -p 8080:80 busybox:vm \
    sh -c 'mkdir -p /www && echo swarm-web >/www/index.html && exec httpd -f -p 80 -h /www' >/dev/null
running() { dk sw-1 service ps web --filter desired-state=running --format '{{.Node}} {{.CurrentState}}' | grep Running; }
wait_until 300 "the service's task running" running
say "the task: $(running)"
expect_eq "$(dk sw-1 service inspect web --format '{{.Endpoint.Spec.Ports}}')" "[{ tcp 80 8080 ingress}]" \
    "the service's port is published through the ingress mesh"
answers() { curl -s -m 5 "http://$1:8080/" | grep -q swarm-web; }
for ip in "$ip1" "$ip2"; do
    wait_until 240 "http://$ip:8080/ answering" answers "$ip"
    say "ok: http://$ip:8080/ answers swarm-web"
done
# The mesh, not a port of the task's own segment: the segment without the
# task has no container listening, yet its address answers.
task_node=$(running | cut -d' ' -f1)
for id in sw-1 sw-2; do
    say "$id's containers: $(dk "$id" ps --format '{{.Names}}' | tr '\n' ' ')"
done
expect_eq "$(for id in sw-1 sw-2; do dk "$id" ps -q --filter label=com.docker.swarm.service.name=web; done | wc -l)" 1 \
    "one task in the swarm (on $task_node)"
