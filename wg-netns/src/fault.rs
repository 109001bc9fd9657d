//! Test-only fault injection: with the `fault-injection` feature, the N-th
//! netlink request, UAPI exchange or daemon start of the process fails when
//! `WG_NETNS_FAIL_AT=N` is set, so tests can prove that every failure of an
//! attachment leaves nothing behind. Without the feature this is a no-op the
//! compiler removes, and the feature refuses to build in release mode.

#[cfg(all(feature = "fault-injection", not(debug_assertions)))]
compile_error!("the fault-injection feature is for test builds only, never a release build");

/// Count one operation; fail it if it is the one `WG_NETNS_FAIL_AT` names.
#[cfg(feature = "fault-injection")]
pub(crate) fn check(op: &'static str) -> crate::Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static FAIL_AT: OnceLock<Option<u32>> = OnceLock::new();
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let at = *FAIL_AT.get_or_init(|| {
        std::env::var("WG_NETNS_FAIL_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if at == Some(n) {
        return Err(crate::Error::io(
            format!("injected fault at operation {n} ({op})"),
            std::io::Error::other("injected by WG_NETNS_FAIL_AT"),
        ));
    }
    Ok(())
}

/// Without the feature: nothing is counted and nothing fails.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn check(_op: &'static str) -> crate::Result<()> {
    Ok(())
}
