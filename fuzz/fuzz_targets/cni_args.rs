//! CNI_ARGS and the whole CNI environment.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = wg_cni::cni::parse_args(s);
    let mut parts = s.splitn(5, '\n');
    let vars: Vec<(&str, String)> = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"]
        .into_iter()
        .map(|k| (k, parts.next().unwrap_or_default().to_string()))
        .collect();
    let _ = wg_cni::cni::Env::from_vars(|k| vars.iter().find(|(kk, _)| *kk == k).map(|(_, v)| v.clone()));
});
