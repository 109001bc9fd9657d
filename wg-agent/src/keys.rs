//! TEMP stub
#![allow(missing_docs, unused)]
use wg_netns::PrivateKey;
#[derive(Debug)]
pub struct KeyStore;
#[derive(Debug, Clone)]
pub struct KeyId(String);
impl std::fmt::Display for KeyId { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(&self.0) } }
#[derive(Debug, thiserror::Error)]
#[error("key")]
pub struct KeyStoreError;
pub enum KeyOutcome { Existing, Created, Rotated }
impl KeyId { pub fn new(uid: &str, i: &str) -> Result<KeyId, KeyStoreError> { todo!() } }
impl KeyStore {
    pub fn open(p: &std::path::Path) -> Result<KeyStore, KeyStoreError> { todo!() }
    pub fn get_or_create(&self, id: &KeyId, g: &str) -> Result<(PrivateKey, KeyOutcome), KeyStoreError> { todo!() }
    pub fn remove(&self, id: &KeyId) -> Result<(), KeyStoreError> { todo!() }
    pub fn list(&self) -> Result<Vec<KeyId>, KeyStoreError> { todo!() }
}
