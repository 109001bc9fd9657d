//! WireGuard keys: [`PrivateKey`], [`PublicKey`], [`PresharedKey`].
//!
//! All three are 32 bytes, written as 44 characters of canonical base64, the
//! form `wg genkey`, `wg pubkey` and `wg genpsk` print. Secret keys zeroize
//! their bytes on drop and never show them in `Debug` or `Display`: printing
//! one gives `PrivateKey(<redacted>)`. To see a secret, call
//! [`PrivateKey::to_base64`] explicitly.
//!
//! ```
//! use wg_netns::{PrivateKey, PublicKey};
//! let private = PrivateKey::generate().unwrap();
//! let public: PublicKey = private.public_key();
//! assert_eq!(format!("{private:?}"), "PrivateKey(<redacted>)");
//! assert_eq!(public.to_base64().len(), 44);
//! ```

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::{Zeroize, Zeroizing};

/// Length in bytes of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// Why a key could not be parsed or read. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 44 characters of canonical base64 encoding 32 bytes.
    #[error("{kind} is not 44 characters of canonical base64 encoding 32 bytes")]
    Encoding {
        /// Which kind of key ("private key", "public key", "preshared key").
        kind: &'static str,
    },
    /// Reading a key file failed.
    #[error("reading {kind} from {path}: {reason}")]
    File {
        /// Which kind of key.
        kind: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The operating system's random generator failed.
    #[error("the system random generator failed: {0}")]
    Random(String),
}

fn decode(kind: &'static str, s: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let s = s.as_bytes();
    // Canonical form only: 43 base64 characters plus one '=' (the last
    // character before '=' must carry no stray low bits, which the strict
    // decoder below enforces).
    if s.len() != 44 || s[43] != b'=' {
        return Err(KeyError::Encoding { kind });
    }
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // 44 chars of padded base64 decode to at most 33 bytes: decode into a
    // zeroizing scratch buffer, then check the length is exactly 32.
    let mut scratch = Zeroizing::new([0u8; 33]);
    match STANDARD.decode_slice(s, &mut scratch[..]) {
        Ok(KEY_LEN) => {
            out.copy_from_slice(&scratch[..KEY_LEN]);
            Ok(out)
        }
        _ => Err(KeyError::Encoding { kind }),
    }
}

fn read_key_file(kind: &'static str, path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let file_err = |reason: String| KeyError::File {
        kind,
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
    // A key file is 44 characters and a newline; refuse anything large so a
    // wrong path (a log, a device) is not slurped into memory.
    if meta.len() > 4096 {
        return Err(file_err(format!(
            "file is {} bytes, too large for a key",
            meta.len()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?);
    Ok(Zeroizing::new(text.trim().to_string()))
}

/// How a key file is checked before it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KeyFileCheck {
    /// Owned by the effective user and not accessible by group or others
    /// (what `wg genkey` with `umask 077` gives). The default.
    #[default]
    OwnerOnly,
    /// Any file the process can read.
    AllowInsecure,
}

/// Check a key file's owner and mode (see [`KeyFileCheck::OwnerOnly`]).
pub fn check_key_file(
    kind: &'static str,
    path: &Path,
    check: KeyFileCheck,
) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    let file_err = |reason: String| KeyError::File {
        kind,
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
    if check == KeyFileCheck::AllowInsecure {
        return Ok(());
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(file_err(format!("owned by uid {}, not {me}", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(file_err(format!(
            "accessible by group or others (mode {:o}); chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// Key types that can be read from a key file.
pub trait KeyMaterial: Sized + Clone {
    /// "private key", "preshared key".
    const KIND: &'static str;
    /// Decode the trimmed file contents.
    fn from_key_text(text: &str) -> Result<Self, KeyError>;
}

/// Where a secret key comes from: given inline, or a file read only when
/// [`KeySource::load`] is called (parsing a configuration reads nothing, so
/// a teardown works after the file is gone).
///
/// ```no_run
/// use wg_netns::key::{KeyFileCheck, KeySource};
/// use wg_netns::PresharedKey;
/// let psk: KeySource<PresharedKey> = KeySource::File("/etc/wg/psk".into());
/// let key = psk.load(KeyFileCheck::OwnerOnly)?; // reads and checks the file now
/// # Ok::<(), wg_netns::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource<K> {
    /// The key itself.
    Inline(K),
    /// A file holding the key in base64.
    File(std::path::PathBuf),
}

impl<K> fmt::Debug for KeySource<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Inline(_) => f.write_str("Inline(<redacted>)"),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl<K: KeyMaterial> KeySource<K> {
    /// The key: the inline one, or the file's after `check`.
    pub fn load(&self, check: KeyFileCheck) -> Result<K, KeyError> {
        match self {
            KeySource::Inline(k) => Ok(k.clone()),
            KeySource::File(path) => {
                check_key_file(K::KIND, path, check)?;
                K::from_key_text(&read_key_file(K::KIND, path)?)
            }
        }
    }
}

impl KeyMaterial for PrivateKey {
    const KIND: &'static str = "private key";
    fn from_key_text(text: &str) -> Result<Self, KeyError> {
        Self::from_base64(text)
    }
}

impl KeyMaterial for PresharedKey {
    const KIND: &'static str = "preshared key";
    fn from_key_text(text: &str) -> Result<Self, KeyError> {
        Self::from_base64(text)
    }
}

/// A Curve25519 private key. Zeroized on drop, redacted in `Debug`/`Display`.
///
/// ```
/// use wg_netns::PrivateKey;
/// // A key from `wg genkey`:
/// let k: PrivateKey = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=".parse().unwrap();
/// assert_eq!(
///     k.public_key().to_base64(),
///     "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0="
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(Zeroizing<[u8; KEY_LEN]>);

impl PrivateKey {
    /// Generate a new key from the OS random generator, clamped exactly like
    /// `wg genkey` (`k[0] &= 248; k[31] = (k[31] & 127) | 64`).
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut bytes[..]).map_err(|e| KeyError::Random(e.to_string()))?;
        clamp(&mut bytes);
        Ok(PrivateKey(bytes))
    }

    /// Wrap raw bytes (no clamping: WireGuard clamps when it uses the key).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut b = bytes;
        let key = PrivateKey(Zeroizing::new(b));
        b.zeroize();
        key
    }

    /// Parse the canonical base64 form.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode("private key", s).map(PrivateKey)
    }

    /// Read a key file as written by `wg genkey > file` (surrounding whitespace is ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let text = read_key_file("private key", path.as_ref())?;
        Self::from_base64(&text)
    }

    /// The raw bytes. Handle with care.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The base64 form, in a buffer that zeroizes on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.0[..]))
    }

    /// Derive the public key, as `wg pubkey` does.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::x25519(
            *self.0,
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
    }

    /// True for the all-zero key, which WireGuard treats as "no key".
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

fn clamp(k: &mut [u8; KEY_LEN]) {
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted private key>")
    }
}

/// A preshared symmetric key (`wg genpsk`). Zeroized on drop, redacted in `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey(Zeroizing<[u8; KEY_LEN]>);

impl PresharedKey {
    /// Generate 32 random bytes, as `wg genpsk` does.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(&mut bytes[..]).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(PresharedKey(bytes))
    }

    /// Wrap raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut b = bytes;
        let key = PresharedKey(Zeroizing::new(b));
        b.zeroize();
        key
    }

    /// Parse the canonical base64 form.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode("preshared key", s).map(PresharedKey)
    }

    /// Read a key file (surrounding whitespace is ignored).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let text = read_key_file("preshared key", path.as_ref())?;
        Self::from_base64(&text)
    }

    /// The raw bytes. Handle with care.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The base64 form, in a buffer that zeroizes on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.0[..]))
    }

    /// True for the all-zero key, which WireGuard treats as "no preshared key".
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }
}

impl FromStr for PresharedKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

impl fmt::Display for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted preshared key>")
    }
}

/// A Curve25519 public key; identifies a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wrap raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// Parse the canonical base64 form.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode("public key", s).map(|z| PublicKey(*z))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The base64 form.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::*;
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    impl Serialize for PublicKey {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&self.to_base64())
        }
    }
    impl<'de> Deserialize<'de> for PublicKey {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = Zeroizing::new(String::deserialize(d)?);
            PublicKey::from_base64(&s).map_err(de::Error::custom)
        }
    }
    impl<'de> Deserialize<'de> for PrivateKey {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = Zeroizing::new(String::deserialize(d)?);
            PrivateKey::from_base64(&s).map_err(de::Error::custom)
        }
    }
    impl<'de> Deserialize<'de> for PresharedKey {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = Zeroizing::new(String::deserialize(d)?);
            PresharedKey::from_base64(&s).map_err(de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Pairs produced by `wg genkey | tee /dev/stderr | wg pubkey` (wireguard-tools 1.0.20210914).
    const WG_VECTORS: &[(&str, &str)] = &[
        (
            "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=",
            "jGGhjGIEbR0Noo8MgjAVh+m5pq4GxD9CZDAl/zsfZF0=",
        ),
        (
            "WJ1ft7YHVJsni90OVa2qK3+3eqU7yK5S0t7yFm6e+W0=",
            "Jqbg1u7/1fK5VU2hadmxLzMmrwCPFe7fJEIzEnLWrl0=",
        ),
    ];

    #[test]
    fn public_keys_match_wg_pubkey_vectors() {
        for (private, public) in WG_VECTORS {
            let k = PrivateKey::from_base64(private).unwrap();
            assert_eq!(k.public_key().to_base64(), *public);
            assert_eq!(&*k.to_base64(), *private);
        }
    }

    #[test]
    fn generated_keys_are_clamped_like_wg_genkey() {
        for _ in 0..64 {
            let k = PrivateKey::generate().unwrap();
            let b = k.as_bytes();
            assert_eq!(b[0] & 7, 0);
            assert_eq!(b[31] & 128, 0);
            assert_eq!(b[31] & 64, 64);
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let k = PrivateKey::generate().unwrap();
        let p = PresharedKey::generate().unwrap();
        let b64 = k.to_base64();
        for s in [
            format!("{k:?}"),
            format!("{k}"),
            format!("{p:?}"),
            format!("{p}"),
        ] {
            assert!(!s.contains(&*b64));
            assert!(!s.contains(&*p.to_base64()));
            assert!(s.contains("redacted"));
        }
    }

    #[test]
    fn rejects_non_canonical_encodings() {
        let good = "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=";
        assert!(PublicKey::from_base64(good).is_ok());
        for bad in [
            "",
            "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E",
            "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E==",
            // stray low bits in the last significant character
            "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43F=",
            "mKQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7-5phyI43E=",
            " KQMU6UHA3epPzrZr8yZxRbmESQ7fA4KO7/5phyI43E=",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        ] {
            assert!(PublicKey::from_base64(bad).is_err(), "{bad:?} accepted");
            let e = PrivateKey::from_base64(bad).unwrap_err();
            assert!(!e.to_string().contains(bad) || bad.is_empty());
        }
    }

    #[test]
    fn key_file_is_trimmed_and_size_limited() {
        let dir = std::env::temp_dir().join(format!("wgnetns-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        std::fs::write(&f, format!("{}\n", WG_VECTORS[0].0)).unwrap();
        let k = PrivateKey::from_file(&f).unwrap();
        assert_eq!(k.public_key().to_base64(), WG_VECTORS[0].1);
        std::fs::write(&f, vec![b'A'; 5000]).unwrap();
        assert!(PrivateKey::from_file(&f).is_err());
        assert!(PrivateKey::from_file(dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// When `wg` is installed, derive public keys with it and compare.
    #[test]
    fn agrees_with_wg_pubkey_when_available() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        else {
            eprintln!("SKIP agrees_with_wg_pubkey_when_available: `wg` not installed");
            return;
        };
        let k = PrivateKey::generate().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{}\n", &*k.to_base64()).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            k.public_key().to_base64()
        );
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in any::<[u8; 32]>()) {
            let p = PublicKey::from_bytes(bytes);
            prop_assert_eq!(PublicKey::from_base64(&p.to_base64()).unwrap(), p);
            let k = PrivateKey::from_bytes(bytes);
            prop_assert_eq!(*PrivateKey::from_base64(&k.to_base64()).unwrap().as_bytes(), bytes);
            let psk = PresharedKey::from_bytes(bytes);
            prop_assert_eq!(*PresharedKey::from_base64(&psk.to_base64()).unwrap().as_bytes(), bytes);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,60}") {
            let _ = PublicKey::from_base64(&s);
            let _ = PrivateKey::from_base64(&s);
        }
    }
}
