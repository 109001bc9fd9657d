//! CNI network configuration + prevResult: parse, and when valid, build every
//! version's result from it (what ADD answers) and the device configuration
//! from the peers as parsed. Parsing does no I/O (no DNS, no key file), so
//! neither does this target: peers are never resolved here.
#![no_main]
use libfuzzer_sys::fuzz_target;
use wg_attach::config::NetConf;
use wg_cni::cni::{build_result, ResultInterface, Version};

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        let name = conf.interface_name.clone();
        let (iface, ips, routes) = wg_cni::answer::result_parts(&conf, &name, "/var/run/netns/x", 1420);
        let _: &ResultInterface = &iface;
        for v in [Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0] {
            let r = build_result(v, conf.prev_result.as_ref(), &iface, &ips, &routes, conf.dns.as_ref());
            assert_eq!(r["cniVersion"], v.as_str());
        }
        let peers = conf
            .peers
            .iter()
            .map(|p| {
                let mut c = wg_netns::PeerConfig::new(p.public_key).allowed_ips(p.allowed_ips.iter().copied());
                c.endpoint = p.endpoint.as_ref().and_then(|e| e.address());
                c
            })
            .collect();
        let _ = wg_attach::plan::device_config(&conf, None, peers);
    }
});
