//! End-to-end under podman 4.3 with its CNI backend: a busybox container on a
//! conflist that chains bridge + host-local + portmap + wg-cni (the original's
//! shape) pings a WireGuard peer on another simulated node through the tunnel;
//! when the container ends, podman's DEL leaves nothing behind.
//!
//! Podman runs inside the node's network namespace only (mounts and cgroups
//! stay the host's, as `nsenter --net` would do), with its storage, state,
//! CNI configuration and image in a private temporary directory.

mod cni;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use wg_netns::{Birthplace, DeviceConfig, InterfaceSpec, PeerConfig, PrivateKey};
use wg_netns_testkit::*;

struct Podman {
    dir: PathBuf,
    image: String,
}

impl Podman {
    /// A private podman setup, or `None` when podman/runc/busybox are missing.
    fn new(test: &str) -> Option<Podman> {
        let missing: Vec<&str> = ["podman", "runc", "conmon"]
            .into_iter()
            .filter(|c| Command::new(c).arg("--version").output().is_err())
            .collect();
        let busybox = Path::new("/bin/busybox");
        if !missing.is_empty() || !busybox.exists() {
            let why =
                format!("needs podman, runc, conmon and busybox-static (missing: {missing:?})");
            assert!(!require_all(), "{test}: required but cannot run: {why}");
            eprintln!("SKIP {test}: {why}");
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("wgcni-podman-{}-{}", std::process::id(), tag()));
        let rootfs = dir.join("rootfs/bin");
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        std::fs::create_dir_all(dir.join("cni")).expect("cni dir");
        std::fs::create_dir_all(dir.join("tmp")).expect("tmp dir");
        std::fs::copy(busybox, rootfs.join("busybox")).expect("busybox");
        for applet in ["sh", "ping", "ip", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join(applet)).expect("applet");
        }
        let d = dir.display();
        let plugin_dir = cni::bin().parent().expect("bin dir").display().to_string();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\ntmp_dir = \"{d}/tmp\"\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/usr/lib/cni\", \"{plugin_dir}\"]\n\
                 network_config_dir = \"{d}/cni\"\n"
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\nrunroot = \"{d}/run\"\ngraphroot = \"{d}/graph\"\n"
            ),
        )
        .expect("storage.conf");
        let p = Podman {
            image: format!("localhost/wgcni-busybox-{}", tag()),
            dir,
        };
        let tar = p.dir.join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(p.dir.join("rootfs"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar");
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = p
            .cmd(&[
                "import",
                "--change",
                "CMD [\"/bin/sh\"]",
                tar.to_str().expect("path"),
                &p.image,
            ])
            .output()
            .expect("podman import");
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(p)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"));
        c
    }

    /// Run podman inside `node`'s network namespace.
    fn run_in(&self, node: &TestNs, args: &[&str]) -> Output {
        node.ns
            .run(|| self.cmd(args).output())
            .expect("namespace thread")
            .expect("podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "--all", "--force"]).output();
        let _ = self.cmd(&["rmi", "--all", "--force"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn busybox_container_pings_through_the_tunnel_under_podman() {
    let Some(backend) = environment("busybox_container_pings_through_the_tunnel_under_podman")
    else {
        return;
    };
    let Some(podman) = Podman::new("busybox_container_pings_through_the_tunnel_under_podman")
    else {
        return;
    };
    let (node, remote) = (TestNs::new("pmnode"), TestNs::new("pmremote"));
    let w = wire(&node, &remote);
    let x = (std::process::id() % 200 + 20) as u8;
    let (kc, kr) = (
        PrivateKey::generate().unwrap(),
        PrivateKey::generate().unwrap(),
    );
    let (wc, wr) = (format!("10.16.{x}.1"), format!("10.16.{x}.2"));

    // The peer: a WireGuard interface on the remote node, made with wg-netns.
    let rname = ifname("wgtp");
    Birthplace::new(&remote.ns, &remote.ns, &backend)
        .unwrap()
        .attach(
            &InterfaceSpec::new(rname.clone(), rname)
                .device(
                    DeviceConfig::new()
                        .private_key(kr.clone())
                        .listen_port(51820)
                        .peer(
                            PeerConfig::new(kc.public_key())
                                .endpoint(format!("{}:51820", w.a_ip).parse().unwrap())
                                .allowed_ip(format!("{wc}/32").parse().unwrap()),
                        ),
                )
                .address(format!("{wr}/24").parse().unwrap()),
        )
        .expect("remote peer");

    let b = if backend == wg_netns::Backend::Kernel {
        "kernel"
    } else {
        "userspace"
    };
    let state = podman.dir.join("state");
    let conflist = json!({"cniVersion": "1.0.0", "name": "wgnet", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
         "ipam": {"type": "host-local", "subnet": format!("10.87.{x}.0/24"), "routes": [{"dst": "0.0.0.0/0"}],
                  "dataDir": podman.dir.join("ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false},
        {"type": "wg-cni", "address": format!("{wc}/24"), "privateKey": &*kc.to_base64(),
         "listenPort": 51820, "backend": b, "stateDir": state,
         "peers": [{"endpoint": format!("{}:51820", w.b_ip), "publicKey": kr.public_key().to_base64(),
                    "allowedIPs": [format!("{wr}/32")], "persistentKeepalive": "25s"}]}
    ]});
    std::fs::write(podman.dir.join("cni/wgnet.conflist"), conflist.to_string()).expect("conflist");

    let script = format!("for i in 1 2 3 4 5 6; do ping -c 1 -W 2 {wr} && exit 0; done; exit 1");
    let out = podman.run_in(
        &node,
        &[
            "run",
            "--rm",
            "--network",
            "wgnet",
            &podman.image,
            "/bin/sh",
            "-c",
            &script,
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "container ping failed:\nstdout: {stdout}\nstderr: {}\nwg-cni log: {}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(state.join("wg-cni.log")).unwrap_or_default()
    );
    assert!(stdout.contains("1 packets received"), "{stdout}");

    // podman ran DEL when the container ended: nothing of ours is left.
    let log = std::fs::read_to_string(state.join("wg-cni.log")).unwrap_or_default();
    assert!(
        log.contains("Add ") && log.contains("Del "),
        "podman drove ADD and DEL: {log}"
    );
    assert!(!log.contains(&*kc.to_base64()), "no key in the log");
    let records: Vec<_> = std::fs::read_dir(state.join("wgnet"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(records.is_empty(), "records left: {records:?}");
    assert!(
        eventually(Duration::from_secs(5), || !node
            .link_names()
            .iter()
            .any(|l| l.starts_with("wgc"))
            && !node.udp_ports().contains(&51820)),
        "leftovers in the node: {:?}",
        node.link_names()
    );
}
