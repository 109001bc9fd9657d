//! Join two fresh network namespaces with a WireGuard tunnel, using only the
//! public API of wg-netns, send a datagram through it, show the devices'
//! state, and clean up (also on failure).
//!
//!     sudo cargo run -p wg-netns-examples --example two_namespaces
//!
//! Everything happens inside the two namespaces this program creates: the
//! underlay is a veth pair between them, so no packet leaves the machine.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use wg_netns::{
    Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, Netns, PeerConfig, PrivateKey, Rtnl,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Removes the namespaces it holds (and with them the interfaces) when dropped.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            if let Ok(ns) = Netns::from_name(name) {
                // Delete links first: a userspace daemon born in a namespace
                // keeps it alive until its interface goes.
                if let Ok(rtnl) = Rtnl::open(&ns) {
                    for l in rtnl.links().unwrap_or_default() {
                        if l.name != "lo" {
                            let _ = rtnl.delete_link(l.index);
                        }
                    }
                }
            }
            let _ = Netns::remove_named(name);
        }
        println!("cleaned up: namespaces {} removed", self.0.join(", "));
    }
}

fn main() -> Res<()> {
    let backend = Backend::detect()?;
    println!("backend: {:?}", backend.kind());
    let tag = std::process::id();
    let (name_a, name_b) = (format!("wgdemo-{tag}-a"), format!("wgdemo-{tag}-b"));
    let mut guard = Namespaces(Vec::new());
    let a = Netns::create_named(&name_a)?;
    guard.0.push(name_a.clone());
    let b = Netns::create_named(&name_b)?;
    guard.0.push(name_b.clone());
    // Userspace control sockets are named after the birth name, machine-wide.
    let (birth_a, birth_b) = (format!("wgd{tag:x}a"), format!("wgd{tag:x}b"));

    // Underlay: a veth pair between the namespaces.
    let (ra, rb) = (Rtnl::open(&a)?, Rtnl::open(&b)?);
    let veth = ra.create_veth(&IfName::new("veth-a")?, &IfName::new("veth-b")?, Some(&b))?;
    let veth_b = rb.link_by_name(&IfName::new("veth-b")?)?;
    ra.add_address(veth.index, "192.168.77.1/24".parse()?)?;
    rb.add_address(veth_b.index, "192.168.77.2/24".parse()?)?;
    for (r, idx) in [(&ra, veth.index), (&rb, veth_b.index)] {
        r.set_up(idx, true)?;
        r.set_up(r.link_by_name(&IfName::new("lo")?)?.index, true)?;
    }
    println!("underlay: {name_a} 192.168.77.1 <-veth-> 192.168.77.2 {name_b}");

    // The tunnel: one interface in each namespace, each the other's peer.
    let (ka, kb) = (PrivateKey::generate()?, PrivateKey::generate()?);
    let spec = |me: &PrivateKey,
                peer: &PrivateKey,
                birth: &str,
                port: u16,
                peer_ep: &str,
                addr: &str,
                peer_ip: &str|
     -> Res<InterfaceSpec> {
        Ok(InterfaceSpec::new(IfName::new(birth)?, IfName::new("wg0")?)
            .device(
                DeviceConfig::new()
                    .private_key(me.clone())
                    .listen_port(port)
                    .peer(
                        PeerConfig::new(peer.public_key())
                            .endpoint(peer_ep.parse()?)
                            .allowed_ip(peer_ip.parse()?),
                    ),
            )
            .address(addr.parse()?))
    };
    let att_a = Birthplace::new(&a, &a, &backend)?.attach(&spec(
        &ka,
        &kb,
        &birth_a,
        51820,
        "192.168.77.2:51821",
        "10.99.0.1/24",
        "10.99.0.2/32",
    )?)?;
    let att_b = Birthplace::new(&b, &b, &backend)?.attach(&spec(
        &kb,
        &ka,
        &birth_b,
        51821,
        "192.168.77.1:51820",
        "10.99.0.2/24",
        "10.99.0.1/32",
    )?)?;
    println!(
        "tunnel: {name_a}/wg0 10.99.0.1 (key {}) <-> {name_b}/wg0 10.99.0.2 (key {})",
        att_a.public_key.map(|k| k.to_base64()).unwrap_or_default(),
        att_b.public_key.map(|k| k.to_base64()).unwrap_or_default()
    );

    // A UDP echo through the tunnel: sockets created inside each namespace.
    let server = b.run(|| UdpSocket::bind("10.99.0.2:7777"))??;
    let client = a.run(|| UdpSocket::bind("10.99.0.1:0"))??;
    client.set_read_timeout(Some(Duration::from_millis(500)))?;
    server.set_read_timeout(Some(Duration::from_millis(500)))?;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let reply = loop {
        client.send_to(b"hello through wireguard", "10.99.0.2:7777")?;
        if let Ok((n, from)) = server.recv_from(&mut buf) {
            server.send_to(&buf[..n], from)?;
            if let Ok(n) = client.recv(&mut buf) {
                break String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        if started.elapsed() > Duration::from_secs(12) {
            return Err("no echo through the tunnel within 12 s".into());
        }
    };
    println!("echo: {reply:?} after {:?}", started.elapsed());

    for (label, ns) in [(&name_a, &a), (&name_b, &b)] {
        let place = Birthplace::new(ns, ns, &backend)?;
        let birth = if label == &name_a { &birth_a } else { &birth_b };
        let found = place
            .find(&IfName::new("wg0")?, &IfName::new(birth.as_str())?)?
            .ok_or("wg0 vanished")?;
        // Counters and peers, without key material.
        let dev = place.device(&found)?.stats()?;
        println!(
            "{label}/wg0: listening on {}, public key {}",
            dev.listen_port,
            dev.public_key.map(|k| k.to_base64()).unwrap_or_default()
        );
        for p in &dev.peers {
            println!(
                "  peer {}: endpoint {:?}, allowed {:?}, handshake {:?} ago, rx {} B, tx {} B",
                p.public_key,
                p.endpoint.map(|e| e.to_string()),
                p.allowed_ips
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>(),
                p.last_handshake
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| Duration::from_secs(d.as_secs())),
                p.rx_bytes,
                p.tx_bytes
            );
        }
    }
    for (ns, birth) in [(&a, &birth_a), (&b, &birth_b)] {
        Birthplace::new(ns, ns, &backend)?
            .detach(&IfName::new("wg0")?, &IfName::new(birth.as_str())?)?;
    }
    println!("detached both interfaces (daemons and sockets gone)");
    drop(guard);
    Ok(())
}
