# The swarm slice's TLS front under AppArmor: the customer's docker CLI
# reaches dockerd through `segment-authz front` on 2376 (dockerd listens on
# its unix socket only), and RebuildSegment with a new CA re-certifies the
# front without touching dockerd: the container "web" keeps its PID and
# StartedAt, old client certificates are refused at once, new ones work.
# Then back to the run's CA (the tests after this one use it). Uses dk-1
# and its container "web" (30-docker).

init=$(init_pid dk-1)
listeners=$(nsenter -t "$init" -n ss -Htlnp)
say "dk-1's TCP listeners: $listeners"
expect_match "$(grep -E ':2376 ' <<<"$listeners")" '"segment-authz"' "2376 is served by the front"
expect_no_match "$listeners" '"dockerd"' "dockerd listens on no TCP port"
front=$(grep -E ':2376 ' <<<"$listeners" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
expect_eq "$(tr '\0' ' ' <"/proc/$front/cmdline")" "/opt/segment-agent/bin/segment-authz front " "the front's command line"
expect_eq "$(label_of "$front")" "$PROFILE (enforce)" "the front's label"
# The CLI's connection ends at the front, which opens dockerd's socket.
expect_match "$(dk dk-1 version --format '{{.Server.Version}}')" '^20\.10\.' "docker version over the front"
# Without a client certificate of the cluster CA nothing gets through.
expect_fails "a client without a certificate" curl -sS --max-time 10 --cacert "$STATE/ca/ca.pem" \
    "https://$(address_of dk-1):2376/version"

dockerd_pid() {
    local p
    for p in $(segment_pids dk-1); do
        if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = dockerd ]; then echo "$p"; fi
    done
}
web_state() { dk dk-1 inspect -f '{{.State.Pid}} {{.State.StartedAt}} {{.State.Running}}' web; }
wait_until 60 "container web running" pgrep -fx "sleep 100001"
before=$(web_state)
web=$(pgrep -fx "sleep 100001")
dockerd=$(dockerd_pid)
say "before the rebuild: web $before (host PID $web), dockerd $dockerd"

# A second cluster CA and a client certificate of it.
new=$STATE/ca2
rm -rf "$new" && mkdir -p "$new"
(
    cd "$new"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -keyout ca-key.pem -out ca.pem -subj /CN=cluster-vm-2 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem \
        -out client.csr -subj /CN=customer
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
        -out cert.pem -extfile <(printf 'extendedKeyUsage=clientAuth\n')
) >/dev/null 2>&1
rebuild() {
    rpc RebuildSegment "$(jq -n --rawfile ca "$1/ca.pem" --rawfile key "$1/ca-key.pem" \
        '{segment_id: "dk-1", tls: {ca_cert_pem: $ca, ca_key_pem: $key}}')"
}
dk_with() {
    local d=$1
    shift
    docker --tlsverify --tlscacert "$d/ca.pem" --tlscert "$d/cert.pem" --tlskey "$d/key.pem" \
        -H "tcp://$(address_of dk-1):2376" "$@"
}
start=$SECONDS
seg=$(rebuild "$new")
say "RebuildSegment with a new CA took $((SECONDS - start)) s"
expect_eq "$(jq -r .state <<<"$seg")" SEGMENT_STATE_RUNNING "dk-1 after the rebuild"
expect_eq "$(jq -r .caCertSha256 <<<"$seg")" \
    "$(openssl x509 -in "$new/ca.pem" -outform der | sha256sum | cut -d' ' -f1)" "the CA dk-1 is certified by"
# The front loads the new certificates on SIGHUP: the new CA's client at once.
wait_until 60 "the new CA's client served" dk_with "$new" version
expect_fails "the old CA's client after the rebuild" dk_with "$STATE/ca" version
expect_eq "$(dk_with "$new" inspect -f '{{.State.Pid}} {{.State.StartedAt}} {{.State.Running}}' web)" "$before" \
    "web's PID, StartedAt and state across the rebuild"
expect_eq "$(pgrep -fx 'sleep 100001')" "$web" "web's host PID across the rebuild"
expect_eq "$(dockerd_pid)" "$dockerd" "dockerd's PID across the rebuild"
expect_eq "$(label_of "$web")" "$CONTAINER_LABEL" "web's label after the rebuild"
front_after=$(nsenter -t "$init" -n ss -Htlnp | grep -E ':2376 ' | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
expect_eq "$(label_of "$front_after")" "$PROFILE (enforce)" "the front's label after the rebuild"
dk_with "$new" run --rm busybox:vm true || fail "a container run with the new CA's client"

# Back to the run's CA: the same again, the other way.
seg=$(rebuild "$STATE/ca")
expect_eq "$(jq -r .state <<<"$seg")" SEGMENT_STATE_RUNNING "dk-1 after the rebuild back"
wait_until 60 "the run's client served again" dk dk-1 version
expect_fails "the second CA's client after the rebuild back" dk_with "$new" version
expect_eq "$(web_state)" "$before" "web's PID, StartedAt and state across both rebuilds"
