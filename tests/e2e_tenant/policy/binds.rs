//! Bind sources against what the kernel finds in the data area: symlinks,
//! magic links and device nodes planted by a container of the customer's,
//! at create and again at start, restart and docker cp.

use super::{assert_raw_refused, curl};
use crate::common::docker::{DockerCli, TestCa, assert_refused, docker_segment};

#[tokio::test]
async fn bind_sources_are_checked_by_the_kernel() {
    let ca = TestCa::new("cluster-tpbind");
    let (_agent, s) = docker_segment("tpbind", "203.0.113.176-203.0.113.177", &ca, 1024).await;
    let cli = DockerCli::of(&s.public_ipv4, &ca);
    cli.import_busybox();

    // A container with the data area plants what a hostile tenant would.
    let plant = "mkdir -p /d/sub && echo mine > /d/sub/f \
        && /bin/busybox ln -s / /d/esc \
        && /bin/busybox ln -s sub /d/inner \
        && /bin/busybox ln -s /proc/self/root /d/magic \
        && echo planted";
    assert_eq!(
        cli.ok(&[
            "run",
            "--rm",
            "-v",
            "/var/lib/docker/x:/d",
            "busybox",
            "sh",
            "-c",
            plant
        ]),
        "planted"
    );
    // A device node, where the kernel lets the container make one (not in
    // a user-namespaced segment: then the attack fails right here).
    let mknod = cli.run(&[
        "run",
        "--rm",
        "-v",
        "/var/lib/docker/x:/d",
        "busybox",
        "/bin/busybox",
        "mknod",
        "/d/mem",
        "c",
        "1",
        "1",
    ]);
    assert!(
        mknod.success || mknod.stderr.contains("Operation not permitted"),
        "mknod either works or the kernel refuses it: {mknod:?}"
    );

    let refused: &[&[&str]] = &[
        &["-v", "/var/lib/docker/x/esc:/h"],
        &["-v", "/var/lib/docker/x/esc/etc:/h"],
        &["-v", "/var/lib/docker//x/./esc/:/h"],
        &["-v", "/var/lib/docker/x/inner:/h"],
        &["-v", "/var/lib/docker/x/magic:/h"],
        &["-v", "/var/lib/docker/x/sub/f/below:/h"],
        &["--mount", "type=bind,src=/var/lib/docker/x/esc,dst=/h"],
        &[
            "--mount",
            "type=volume,dst=/h,volume-driver=local,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/var/lib/docker/x/esc",
        ],
    ];
    for flags in refused {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend(["busybox", "ls", "/h"]);
        let stderr = cli.fails(&args);
        assert_refused(&stderr, "SEGMENT-1011", &format!("docker {args:?}"));
    }
    if mknod.success {
        let stderr = cli.fails(&[
            "run",
            "--rm",
            "-v",
            "/var/lib/docker/x/mem:/dev/m",
            "busybox",
            "true",
        ]);
        assert_refused(&stderr, "SEGMENT-1011", "a device node in the data area");
    }
    // The local driver mounts a device path as written: `..` after a
    // symlink would be resolved by the kernel through it.
    let stderr = cli.fails(&[
        "volume",
        "create",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        "device=/var/lib/docker/x/esc/../sub",
        "dotdot",
    ]);
    assert_refused(
        &stderr,
        "SEGMENT-1011",
        "a volume device with .. after a symlink",
    );

    // The attack: a bind checked at create (its source does not
    // exist yet), then replaced by a symlink to the segment's root before
    // `docker start`. The plugin checks what the kernel finds at start,
    // restart and docker cp, from what dockerd stored at create.
    cli.ok(&[
        "create",
        "--name",
        "late",
        "-v",
        "/var/lib/docker/x/late:/h",
        "busybox",
        "ls",
        "/h/etc/docker",
    ]);
    cli.ok(&[
        "run",
        "--rm",
        "-v",
        "/var/lib/docker/x:/d",
        "busybox",
        "sh",
        "-c",
        "rm -rf /d/late && /bin/busybox ln -s / /d/late",
    ]);
    let stderr = cli.fails(&["start", "-a", "late"]);
    assert_refused(
        &stderr,
        "SEGMENT-1011",
        "docker start after a symlink was planted",
    );
    let stderr = cli.fails(&["restart", "late"]);
    assert_refused(
        &stderr,
        "SEGMENT-1011",
        "docker restart after a symlink was planted",
    );
    let dest = cli.dir().join("stolen");
    assert!(
        !cli.run(&["cp", "late:/h/etc/hostname", dest.to_str().unwrap()])
            .success
    );
    assert!(!dest.exists(), "docker cp read through the planted symlink");
    let raw = curl(
        &cli,
        &s.public_ipv4,
        "GET",
        "/v1.41/containers/late/archive?path=/h/etc/hostname",
        None,
    );
    assert_raw_refused(
        &raw,
        "SEGMENT-1011",
        "GET archive through the planted symlink",
    );
    let raw = curl(
        &cli,
        &s.public_ipv4,
        "PUT",
        "/v1.41/containers/late/archive?path=/h/tmp",
        Some(("application/x-tar", "not a tarball")),
    );
    assert_raw_refused(
        &raw,
        "SEGMENT-1011",
        "PUT archive through the planted symlink",
    );
    assert_eq!(cli.inspect("{{.State.Status}}", "late"), "created");

    // The same data, reached without a symlink, is the customer's.
    assert_eq!(
        cli.ok(&[
            "run",
            "--rm",
            "-v",
            "/var/lib/docker/x/sub:/h",
            "busybox",
            "cat",
            "/h/f"
        ]),
        "mine"
    );
    cli.ok(&[
        "volume",
        "create",
        "-o",
        "type=none",
        "-o",
        "o=bind",
        "-o",
        "device=/var/lib/docker/x/sub",
        "ok",
    ]);
    assert_eq!(
        cli.ok(&["run", "--rm", "-v", "ok:/h", "busybox", "cat", "/h/f"]),
        "mine"
    );
}
