//! Netlink replies: WireGuard genl dumps, rtnetlink link/route/address
//! messages, raw attribute streams.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wg_netns::fuzzing::decode_wg_genl(data);
    wg_netns::fuzzing::decode_rtnl(data);
    wg_netns::fuzzing::walk_attrs(data);
});
