//! Real containers on this host: a podman container (runc, cgroupfs driver) and a docker
//! container (a dockerd of the test's own, cgroupfs driver), each with `--cpus 0.2` and a busy
//! loop, are recorded by the built `cfstrace`; the report must name each container's cgroup with
//! its runtime (`kind`), its full id, the name given with `--name` (read from the runtime's state
//! files) and its process.
//!
//! Needs root, podman, runc, docker.io (dockerd, containerd) and busybox-static (`cargo xtask
//! setup` installs them). Never skips: a runtime that cannot run is a failure naming why.
//! Containers and the daemon are removed on every way out. No registry is needed: the image is
//! imported from a tarball of the host's static busybox. Runs throttled loops: wrap the run in
//! `flock /tmp/cfstrace-host.lock` where other storms may run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cfstrace_tests::{
    Scratch, Version, at, cfstrace_bin, cpu_hierarchy, require_root, run_with_timeout, scratch,
    stdout_json,
};
use serde_json::Value;

const BUSYBOX: &str = "/bin/busybox";
const PODMAN: &str = "/usr/bin/podman";
/// docker.io's CLI, not whatever else is on PATH (this host has another at /usr/local/bin).
const DOCKER: &str = "/usr/bin/docker";
const DOCKERD: &str = "/usr/sbin/dockerd";
/// docker's default data root: the one cfstrace reads container names from.
const DOCKER_DATA_ROOT: &str = "/var/lib/docker";
const LOOP: &str = "while :; do :; done";
/// `--cpus 0.2`: 20 ms of every 100 ms.
const PERIOD_US: u64 = 100_000;
const QUOTA_US: u64 = 20_000;
const RECORD: &str = "6s";
/// One test at a time: each runs its own recorder and busy container.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Run a runtime's CLI to completion; its stdout, or an error with everything it said.
fn run(bin: &str, args: &[&str], limit: Duration, dir: &Path) -> Result<String, String> {
    let r = run_with_timeout(Path::new(bin), args, dir, limit)?;
    if !r.status.success() {
        return Err(r.describe());
    }
    Ok(r.stdout.trim().to_string())
}

/// A root filesystem of the host's static busybox (`/bin/sh` a link to it), as a tarball for
/// `podman import` / `docker import`.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let meta = fs::metadata(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e}: install busybox-static (cargo xtask setup)"));
    assert!(meta.is_file(), "{BUSYBOX} is not a file");
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("running tar");
    assert!(status.success(), "tar of the busybox rootfs failed");
    tar
}

/// The container process's cgroup path in the hierarchy cfstrace names (the v1 cpu controller's
/// on this hybrid host, else the v2 one), from /proc/PID/cgroup.
fn cpu_cgroup_of(pid: u32) -> String {
    let h = cpu_hierarchy().expect("no cgroup hierarchy with the cpu controller");
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            let ours = match h.version {
                Version::V1 => controllers.split(',').any(|c| c == "cpu"),
                Version::V2 => controllers.is_empty(),
            };
            ours.then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no cpu cgroup in /proc/{pid}/cgroup:\n{text}"))
}

/// Record while the container burns its quota, then report; the report's record of the
/// container's cgroup (found by its full id).
fn record_and_find(dir: &Path, id: &str) -> (Value, Value) {
    let bin = cfstrace_bin();
    let capture = dir.join("capture.jsonl");
    let cap = capture.to_str().unwrap();
    let rec = run_with_timeout(
        &bin,
        &["record", "--duration", RECORD, "-o", cap],
        dir,
        Duration::from_secs(40),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(rec.status.success(), "record failed: {}", rec.describe());
    let rep = run_with_timeout(
        &bin,
        &["report", cap, "--json"],
        dir,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(rep.status.success(), "report failed: {}", rep.describe());
    let report = stdout_json(&rep);
    let cgroup = report["cgroups"]
        .as_array()
        .expect("report.cgroups")
        .iter()
        .find(|c| at(c, "/workload/container").as_str() == Some(id))
        .cloned()
        .unwrap_or_else(|| {
            let seen: Vec<_> = report["cgroups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| (at(c, "/path").clone(), at(c, "/workload").clone()))
                .collect();
            panic!("no cgroup with container {id} in the report; cgroups: {seen:#?}")
        });
    (report, cgroup)
}

/// What every container's record must say: runtime, id, name, path, quota, process.
fn check_container(c: &Value, kind: &str, id: &str, name: &str, path: &str, pid: u32) {
    let w = &c["workload"];
    assert_eq!(w["kind"], kind, "{c:#}");
    assert_eq!(w["container"], id, "{c:#}");
    assert_eq!(w["name"], name, "the runtime's own name for it: {c:#}");
    assert_eq!(c["path"], path, "{c:#}");
    assert_eq!(c["period_us"], PERIOD_US, "{c:#}");
    assert_eq!(c["quota_us"], QUOTA_US, "{c:#}");
    assert!(
        c["periods"].as_u64().unwrap_or(0) > 0,
        "no callbacks: {c:#}"
    );
    let procs = c["processes"].as_array().expect("processes");
    assert!(
        procs.iter().any(|p| p["pid"] == pid && p["comm"] == "sh"),
        "the container's sh (pid {pid}) among its processes: {c:#}"
    );
}

/// This process's hard limit of `resource`: podman's default ulimits (nofile, nproc =
/// 1048576) are above what a process without CAP_SYS_RESOURCE (this host's root) may set, and
/// runc then fails with "error setting rlimits"; the test asks for at most what it has.
fn hard_limit(resource: libc::__rlimit_resource_t, at_most: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `l`, which lives for the call.
    let rc = unsafe { libc::getrlimit(resource, &mut l) };
    assert_eq!(rc, 0, "getrlimit");
    l.rlim_max.min(at_most)
}

/// A podman container, removed on drop (`-t 0`: sh as PID 1 ignores SIGTERM).
struct PodmanContainer {
    name: String,
    dir: PathBuf,
}

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = run(
            PODMAN,
            &["rm", "-f", "-t", "0", &self.name],
            Duration::from_secs(30),
            &self.dir,
        );
    }
}

#[test]
fn podman_container_named_with_runtime_id_and_name() {
    require_root("the podman container test");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir: Scratch = scratch!("containers-podman");
    assert!(
        Path::new(PODMAN).is_file(),
        "{PODMAN} missing: install podman and runc (cargo xtask setup)"
    );
    let tar = busybox_rootfs(&dir);
    let image = "localhost/cfstrace-test-busybox:latest";
    run(
        PODMAN,
        &["import", tar.to_str().unwrap(), image],
        Duration::from_secs(60),
        &dir,
    )
    .unwrap_or_else(|e| panic!("podman import: {e}"));

    let name = format!("cfstrace-podman-{}", std::process::id());
    let guard = PodmanContainer {
        name: name.clone(),
        dir: dir.to_path_buf(),
    };
    let nofile = hard_limit(libc::RLIMIT_NOFILE, 1024);
    let nproc = hard_limit(libc::RLIMIT_NPROC, 4096);
    let (nofile, nproc) = (
        format!("nofile={nofile}:{nofile}"),
        format!("nproc={nproc}:{nproc}"),
    );
    // runc: crun refuses this host's hybrid cgroups. cgroupfs: there is no systemd here.
    let id = run(
        PODMAN,
        &[
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "run",
            "-d",
            "--name",
            &name,
            "--cpus",
            "0.2",
            "--network",
            "none",
            "--ulimit",
            &nofile,
            "--ulimit",
            &nproc,
            image,
            "/bin/sh",
            "-c",
            LOOP,
        ],
        Duration::from_secs(60),
        &dir,
    )
    .unwrap_or_else(|e| panic!("podman run (runc, cgroupfs driver): {e}"));
    assert!(id.len() == 64, "podman run -d printed {id:?}, not an id");
    let pid: u32 = run(
        PODMAN,
        &["inspect", "-f", "{{.State.Pid}}", &name],
        Duration::from_secs(30),
        &dir,
    )
    .unwrap_or_else(|e| panic!("podman inspect: {e}"))
    .parse()
    .expect("a pid");
    let path = cpu_cgroup_of(pid);
    assert_eq!(
        path,
        format!("/libpod_parent/libpod-{id}"),
        "podman's cgroupfs path"
    );

    let (_, c) = record_and_find(&dir, &id);
    check_container(&c, "podman", &id, &name, &path, pid);
    drop(guard);
}

/// A dockerd of the test's own (own socket and exec root; docker's default data root, which is
/// where cfstrace looks for names), stopped on drop with its containerd.
struct Dockerd {
    child: Child,
    sock: String,
    exec_root: PathBuf,
    dir: PathBuf,
    container: Option<String>,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        for bin in [DOCKERD, DOCKER] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} missing: install docker.io (cargo xtask setup)"
            );
        }
        let tag = format!("cfstrace-test-docker-{}", std::process::id());
        let sock = format!("unix:///run/{tag}.sock");
        let exec_root = PathBuf::from(format!("/run/{tag}"));
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .args(["--host", &sock, "--data-root", DOCKER_DATA_ROOT])
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            // No systemd on this host; no networking needed (containers run --network none).
            .args(["--exec-opt", "native.cgroupdriver=cgroupfs"])
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {DOCKERD}: {e}"));
        let d = Dockerd {
            child,
            sock,
            exec_root,
            dir: dir.to_path_buf(),
            container: None,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let r = run(
                DOCKER,
                &["-H", &self.sock, "version"],
                Duration::from_secs(10),
                &self.dir,
            );
            if r.is_ok() {
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "dockerd not ready in 30 s: {}\n--- dockerd.log ---\n{}",
                    r.unwrap_err(),
                    fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-H", self.sock.as_str()];
        all.extend_from_slice(args);
        run(DOCKER, &all, Duration::from_secs(60), &self.dir)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(name) = self.container.take() {
            let _ = self.docker(&["rm", "-f", &name]);
        }
        // SIGTERM: dockerd stops its containerd and unmounts; SIGKILL if it hangs.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // Its containerd outlives a killed dockerd.
                if let Ok(p) = fs::read_to_string(self.exec_root.join("containerd/containerd.pid"))
                    && let Ok(pid) = p.trim().parse::<i32>()
                {
                    // SAFETY: kill(2) on the containerd this dockerd started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = fs::remove_dir_all(&self.exec_root);
    }
}

#[test]
fn docker_container_named_with_runtime_id_and_name() {
    require_root("the docker container test");
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir: Scratch = scratch!("containers-docker");
    let tar = busybox_rootfs(&dir);
    let mut dockerd = Dockerd::start(&dir);
    let image = "cfstrace-test-busybox:latest";
    dockerd
        .docker(&["import", tar.to_str().unwrap(), image])
        .unwrap_or_else(|e| panic!("docker import: {e}"));
    let name = format!("cfstrace-docker-{}", std::process::id());
    dockerd.container = Some(name.clone());
    let id = dockerd
        .docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--cpus",
            "0.2",
            "--network",
            "none",
            image,
            "/bin/sh",
            "-c",
            LOOP,
        ])
        .unwrap_or_else(|e| panic!("docker run (cgroupfs driver): {e}"));
    assert!(id.len() == 64, "docker run -d printed {id:?}, not an id");
    let pid: u32 = dockerd
        .docker(&["inspect", "-f", "{{.State.Pid}}", &name])
        .unwrap_or_else(|e| panic!("docker inspect: {e}"))
        .parse()
        .expect("a pid");
    let path = cpu_cgroup_of(pid);
    assert_eq!(path, format!("/docker/{id}"), "docker's cgroupfs path");
    assert!(
        Path::new(DOCKER_DATA_ROOT)
            .join("containers")
            .join(&id)
            .join("config.v2.json")
            .is_file(),
        "docker keeps the container's config.v2.json under {DOCKER_DATA_ROOT}"
    );

    let (_, c) = record_and_find(&dir, &id);
    check_container(&c, "docker", &id, &name, &path, pid);
    drop(dockerd);
}
