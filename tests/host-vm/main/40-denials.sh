# What the profiles exist to stop, attempted for real: from a segment (a
# process entered into it with full capabilities, so AppArmor alone decides),
# from a Docker container, and from a container that runc started directly
# inside the segment with every capability and no profile of its own (the
# usage policy bypassed). Each denial is tied to the kernel's audit line.
# Uses dk-1 (30-docker).

create_dev den-1 >/dev/null

# attempt CONTEXT WHAT PATTERN CMD...: CMD must fail, and AppArmor must have
# logged a denial matching PATTERN.
attempt() {
    local context=$1 what=$2 pattern=$3 m
    shift 3
    m=$(mark)
    expect_fails "$context: $what" "$@"
    expect_denied "$m" "$pattern" "$context: $what denied by AppArmor"
}

seg() { in_segment den-1 "$@"; }
by_segment='profile="segment-agent-segment"'

# ---- from the segment ----
seg mkdir -p /tmp/m
attempt segment "mount a ramfs" "operation=\"mount\".*$by_segment.*fstype=\"ramfs\"" \
    seg mount -t ramfs none /tmp/m
attempt segment "mount a procfs outside a container rootfs" "operation=\"mount\".*$by_segment.*fstype=\"proc\"" \
    seg mount -t proc proc /tmp/m
attempt segment "remount / read-write options" "operation=\"mount\".*$by_segment.*name=\"/\"" \
    seg mount -o remount,nosuid /
attempt segment "write /proc/sysrq-trigger" "$by_segment.*name=\"/proc/sysrq-trigger\"" \
    seg sh -c 'echo h >/proc/sysrq-trigger'
attempt segment "write a release_agent anywhere" "$by_segment.*name=\"/tmp/release_agent\"" \
    seg sh -c 'echo /x >/tmp/release_agent'
# The real escape (CVE-2022-0492) needs a cgroup v1 hierarchy of one's own:
# the segment's user namespace cannot mount one (the kernel refuses it
# outside the initial user namespace); AppArmor would allow it only where
# runc mounts a container's cgroups, and still deny its release_agent above.
cgdir=/var/lib/segment/docker/vfs/dir/esc/sys/fs/cgroup/esc
seg mkdir -p "$cgdir"
expect_fails "segment: mount a cgroup v1 hierarchy" seg mount -t cgroup -o none,name=esc cgroup "$cgdir"
expect_match "$OUT" "permission denied" "refused by the kernel in the segment's user namespace"
attempt segment "read /sys/firmware" "$by_segment.*name=\"/sys/firmware/\"" seg ls /sys/firmware
# libvirt mounts the segment's /proc/sys read-only (the bypass below has its own proc).
expect_fails "segment: write /proc/sys/kernel/core_pattern" seg sh -c 'echo "|/x" >/proc/sys/kernel/core_pattern'
expect_match "$OUT" "Read-only file system" "refused by libvirt's read-only /proc/sys"
# Loading a module (an ELF that is no module): from the host's user namespace,
# unconfined, the call gets as far as the kernel's module loader; the
# segment's user namespace holds no CAP_SYS_MODULE the kernel honours, so
# the kernel refuses it there before AppArmor is asked; and where a process
# of the segment did hold it (the user namespace bypassed: entered without
# it), AppArmor denies it.
seg cp /bin/busybox /tmp/x.ko
not_userns() { nsenter -t "$(init_pid den-1)" -m -u -i -n -p -- "$@"; }
confined_not_userns() { aa-exec -p "$PROFILE" -- nsenter -t "$(init_pid den-1)" -m -u -i -n -p -- "$@"; }
unconfined=$(not_userns insmod /tmp/x.ko 2>&1 || true)
expect_match "$unconfined" "invalid module format" "unconfined, insmod reaches the module loader"
expect_fails "segment: load a module (its user namespace)" seg insmod /tmp/x.ko
expect_match "$OUT" "Operation not permitted" "refused by the kernel in the segment's user namespace"
reset_capability_audit
attempt segment "load a module (the user namespace bypassed)" \
    "operation=\"capable\".*$by_segment.*capname=\"sys_module\"" \
    confined_not_userns insmod /tmp/x.ko
# libvirt already keeps CAP_SYS_MODULE out of the segment's bounding set.
capbnd=$(awk '/^CapBnd/ {print $2}' "/proc/$(init_pid den-1)/status")
(((0x$capbnd >> 16) & 1)) && fail "CAP_SYS_MODULE is in the segment's bounding set ($capbnd)"
say "ok: CAP_SYS_MODULE is not in the segment init's bounding set ($capbnd)"
# Device nodes: root of the segment's user namespace cannot make one at all
# (the kernel's rule for user namespaces). Where one was made anyway (the user
# namespace bypassed: the VM's root in the segment's other namespaces and its
# cgroup), the segment's root is mounted nodev, and on its /dev (where nodes
# work) libvirt's devices cgroup refuses what it did not grant.
seg rm -f /tmp/mem /dev/mem-test
expect_fails "segment: mknod a memory device" seg mknod /tmp/mem c 1 1
expect_match "$OUT" "Operation not permitted" "refused by the kernel in the segment's user namespace"
bypass() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    sh -c 'pid=$1 && shift && echo $$ >"/sys/fs/cgroup$(sed -n "s/^0:://p" "/proc/$pid/cgroup")/cgroup.procs" &&
        exec nsenter -t "$pid" -m -u -i -n -p -- "$@"' _ "$(init_pid den-1)" "$@"
}
bypass mknod /tmp/mem c 1 1
expect_fails "segment (user namespace bypassed): read memory through a node on its root" bypass head -c 1 /tmp/mem
expect_match "$OUT" "Permission denied" "refused: the segment's root is nodev"
bypass mknod /dev/mem-test c 1 1
expect_fails "segment (user namespace bypassed): read memory through a node in its /dev" bypass head -c 1 /dev/mem-test
expect_match "$OUT" "Operation not permitted" "refused by the devices cgroup"
bypass rm -f /dev/mem-test /tmp/mem

# ---- from a Docker container ----
dock() { dk dk-1 run --rm busybox:vm "$@"; }
expect_fails "container: --privileged" dk dk-1 run --rm --privileged busybox:vm true
expect_match "$OUT" SEGMENT-1001 "refused by the policy before it reaches AppArmor"
# runc makes /proc/sysrq-trigger read-only in a container: the VFS refuses the
# write before AppArmor is asked (the bypass below has no such mount).
expect_fails "container: write /proc/sysrq-trigger" dock sh -c 'echo h >/proc/sysrq-trigger'
expect_match "$OUT" "Read-only file system" "refused by runc's read-only mount"
attempt container "write a release_agent anywhere" 'profile="docker-default".*name="/tmp/release_agent"' \
    dock sh -c 'echo /x >/tmp/release_agent'
# Docker keeps CAP_SYS_ADMIN and CAP_SYS_MODULE from containers, and masks
# /sys/firmware with an empty tmpfs: these stop before AppArmor is asked.
expect_fails "container: mount a ramfs" dock sh -c 'mkdir -p /m && mount -t ramfs none /m'
expect_fails "container: load a module" dock sh -c 'cp /bin/busybox /x.ko && insmod /x.ko'
expect_eq "$(dock ls -A /sys/firmware)" "" "container: /sys/firmware is empty"

# ---- from a container runc starts directly inside the segment ----
# Every capability, no masked or read-only paths, no AppArmor profile of its
# own: only the segment's profile (which runc's processes inherit) remains.
seg_dir=/var/lib/segment-agent/segments/dk-1/docker
[ -d "$seg_dir" ] || fail "no $seg_dir (where the segment's dockerd data root lives)"
# Files for the segment belong to its root (a host id of its own).
owner=$(stat -c %u:%g "$seg_dir")
bundle=$seg_dir/bypass
rm -rf "$bundle" "$seg_dir/vfs/dir/bypass"
mkdir -p "$bundle" "$seg_dir/vfs/dir"
cp -a "$STATE/busybox-rootfs" "$seg_dir/vfs/dir/bypass"
(cd "$bundle" && runc spec)
jq --arg root /var/lib/segment/docker/vfs/dir/bypass \
    '.root = {path: $root, readonly: false} | .process.terminal = false
     | .linux.maskedPaths = [] | .linux.readonlyPaths = []
     | .process.capabilities = (["CAP_SYS_ADMIN","CAP_SYS_MODULE","CAP_SYS_RAWIO","CAP_SYS_PTRACE",
         "CAP_NET_ADMIN","CAP_DAC_OVERRIDE","CAP_MKNOD","CAP_SYS_CHROOT","CAP_SETUID","CAP_SETGID",
         "CAP_CHOWN","CAP_FOWNER","CAP_KILL"] as $c
         | {bounding: $c, effective: $c, permitted: $c, inheritable: $c})' \
    "$bundle/config.json" >"$bundle/config.json.new"
mv "$bundle/config.json.new" "$bundle/config.json"
# runc_in_segment ARGS...: one run of the bypass container with ARGS as its command.
runc_in_segment() {
    local args
    args=$(printf '%s\n' "$@" | jq -R . | jq -s -c .)
    jq --argjson a "$args" '.process.args = $a' "$bundle/config.json" >"$bundle/config.run.json"
    mkdir -p "$bundle/run" && cp "$bundle/config.run.json" "$bundle/run/config.json"
    chown -R "$owner" "$bundle" "$seg_dir/vfs/dir/bypass"
    # The real runc, not the image's wrapper on PATH (which would name a profile).
    in_segment dk-1 /usr/sbin/runc --root "${RUNC_ROOT:-/run/docker/runtime-runc/moby}" run \
        --bundle /var/lib/segment/docker/bypass/run "bypass-$RANDOM"
}
# runc 1.1 runs from a sealed memfd copy of itself (CVE-2019-5736's fix; the
# profile allows its exec); the read-only bind of its binary that it falls
# back to is allowed only under Docker's runc state dir.
in_segment dk-1 mkdir -p /run/bypass-runc && in_segment dk-1 touch /run/bypass-runc/runc.x
attempt bypass "bind runc's binary outside Docker's runc state dir" \
    "operation=\"mount\".*$by_segment.*srcname=\"/usr/sbin/runc\"" \
    in_segment dk-1 mount --bind /usr/sbin/runc /run/bypass-runc/runc.x
expect_eq "$(runc_in_segment cat /proc/self/attr/current | tr -d '\0')" "$PROFILE (enforce)" \
    "runc's container without a profile inherits the segment's"
attempt bypass "write /proc/sysrq-trigger" "$by_segment.*name=\"/proc/sysrq-trigger\"" \
    runc_in_segment sh -c 'echo h >/proc/sysrq-trigger'
attempt bypass "write /proc/sys/kernel/core_pattern" "$by_segment.*name=\"/proc/sys/kernel/core_pattern\"" \
    runc_in_segment sh -c 'echo "|/x" >/proc/sys/kernel/core_pattern'
attempt bypass "read /sys/firmware" "$by_segment.*name=\"/sys/firmware/\"" runc_in_segment ls /sys/firmware
attempt bypass "mount a ramfs" "operation=\"mount\".*$by_segment.*fstype=\"ramfs\"" \
    runc_in_segment sh -c 'mkdir -p /m && mount -t ramfs none /m'
# CAP_SYS_MODULE in the segment's user namespace is none the kernel honours:
# it refuses before AppArmor is asked (AppArmor's own denial of it, with the
# user namespace bypassed, is shown above).
expect_fails "bypass: load a module" runc_in_segment sh -c 'cp /bin/busybox /x.ko && insmod /x.ko'
expect_match "$OUT" "Operation not permitted" "refused by the kernel in the segment's user namespace"
# Asking runc for no confinement at all is refused by AppArmor too.
jq '.process.apparmorProfile = "unconfined"' "$bundle/config.json" >"$bundle/unconfined.json"
cp "$bundle/config.json" "$bundle/confined.json"
cp "$bundle/unconfined.json" "$bundle/config.json"
attempt bypass "run a container unconfined" "$by_segment" runc_in_segment true
cp "$bundle/confined.json" "$bundle/config.json"
