//! TEMP stub
#![allow(missing_docs, unused)]
use wg_netns::IpNetwork;
#[derive(Debug, thiserror::Error)]
pub enum IpamError { #[error("need block")] NeedBlock { pool: IpNetwork }, #[error("other")] Other }
#[derive(Debug)]
pub struct Allocator;
impl Allocator {
    pub fn new(network: &str, pools: Vec<(IpNetwork, u8)>) -> Self { Allocator }
    pub fn allocate(&mut self, owner: &str) -> Result<Vec<IpNetwork>, IpamError> { todo!() }
    pub fn restore(&mut self, owner: &str, addrs: &[IpNetwork]) -> Result<(), IpamError> { todo!() }
    pub fn release(&mut self, owner: &str) -> Vec<IpNetwork> { todo!() }
    pub fn retain(&mut self, f: impl Fn(&str) -> bool) -> Vec<String> { todo!() }
    pub fn add_block(&mut self, b: IpNetwork) -> Result<(), IpamError> { todo!() }
}
