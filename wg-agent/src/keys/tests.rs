use super::*;
use std::os::unix::fs::symlink;

/// A directory under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir().join(format!(
            "wg-agent-keys-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        TempDir(base)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const UID: &str = "0d7a4a4e-7c5b-4b8e-9a4e-2f3c1b6a9d10";

fn id(ifname: &str) -> KeyId {
    KeyId::new(UID, ifname).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn key_ids() {
    let k = KeyId::new(UID, "wg_pods").unwrap();
    assert_eq!(k.pod_uid(), UID);
    assert_eq!(k.ifname(), "wg_pods");
    assert_eq!(k.to_string(), format!("{UID}_wg_pods"));
    assert_eq!(KeyId::from_file_name(&k.file_name()), Some(k.clone()));
    // Odd but valid interface names survive the round trip.
    for name in ["a.key", "x", "!~.-_*", "123456789012345", "a..b"] {
        let k = KeyId::new(UID, name).unwrap();
        assert_eq!(KeyId::from_file_name(&k.file_name()), Some(k));
    }
    for (uid, ifname) in [
        ("", "wg0"),
        ("../x", "wg0"),
        ("a_b", "wg0"),
        ("a/b", "wg0"),
        (&"a".repeat(65), "wg0"),
        (UID, ""),
        (UID, "."),
        (UID, ".."),
        (UID, "a/b"),
        (UID, "a:b"),
        (UID, "a b"),
        (UID, "a\nb"),
        (UID, "é"),
        (UID, "1234567890123456"),
    ] {
        let e = KeyId::new(uid, ifname).unwrap_err();
        assert!(
            matches!(e, KeyStoreError::InvalidId(_)),
            "{uid:?} {ifname:?}"
        );
    }
    for name in [
        ".x.key",
        "x.key",
        "uid_wg0",
        "uid_wg0.key.tmp.1.2",
        "_wg0.key",
    ] {
        assert_eq!(KeyId::from_file_name(name), None, "{name}");
    }
}

#[test]
fn create_reload_rotate_remove_list() {
    let tmp = TempDir::new("cycle");
    let dir = tmp.0.join("keys");
    let store = KeyStore::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(store.dir(), dir);
    let a = id("wg0");
    assert_eq!(store.public_key(&a).unwrap(), None);
    let (k1, o) = store.get_or_create(&a, "").unwrap();
    assert_eq!(o, KeyOutcome::Created);
    let file = dir.join(a.file_name());
    assert_eq!(mode(&file), 0o600);
    // The format.
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["privateKey"], k1.to_base64().as_str());
    assert_eq!(v["generation"], "");
    // Same generation: the same key, also from a new store (restart).
    assert_eq!(
        store.get_or_create(&a, "").unwrap(),
        (k1.clone(), KeyOutcome::Existing)
    );
    drop(store);
    let store = KeyStore::open(&dir).unwrap();
    assert_eq!(
        store.get_or_create(&a, "").unwrap(),
        (k1.clone(), KeyOutcome::Existing)
    );
    assert_eq!(store.public_key(&a).unwrap(), Some(k1.public_key()));
    // Rotation on request.
    let (k2, o) = store.get_or_create(&a, "r1").unwrap();
    assert_eq!(o, KeyOutcome::Rotated);
    assert_ne!(k2, k1);
    assert_eq!(
        store.get_or_create(&a, "r1").unwrap(),
        (k2.clone(), KeyOutcome::Existing)
    );
    // Removing the annotation is a change too.
    let (k3, o) = store.get_or_create(&a, "").unwrap();
    assert_eq!(o, KeyOutcome::Rotated);
    assert_ne!(k3, k2);
    assert_eq!(mode(&file), 0o600);
    // Generations are stored exactly, escapes included.
    let odd = "\u{1}\"\\\n\u{7f}é";
    let b = id("wg1");
    let (kb, _) = store.get_or_create(&b, odd).unwrap();
    assert_eq!(
        store.get_or_create(&b, odd).unwrap(),
        (kb, KeyOutcome::Existing)
    );
    let e = store
        .get_or_create(&b, &"x".repeat(MAX_GENERATION_LEN + 1))
        .unwrap_err();
    assert!(matches!(e, KeyStoreError::GenerationTooLong { .. }));
    // List skips temporary files and strangers.
    fs::write(dir.join(format!(".{}{TMP_MARK}1.2", b.file_name())), "x").unwrap();
    fs::write(dir.join("README"), "x").unwrap();
    assert_eq!(store.list().unwrap(), vec![a.clone(), b.clone()]);
    // No temporary file is left by writes.
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.iter().filter(|n| n.contains(TMP_MARK)).count(), 1);
    // Reopening removes the stale temporary file.
    drop(store);
    let store = KeyStore::open(&dir).unwrap();
    assert!(fs::read_dir(&dir).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(TMP_MARK)));
    assert!(store.remove(&a).unwrap());
    assert!(!store.remove(&a).unwrap());
    assert_eq!(store.list().unwrap(), vec![b]);
    assert_eq!(store.public_key(&a).unwrap(), None);
    let (_, o) = store.get_or_create(&a, "").unwrap();
    assert_eq!(o, KeyOutcome::Created);
}

#[test]
fn refuses_open_directories() {
    let tmp = TempDir::new("modes");
    let dir = tmp.0.join("keys");
    fs::create_dir(&dir).unwrap();
    for m in [0o755, 0o750, 0o701, 0o707] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(m)).unwrap();
        let e = KeyStore::open(&dir).unwrap_err();
        assert!(matches!(e, KeyStoreError::Directory { .. }), "{m:o}: {e}");
        let text = e.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(text.contains(&format!("{m:o}")), "{text}");
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    KeyStore::open(&dir).unwrap();
    // A symbolic link to a good directory, and a file: refused.
    let link = tmp.0.join("link");
    symlink(&dir, &link).unwrap();
    let e = KeyStore::open(&link).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let file = tmp.0.join("file");
    fs::write(&file, "").unwrap();
    let e = KeyStore::open(&file).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    // Missing parents are made; the store itself is 0700.
    let deep = tmp.0.join("a/b/keys");
    KeyStore::open(&deep).unwrap();
    assert_eq!(mode(&deep), 0o700);
}

#[test]
fn refuses_untrustworthy_files() {
    let tmp = TempDir::new("files");
    let store = KeyStore::open(&tmp.0.join("keys")).unwrap();
    let a = id("wg0");
    let (key, _) = store.get_or_create(&a, "").unwrap();
    let file = store.dir().join(a.file_name());
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let e = store.get_or_create(&a, "").unwrap_err();
    assert!(matches!(e, KeyStoreError::Insecure { .. }), "{e}");
    assert!(e.to_string().contains(&file.display().to_string()));
    // A symbolic link in place of the file.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = tmp.0.join("elsewhere.key");
    fs::rename(&file, &elsewhere).unwrap();
    symlink(&elsewhere, &file).unwrap();
    let e = store.public_key(&a).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(!format!("{e} {e:?}").contains(key.to_base64().as_str()));
}

#[test]
fn corrupt_files_are_named_not_echoed() {
    let tmp = TempDir::new("corrupt");
    let store = KeyStore::open(&tmp.0.join("keys")).unwrap();
    let a = id("wg0");
    let file = store.dir().join(a.file_name());
    let secret = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=";
    for body in [
        format!("not json {secret}"),
        format!("{{\"privateKey\": \"{secret}\"}}"),
        format!("{{\"privateKey\": \"{secret}\", \"generation\": 5}}"),
        format!("{{\"privateKey\": [\"{secret}\"], \"generation\": \"\"}}"),
        format!(
            "{{\"privateKey\": \"{}\", \"generation\": \"\"}}",
            &secret[..40]
        ),
        format!("{{\"privateKey\": \"{secret}\", \"generation\": \"{secret}\""),
        String::new(),
        "x".repeat(MAX_FILE_LEN as usize + 1),
    ] {
        fs::write(&file, &body).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        for e in [
            store.get_or_create(&a, "").unwrap_err(),
            store.public_key(&a).unwrap_err(),
        ] {
            assert!(matches!(e, KeyStoreError::Corrupt { .. }), "{e}");
            let shown = format!("{e} {e:?}");
            assert!(shown.contains(&file.display().to_string()), "{shown}");
            assert!(!shown.contains(&secret[..8]), "{shown}");
            assert!(!shown.contains("not json"), "{shown}");
        }
        // Never replaced silently.
        assert_eq!(fs::read_to_string(&file).unwrap(), body);
    }
    // Removing it and asking again gives a new key.
    store.remove(&a).unwrap();
    assert_eq!(store.get_or_create(&a, "").unwrap().1, KeyOutcome::Created);
}

#[test]
fn debug_never_shows_keys() {
    let tmp = TempDir::new("debug");
    let store = KeyStore::open(&tmp.0.join("keys")).unwrap();
    let a = id("wg0");
    let got = store.get_or_create(&a, "g").unwrap();
    let b64 = got.0.to_base64();
    for shown in [
        format!("{store:?}"),
        format!("{got:?}"),
        format!("{a:?}"),
        format!("{:?}", store.public_key(&a)),
        format!("{:?}", store.list()),
    ] {
        assert!(!shown.contains(b64.as_str()), "{shown}");
    }
}

#[test]
fn encoding_never_reallocates() {
    let key = PrivateKey::generate().unwrap();
    // Control characters are the worst case (6 bytes each).
    for generation in [
        "",
        "1",
        &"\u{1}".repeat(MAX_GENERATION_LEN),
        &"é".repeat(512),
    ] {
        let buf = encode(&key, generation).unwrap();
        assert!(buf.len() <= buf.capacity());
        assert_eq!(buf.capacity(), 64 + 44 + 6 * generation.len());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["generation"], generation);
    }
}
