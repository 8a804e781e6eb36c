# The red-team suite's policy and data-area classes (tests/e2e_tenant/
# policy.rs, policy/binds.rs, boundary.rs) in the VM, as the customer
# attacks: the docker CLI and curl with the client certificate, over mutual
# TLS through the front, against dk-1. Each attack is really sent and
# refused with its code; Docker's own state is nowhere in the data area; a
# bind checked at create and swapped for a symlink before start (or before
# a restart by policy) never follows it. Leaves dk-1 as it found it.
# Uses dk-1 (30-docker).

ip=$(address_of dk-1)
# raw METHOD PATH [CONTENT-TYPE BODY]: the body, then the HTTP status on a
# line of its own.
raw() {
    local args=(-sS --max-time 60 --cacert "$STATE/ca/ca.pem" --cert "$STATE/ca/cert.pem"
        --key "$STATE/ca/key.pem" -X "$1" -w '\n%{http_code}')
    [ $# -ge 4 ] && args+=(-H "Content-Type: $3" --data-binary "$4")
    curl "${args[@]}" "https://$ip:2376$2"
}
# raw_refused CODE METHOD PATH [CONTENT-TYPE BODY]: 403 with the policy's CODE.
raw_refused() {
    local code=$1 out
    shift
    out=$(raw "$@") || fail "curl $*: $out"
    expect_eq "$(tail -1 <<<"$out")" 403 "HTTP status of $1 $2 ${4:-}"
    expect_match "$out" "$code" "$1 $2 ${4:-} refused with $code"
}
# refused CODE DOCKER-ARGS...: the CLI fails with the policy's CODE.
refused() {
    local code=$1
    shift
    expect_fails "docker $*" dk dk-1 "$@"
    expect_match "$OUT" "authorization denied by plugin segment-policy: .*$code" "refused with $code"
}

containers_before=$(dk dk-1 ps -aq --no-trunc | sort)
networks_before=$(dk dk-1 network ls -q --no-trunc | sort)
volumes_before=$(dk dk-1 volume ls -q | sort)
cleanup() {
    for c in victim esc late looper tp-web; do dk dk-1 rm -f "$c" >/dev/null 2>&1 || true; done
    dk dk-1 volume rm -f ok >/dev/null 2>&1 || true
    dk dk-1 run --rm -v /var/lib/docker:/d busybox:vm rm -rf /d/rt /d/x /d/r >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

# ---- raw API calls the CLI cannot make ----
J=application/json
dk dk-1 create --name victim busybox:vm sleep 1000 >/dev/null
raw_refused SEGMENT-1001 POST /v1.23/containers/victim/start $J '{"Privileged":true}'
raw_refused SEGMENT-1011 POST /v1.23/containers/victim/start $J '{"HostConfig":{"Binds":["/:/host"]}}'
raw_refused SEGMENT-1002 POST /v1.23/containers/victim/start $J '{"CapAdd":["SYS_ADMIN"]}'
raw_refused SEGMENT-1004 POST '/v1.41/containers/create?name=raw1' $J '{"Image":"busybox:vm","HostConfig":{"MaskedPaths":[]}}'
raw_refused SEGMENT-1018 POST '/v1.41/containers/create?name=raw2' $J '{"Image":"busybox:vm","HostConfig":{"OomScoreAdj":-1000}}'
raw_refused SEGMENT-1016 POST '/v1.41/containers/create?name=raw3' $J '{"Image":"busybox:vm","HostConfig":{"Runtime":"io.containerd.runtime.v1.linux"}}'
raw_refused SEGMENT-1017 POST '/v1.41/containers/create?name=raw4' $J '{"Image":"busybox:vm","HostConfig":{"Sysctls":{"kernel.shmmax":"1"}}}'
raw_refused SEGMENT-1010 POST '/v1.41/containers/create?name=raw5' $J '{"Image":"busybox:vm","hostconfig":{"cgroupnsmode":"host"}}'
raw_refused SEGMENT-1021 POST '/v1.41/containers/create?name=raw6' $J \
    '{"Image":"busybox:vm","HostConfig":{"LogConfig":{"Type":"syslog","Config":{"syslog-address":"unix:///var/run/docker.sock"}}}}'
raw_refused SEGMENT-1100 POST '/v1.41/build?t=x' application/x-www-form-urlencoded 'cgroupparent=/&remote=http://203.0.113.1/x.tar'
raw_refused SEGMENT-1018 POST /v1.41/containers/victim/update $J '{"OomKillDisable":true}'
raw_refused SEGMENT-1025 POST '/v1.41/containers/victim/start?checkpoint=c1&checkpoint-dir=/etc'
raw_refused SEGMENT-1025 POST /grpc
raw_refused SEGMENT-1025 GET /debug/pprof/cmdline
raw_refused SEGMENT-1024 POST /v1.41/swarm/unlock $J '{"UnlockKey":"x"}'
# A legacy start without settings is dockerd's own API: allowed, unprivileged.
expect_eq "$(raw POST /v1.23/containers/victim/start $J '{}' | tail -1)" 204 "a legacy start without settings"
expect_eq "$(dk dk-1 inspect -f '{{.State.Running}} {{.HostConfig.Privileged}}' victim)" "true false" "victim runs unprivileged"
dk dk-1 rm -f victim >/dev/null

# ---- the CLI's flags ----
for flags in "--runtime io.containerd.runtime.v1.linux:SEGMENT-1016" "--sysctl kernel.shmmax=1:SEGMENT-1017" \
    "--oom-score-adj -500:SEGMENT-1018" "--oom-kill-disable:SEGMENT-1018" "--cpu-rt-runtime 950000:SEGMENT-1018" \
    "--ulimit rtprio=99:SEGMENT-1018" "-v /var/lib/docker/x:/x:rshared:SEGMENT-1019" \
    "--mount type=bind,src=/var/lib/docker,dst=/x,bind-propagation=rslave:SEGMENT-1019" \
    "--volume-driver convoy -v v:/x:SEGMENT-1020" \
    "--log-driver syslog --log-opt syslog-address=unix:///var/run/docker.sock:SEGMENT-1021" \
    "--storage-opt size=1G:SEGMENT-1022" "--pid host:SEGMENT-1006" "--ipc host:SEGMENT-1007" \
    "--userns host:SEGMENT-1008" "--uts host:SEGMENT-1009" "--cgroupns host:SEGMENT-1010" \
    "--cap-add NET_ADMIN:SEGMENT-1002" "--device /dev/vda:SEGMENT-1005" \
    "--security-opt seccomp=unconfined:SEGMENT-1004"; do
    # shellcheck disable=SC2086 # the flags are words
    refused "${flags##*:}" run --rm ${flags%:*} busybox:vm true
done
mkdir -p "$STATE/ctx"
printf 'FROM busybox:vm\nRUN echo built >/f\n' >"$STATE/ctx/Dockerfile"
refused SEGMENT-1023 network create -d macvlan -o parent=eth0 mv
refused SEGMENT-1023 network create -d ipvlan -o parent=eth0 iv
refused SEGMENT-1023 network create -o com.docker.network.bridge.name=eth0 br
refused SEGMENT-1023 network create --config-only -o parent=eth0 --subnet 10.98.0.0/24 co
refused SEGMENT-1024 swarm init --advertise-addr "$ip"
refused SEGMENT-1024 swarm join --token SWMTKN-1-x 203.0.113.1:2377
refused SEGMENT-1011 volume create -o type=nfs -o o=addr=203.0.113.1,rw -o device=:/export nfs
refused SEGMENT-1011 volume create -o type=none -o o=bind -o device=/etc etc
refused SEGMENT-1020 volume create -d convoy cv
refused SEGMENT-1014 build -q --cgroup-parent / -t cg "$STATE/ctx"
refused SEGMENT-1015 build -q --network container:x -t nc "$STATE/ctx"

# ---- Docker's own state is not in the data area ----
dk dk-1 create --name victim busybox:vm true >/dev/null
id=$(dk dk-1 inspect -f '{{.Id}}' victim)
listing=$(dk dk-1 run --rm -v /var/lib/docker:/d busybox:vm sh -c 'find /d; echo done')
expect_match "$(tail -1 <<<"$listing")" '^done$' "the whole data area listed"
for state in containers image overlay2 volumes containerd "$id" hostconfig.json; do
    expect_no_match "$listing" "$state" "no $state in the data area"
done
# The issue's attack: rewrite a stopped container's hostconfig.json.
expect_fails "rewrite hostconfig.json through the data area" dk dk-1 run --rm -v /var/lib/docker:/d busybox:vm \
    sh -c "echo '{\"Privileged\":true}' >/d/containers/$id/hostconfig.json"
for src in /var/lib/segment/docker /var/lib/segment /var/lib /etc/docker /; do
    refused SEGMENT-1011 run --rm -v "$src:/d" busybox:vm true
done
refused SEGMENT-1011 volume create -o type=none -o o=bind -o device=/var/lib/segment/docker state

# ---- bind sources as the kernel finds them ----
plant='mkdir -p /d/sub && echo mine >/d/sub/f && /bin/busybox ln -s / /d/esc && /bin/busybox ln -s sub /d/inner'
plant="$plant && /bin/busybox ln -s /proc/self/root /d/magic && echo planted"
expect_eq "$(dk dk-1 run --rm -v /var/lib/docker/rt:/d busybox:vm sh -c "$plant")" planted "symlinks planted in the data area"
expect_fails "mknod in the data area" dk dk-1 run --rm -v /var/lib/docker/rt:/d busybox:vm /bin/busybox mknod /d/mem c 1 1
expect_match "$OUT" "Operation not permitted" "refused by the kernel in the segment's user namespace"
for spec in "-v /var/lib/docker/rt/esc:/h" "-v /var/lib/docker/rt/esc/etc:/h" "-v /var/lib/docker//rt/./esc/:/h" \
    "-v /var/lib/docker/rt/inner:/h" "-v /var/lib/docker/rt/magic:/h" "-v /var/lib/docker/rt/sub/f/below:/h" \
    "--mount type=bind,src=/var/lib/docker/rt/esc,dst=/h" \
    "--mount type=volume,dst=/h,volume-driver=local,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/var/lib/docker/rt/esc"; do
    # shellcheck disable=SC2086 # the flags are words
    refused SEGMENT-1011 run --rm $spec busybox:vm ls /h
done
refused SEGMENT-1011 volume create -o type=none -o o=bind -o device=/var/lib/docker/rt/esc/../sub dotdot
# The same data without a symlink is the customer's.
expect_eq "$(dk dk-1 run --rm -v /var/lib/docker/rt/sub:/h busybox:vm cat /h/f)" mine "a plain bind of the data area"
dk dk-1 volume create -o type=none -o o=bind -o device=/var/lib/docker/rt/sub ok >/dev/null
expect_eq "$(dk dk-1 run --rm -v ok:/h busybox:vm cat /h/f)" mine "a bind volume of the data area"

# A bind checked at create (its source not there yet), swapped for a
# symlink to the segment's / before start: start, restart and docker cp
# check what the kernel finds.
dk dk-1 create --name late -v /var/lib/docker/rt/late:/h busybox:vm ls /h/etc/docker >/dev/null
dk dk-1 run --rm -v /var/lib/docker/rt:/d busybox:vm sh -c 'rm -rf /d/late && /bin/busybox ln -s / /d/late'
refused SEGMENT-1011 start -a late
expect_no_match "$OUT" daemon.json "start listed nothing of the segment's /etc/docker"
refused SEGMENT-1011 restart late
expect_fails "docker cp through the planted symlink" dk dk-1 cp late:/h/etc/hostname "$STATE/stolen"
[ ! -e "$STATE/stolen" ] || fail "docker cp read through the planted symlink"
raw_refused SEGMENT-1011 GET '/v1.41/containers/late/archive?path=/h/etc/hostname'
raw_refused SEGMENT-1011 PUT '/v1.41/containers/late/archive?path=/h/tmp' application/x-tar 'not a tarball'
expect_eq "$(dk dk-1 inspect -f '{{.State.Status}}' late)" created "late never started"

# A restart by policy asks the plugin nothing: the kernel alone (the data
# area is nosymfollow) keeps the remount from following a planted symlink.
dk dk-1 run -d --name looper --restart always -v /var/lib/docker/r/esc:/h busybox:vm \
    sh -c 'ls /h/etc/docker; sleep 1; exit 1' >/dev/null
dk dk-1 run --rm -v /var/lib/docker/r:/r busybox:vm sh -c 'rm -rf /r/esc && /bin/busybox ln -s / /r/esc'
wait_until 90 "looper restarted twice" sh -c \
    "[ \$(docker --tlsverify --tlscacert $STATE/ca/ca.pem --tlscert $STATE/ca/cert.pem --tlskey $STATE/ca/key.pem \
        -H tcp://$ip:2376 inspect -f '{{.RestartCount}}' looper) -ge 2 ]"
logs=$(dk dk-1 logs looper 2>&1)
expect_no_match "$logs" daemon.json "no restart of looper followed the planted symlink"
say "looper: $(dk dk-1 inspect -f '{{.RestartCount}} restarts; {{.State.Error}}' looper)"
dk dk-1 rm -f looper >/dev/null

# ---- nothing refused was made ----
cleanup
trap - EXIT
expect_eq "$(dk dk-1 ps -aq --no-trunc | sort)" "$containers_before" "dk-1's containers after the attacks"
expect_eq "$(dk dk-1 network ls -q --no-trunc | sort)" "$networks_before" "dk-1's networks after the attacks"
expect_eq "$(dk dk-1 volume ls -q | sort)" "$volumes_before" "dk-1's volumes after the attacks"
