//! Address helpers shared by the device and routing layers.

use ipnetwork::IpNetwork;

/// Clear host bits: the kernel refuses `10.0.0.1/24` as a route destination,
/// and allowed IPs compare equal only in this form.
///
/// ```
/// assert_eq!(wg_netns::normalize("10.0.0.1/24".parse().unwrap()).to_string(), "10.0.0.0/24");
/// ```
pub fn normalize(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}
