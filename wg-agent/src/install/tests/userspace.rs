//! The userspace WireGuard binary: installed next to the plugin, under
//! the same ownership rules, and replaced while it runs.

use super::*;

#[test]
fn install_puts_both_binaries_and_a_second_install_writes_nothing() {
    let n = node("both");
    let f = n.flannel();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    let plugin = n.bin.join("wg-cni");
    let wg = n.bin.join(USERSPACE_BINARY);
    assert!(r.binary.written);
    assert_eq!(
        r.userspace,
        Some(BinaryReport {
            path: wg.clone(),
            written: true,
            backup: None
        })
    );
    assert_eq!(fs::read(&plugin).unwrap(), fs::read(&n.src).unwrap());
    assert_eq!(fs::read(&wg).unwrap(), fs::read(&n.wg_src).unwrap());
    assert_eq!((mode(&plugin), mode(&wg)), (0o755, 0o755));
    assert_eq!(names(&n.bin), ["wg-cni", USERSPACE_BINARY]);
    assert_eq!(
        inst.state().unwrap().userspace,
        Some(BinaryRecord {
            path: wg.clone(),
            backup: None
        })
    );

    // Nothing written the second time: binaries, state file, conflist.
    let before = [&plugin, &wg, &n.state, &f].map(|p| stamp(p));
    let again = inst.install().unwrap();
    assert!(!again.binary.written && !again.conflist_changed);
    assert!(again
        .userspace
        .is_some_and(|u| !u.written && u.backup.is_none()));
    assert_eq!([&plugin, &wg, &n.state, &f].map(|p| stamp(p)), before);

    // An upgrade: our own file, overwritten without a backup.
    write(&n.wg_src, "wireguard-go v2");
    let up = inst.install().unwrap();
    assert_eq!(
        up.userspace,
        Some(BinaryReport {
            path: wg.clone(),
            written: true,
            backup: None
        })
    );
    assert!(!up.binary.written);
    assert_eq!(fs::read(&wg).unwrap(), b"wireguard-go v2");

    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::Removed)
    );
    assert!(names(&n.bin).is_empty());
    assert!(!n.state.exists());
}

#[test]
fn a_kernel_only_image_installs_no_userspace_binary() {
    let n = node("kernel-only");
    fs::remove_file(&n.wg_src).unwrap();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert!(r.binary.written);
    assert_eq!(r.userspace, None);
    assert_eq!(names(&n.bin), ["wg-cni"]);
    assert_eq!(inst.state().unwrap().userspace, None);
    assert!(r.to_string().contains("userspace WireGuard: none"), "{r}");
    let u = inst.uninstall().unwrap();
    assert_eq!(u.userspace, BinaryUninstall::NotOurs);
    assert!(names(&n.bin).is_empty());
}

#[test]
fn userspace_src_none_disables_the_userspace_binary() {
    let o =
        InstallOptions::from_lookup(|k| (k == "WG_CNI_USERSPACE_SRC").then(|| "none".to_string()))
            .unwrap();
    assert_eq!(o.userspace_src, None);

    let n = node("userspace-none");
    let inst = Installer::new(InstallOptions {
        userspace_src: None,
        ..n.opts(Mode::Chain)
    });
    let r = inst.install().unwrap();
    assert_eq!(r.userspace, None);
    assert_eq!(names(&n.bin), ["wg-cni"]);
    assert_eq!(
        inst.uninstall().unwrap().userspace,
        BinaryUninstall::NotOurs
    );
}

#[test]
fn a_userspace_binary_that_was_there_before_is_restored_or_left() {
    // Other bytes: saved, replaced, restored. Secondary mode installs the
    // userspace binary too: the plugin needs it whatever the mode.
    let n = node("prior-wg");
    let target = n.bin.join(USERSPACE_BINARY);
    write(&target, "someone else's wireguard-go");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
    // A prior plugin too: the two backups must not collide.
    write(&n.bin.join("wg-cni"), "someone else's wg-cni");
    let inst = n.installer(Mode::Secondary);
    let r = inst.install().unwrap();
    let u = r.userspace.clone().unwrap();
    assert!(u.written);
    let backup = u.backup.clone().unwrap();
    assert_eq!(parent_dir(&backup), parent_dir(&n.state));
    assert_ne!(Some(&backup), r.binary.backup.as_ref());
    assert_eq!(fs::read(&backup).unwrap(), b"someone else's wireguard-go");
    assert_eq!(fs::read(&target).unwrap(), b"wireguard-go v1");
    assert_eq!(mode(&target), 0o755);
    assert_eq!(
        inst.state().unwrap().userspace,
        Some(BinaryRecord {
            path: target.clone(),
            backup: Some(backup.clone())
        })
    );
    let un = inst.uninstall().unwrap();
    assert_eq!(
        (un.binary, un.userspace),
        (BinaryUninstall::Restored, BinaryUninstall::Restored)
    );
    assert_eq!(fs::read(&target).unwrap(), b"someone else's wireguard-go");
    assert_eq!(mode(&target), 0o700);
    assert!(!backup.exists());
    assert!(!n.state.exists());

    // Identical bytes already there: not ours, untouched (mode included).
    let n = node("prior-wg-same");
    let target = n.bin.join(USERSPACE_BINARY);
    write(&target, "wireguard-go v1");
    fs::set_permissions(&target, fs::Permissions::from_mode(0o750)).unwrap();
    let before = stamp(&target);
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap();
    assert_eq!(r.userspace.map(|u| u.written), Some(false));
    assert_eq!(inst.state().unwrap().userspace, None);
    assert_eq!(stamp(&target), before);
    assert_eq!(
        inst.uninstall().unwrap().userspace,
        BinaryUninstall::NotOurs
    );
    assert_eq!(fs::read(&target).unwrap(), b"wireguard-go v1");
    assert_eq!(mode(&target), 0o750);

    // Replaced by someone else after us: left in place.
    let n = node("wg-replaced-after");
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    write(&n.bin.join(USERSPACE_BINARY), "newer, not ours");
    assert_eq!(
        inst.uninstall().unwrap().userspace,
        BinaryUninstall::LeftInPlace
    );
    assert_eq!(names(&n.bin), [USERSPACE_BINARY]);
}

#[test]
fn a_userspace_binary_whose_source_is_gone_stays_installed() {
    // A later image without wireguard-go: what we installed stays
    // recorded; uninstall cannot compare its bytes any more and leaves it.
    let n = node("wg-src-gone");
    let inst = n.installer(Mode::Chain);
    inst.install().unwrap();
    fs::remove_file(&n.wg_src).unwrap();
    let r = inst.install().unwrap();
    assert_eq!(r.userspace, None);
    assert!(inst.state().unwrap().userspace.is_some());
    assert!(n.bin.join(USERSPACE_BINARY).exists());
    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::LeftInPlace)
    );
    assert_eq!(names(&n.bin), [USERSPACE_BINARY]);
}

#[test]
fn a_state_file_of_the_previous_version_loads_and_upgrades() {
    let n = node("old-state");
    let f = n.flannel();
    // What the version before the userspace binary wrote: no "userspace".
    let plugin = n.bin.join("wg-cni");
    write(&plugin, "wg-cni binary v0");
    let old = format!(
        "{{\n  \"binary\": {{\n    \"path\": {},\n    \"backup\": null\n  }},\n  \"conflist\": null\n}}\n",
        serde_json::to_string(&plugin).unwrap()
    );
    fs::create_dir_all(parent_dir(&n.state)).unwrap();
    write(&n.state, &old);
    let inst = n.installer(Mode::Chain);
    assert_eq!(
        inst.state().unwrap(),
        InstallState {
            binary: Some(BinaryRecord {
                path: plugin.clone(),
                backup: None
            }),
            conflist: None,
            userspace: None,
        }
    );
    // The upgrade: the plugin is ours (no backup of v0), the userspace
    // binary is new.
    let r = inst.install().unwrap();
    assert!(r.binary.written && r.binary.backup.is_none());
    assert!(r.userspace.is_some_and(|u| u.written && u.backup.is_none()));
    assert_eq!(r.conflist, Some(f));
    let u = inst.uninstall().unwrap();
    assert_eq!(
        (u.binary, u.userspace),
        (BinaryUninstall::Removed, BinaryUninstall::Removed)
    );
    assert!(names(&n.bin).is_empty());
}

#[test]
fn the_reports_name_the_userspace_binary() {
    let n = node("report");
    n.flannel();
    let inst = n.installer(Mode::Chain);
    let r = inst.install().unwrap().to_string();
    assert!(
        r.contains(&format!(
            "userspace WireGuard: {} installed",
            n.bin.join(USERSPACE_BINARY).display()
        )),
        "{r}"
    );
    assert!(r.contains("chained into"), "{r}");
    let u = inst.uninstall().unwrap().to_string();
    assert!(u.contains("userspace WireGuard: removed"), "{u}");
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[test]
fn install_binary_replaces_a_running_binary_without_writing_into_it() {
    let Some(sleep) = find_in_path("sleep") else {
        eprintln!("no sleep in PATH: skipped");
        return;
    };
    let t = TempDir::new("busy");
    let src = t.path().join("src");
    let bin = t.path().join("bin");
    fs::copy(&sleep, &src).unwrap();
    assert!(install_binary(&src, &bin, USERSPACE_BINARY).unwrap());
    let target = bin.join(USERSPACE_BINARY);
    let old = fs::read(&target).unwrap();
    // A file just written can be briefly "busy" for exec: another test
    // thread forking while it was open holds a copy of the descriptor
    // until that child's own exec.
    let mut child = {
        let mut tries = 0;
        loop {
            match std::process::Command::new(&target).arg("30").spawn() {
                Ok(c) => break c,
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("running {}: {e}", target.display()),
            }
        }
    };
    let mut new = old.clone();
    new.extend_from_slice(b"v2");
    fs::write(&src, &new).unwrap();
    let replaced = install_binary(&src, &bin, USERSPACE_BINARY);
    let running = fs::read(format!("/proc/{}/exe", child.id()));
    let alive = child.try_wait().map(|s| s.is_none());
    let _ = child.kill();
    let _ = child.wait();
    // Writing into it would have failed (ETXTBSY) or changed the running
    // process's bytes.
    assert!(replaced.unwrap());
    assert_eq!(fs::read(&target).unwrap(), new);
    assert!(alive.unwrap(), "the daemon kept running");
    assert!(
        running.unwrap() == old,
        "the daemon still runs the old bytes"
    );
    assert_eq!(mode(&target), 0o755);
    assert_eq!(names(&bin), [USERSPACE_BINARY]);
}
