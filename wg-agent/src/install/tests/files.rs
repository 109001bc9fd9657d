//! Files: which one is the primary conflist, atomic writes, installing a
//! binary.

use super::*;

#[test]
fn primary_is_the_first_loadable_file_by_name() {
    let t = TempDir::new("primary");
    let d = t.path();
    assert_eq!(primary_conflist(d), None);
    assert_eq!(primary_conflist(&d.join("missing")), None);
    write(&d.join("20-b.conflist"), CONFLIST);
    assert_eq!(primary_conflist(d), Some(d.join("20-b.conflist")));
    write(&d.join("10-a.json"), CONF);
    assert_eq!(primary_conflist(d), Some(d.join("10-a.json")));
    // ".conf" sorts before ".conflist" for the same stem; byte order, not extension order.
    write(&d.join("10-a.conflist"), CONFLIST);
    assert_eq!(primary_conflist(d), Some(d.join("10-a.conflist")));
    write(&d.join("10-a.conf"), CONF);
    assert_eq!(primary_conflist(d), Some(d.join("10-a.conf")));
    write(&d.join("05-z.conflist"), CONFLIST);
    assert_eq!(primary_conflist(d), Some(d.join("05-z.conflist")));
}

#[test]
fn primary_skips_what_does_not_load_and_what_is_hidden_or_temporary() {
    let t = TempDir::new("primary-skip");
    let d = t.path();
    write(&d.join("50-good.conflist"), CONFLIST);
    write(
        &d.join("00-broken.conflist"),
        "{\"name\":\"n\",\"plugins\":[",
    );
    write(
        &d.join("01-noplugins.conflist"),
        r#"{"name":"n","plugins":[]}"#,
    );
    write(
        &d.join("02-noname.conflist"),
        r#"{"plugins":[{"type":"a"}]}"#,
    );
    write(&d.join("03-notype.conf"), r#"{"name":"n"}"#);
    write(&d.join("04-list-in-a.conf"), CONFLIST);
    write(&d.join("05-other.txt"), CONFLIST);
    write(&d.join("06-backup.conflist.bak"), CONFLIST);
    write(&d.join(".00-hidden.conflist"), CONFLIST);
    write(&d.join(".00-x.conflist.wgtmp-1-2"), CONFLIST);
    fs::create_dir(d.join("07-dir.conflist")).unwrap();
    assert_eq!(primary_conflist(d), Some(d.join("50-good.conflist")));
    // A symlink to a file counts (libcni's ReadDir does not skip it).
    std::os::unix::fs::symlink(d.join("50-good.conflist"), d.join("10-link.conflist")).unwrap();
    assert_eq!(primary_conflist(d), Some(d.join("10-link.conflist")));
}

#[test]
fn write_atomic_keeps_the_mode_and_leaves_no_temporary_file() {
    let t = TempDir::new("atomic");
    let p = t.path().join("10-x.conflist");
    write_atomic(&p, b"one").unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o644);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let ino = fs::metadata(&p).unwrap().ino();
    write_atomic(&p, b"two").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"two");
    let m = fs::metadata(&p).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_ne!(m.ino(), ino, "replaced by rename, not rewritten in place");
    assert_eq!(names(t.path()), ["10-x.conflist"]);
    // A missing directory is an error that names the path.
    let e = write_atomic(&t.path().join("no/such/file"), b"x").unwrap_err();
    assert!(e.to_string().contains("no/such"), "{e}");
}

#[test]
fn install_binary_is_atomic_and_skips_identical_bytes() {
    let t = TempDir::new("bin");
    let src = t.path().join("src-wg-cni");
    let bin = t.path().join("bin");
    write(&src, "#!/bin/sh\necho v1\n");
    assert!(install_binary(&src, &bin, "wg-cni").unwrap());
    let target = bin.join("wg-cni");
    let m = fs::metadata(&target).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o755);
    assert_eq!(fs::read(&target).unwrap(), fs::read(&src).unwrap());
    // Identical: no write at all (same inode, same mtime).
    assert!(!install_binary(&src, &bin, "wg-cni").unwrap());
    let m2 = fs::metadata(&target).unwrap();
    assert_eq!(
        (m2.ino(), m2.mtime_nsec(), m2.mtime()),
        (m.ino(), m.mtime_nsec(), m.mtime())
    );
    // Identical bytes but not executable: rewritten with 0755.
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(install_binary(&src, &bin, "wg-cni").unwrap());
    assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o755);
    // Different: replaced by a rename (a reader holding the old file keeps it).
    let held = File::open(&target).unwrap();
    write(&src, "#!/bin/sh\necho v2\n");
    assert!(install_binary(&src, &bin, "wg-cni").unwrap());
    assert_eq!(fs::read(&target).unwrap(), b"#!/bin/sh\necho v2\n");
    assert_eq!(io::read_to_string(held).unwrap(), "#!/bin/sh\necho v1\n");
    assert_eq!(names(&bin), ["wg-cni"]);
    let e = install_binary(&t.path().join("missing"), &bin, "wg-cni").unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
}
