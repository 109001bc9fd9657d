//! TEMP stub
#![allow(missing_docs, unused)]
use std::collections::BTreeSet;
use wg_netns::IpNetwork;
use wg_k8s_types::WireGuardAddressBlock;
#[derive(Debug, thiserror::Error)]
#[error("block")]
pub struct BlockError;
pub async fn claim(api: &kube::Api<WireGuardAddressBlock>, network: &str, pool: IpNetwork, size: u8, node: &str, taken: &BTreeSet<IpNetwork>) -> Result<Option<IpNetwork>, BlockError> { todo!() }
pub async fn owned(api: &kube::Api<WireGuardAddressBlock>, network: &str, node: &str) -> Result<Vec<IpNetwork>, BlockError> { todo!() }
