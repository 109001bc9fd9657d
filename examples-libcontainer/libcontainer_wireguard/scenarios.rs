use std::fmt::Display;
use std::time::{Duration, Instant};

use wg_netns::IfName;

use crate::container::{run_container, Mode};
use crate::lab::{eventually, Lab};
use crate::{Ctx, Res, PEER_TUNNEL};

// ---------------------------------------------------------------------------
// Scenarios and reporting.

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) n: u32,
    pub(crate) failed: u32,
}

impl Report {
    pub(crate) fn check(&mut self, ok: bool, what: impl Display) {
        self.n += 1;
        if ok {
            println!("ok {} - {what}", self.n);
        } else {
            self.failed += 1;
            println!("not ok {} - {what}", self.n);
        }
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The ping scenario: the container reaches the peer through the tunnel.
pub(crate) fn scenario_ping(lab: &Lab, report: &mut Report) -> Res<()> {
    let id = format!("wglc-{}-ping", lab.tag);
    let config = lab.config("")?;
    // busybox: bring lo up, then ping the peer's WireGuard address through
    // wg0 (the only route out), retrying while the first handshake runs.
    let script = format!(
        "ip link set lo up || exit 2; i=0; while [ $i -lt 10 ]; do \
         ping -c 1 -W 2 {PEER_TUNNEL} && exit 0; i=$((i+1)); done; exit 1"
    );
    let t = Instant::now();
    let out = lab
        .node
        .run(|| run_container(lab, &id, &script, Mode::Attach(&config)))
        .ctx("node thread")?;
    let total = t.elapsed();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            report.check(false, format!("ping scenario: {e}"));
            let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
            report_leftovers(lab, report, &id, birth.as_str(), "after the failed run");
            return Ok(());
        }
    };
    let record = out.record.as_ref().ok_or("no record")?;
    let birth = record.attachment.birth_name.to_string();
    let tm = &out.timings;
    report.check(
        true,
        format!(
            "create {} -> attach {} (wg0 born {birth}, key {}) -> start {}",
            ms(tm.create),
            ms(tm.attach),
            record.public_key,
            ms(tm.start)
        ),
    );
    report.check(
        out.exit_ok,
        format!(
            "the container pinged {PEER_TUNNEL} through the tunnel: {} after {}",
            out.status,
            ms(tm.wait)
        ),
    );
    let (before, after) = out.peer_rx.unwrap_or_default();
    report.check(
        after > before,
        format!(
            "the peer received {} bytes from the container (wg-netns stats)",
            after.saturating_sub(before)
        ),
    );
    // Whether detach still found something depends on timing: the
    // container's exit destroys its namespace and with it wg0, and the
    // userspace daemon then exits by itself; detach stops it if not.
    report.check(
        true,
        format!(
            "detach {} ({}), delete {}",
            if out.detached {
                "stopped the daemon"
            } else {
                "found it already gone with the container's namespace"
            },
            ms(tm.detach),
            ms(tm.delete)
        ),
    );
    // What must have existed: a record, the cgroups, the state directory;
    // with userspace WireGuard also the daemon and its control socket.
    let mut expected = vec!["record ", "cgroup ", "container state "];
    if record.attachment.backend == wg_netns::BackendKind::Userspace {
        expected.extend(["socket ", "daemon pid "]);
    }
    report.check(
        expected
            .iter()
            .all(|e| out.existed.iter().any(|x| x.starts_with(e))),
        format!(
            "while it ran ({:?} backend): {}",
            record.attachment.backend,
            out.existed.join(", ")
        ),
    );
    report_leftovers(lab, report, &id, &birth, "after detach and delete");
    println!("# ping scenario total {}", ms(total));
    Ok(())
}

fn report_leftovers(lab: &Lab, report: &mut Report, id: &str, birth: &str, when: &str) {
    let mut left = Vec::new();
    let clean = eventually(Duration::from_secs(3), || {
        left = lab.leftovers(id, birth);
        left.is_empty()
    });
    report.check(
        clean,
        format!(
            "nothing left {when} (link, daemon, socket, record, cgroup, state dir){}",
            if clean {
                String::new()
            } else {
                format!(": {}", left.join(", "))
            }
        ),
    );
}

/// A late attach failure (a route through an unreachable gateway, after the
/// daemon started): the error comes back, the runtime's guard deletes the
/// container, nothing is left.
pub(crate) fn scenario_attach_fails(lab: &Lab, report: &mut Report) -> Res<()> {
    let id = format!("wglc-{}-fail", lab.tag);
    let config = lab.config(r#", "routes": [{"dst": "10.99.0.0/16", "gw": "10.55.55.55"}]"#)?;
    let out = lab
        .node
        .run(|| run_container(lab, &id, "true", Mode::Attach(&config)))
        .ctx("node thread")?;
    match out {
        Err(e) => report.check(
            e.starts_with("attach: ") && e.contains("RTM_NEWROUTE"),
            format!("a late attach failure is returned: {e}"),
        ),
        Ok(_) => report.check(false, "an attach through an unreachable gateway succeeded"),
    }
    let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
    report_leftovers(lab, report, &id, birth.as_str(), "after the failed attach");
    Ok(())
}

/// A panic between attach and start: the guards detach and delete.
pub(crate) fn scenario_panic(lab: &Lab, report: &mut Report) -> Res<()> {
    let id = format!("wglc-{}-panic", lab.tag);
    let config = lab.config("")?;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = lab
        .node
        .run(|| run_container(lab, &id, "true", Mode::PanicAfterAttach(&config)));
    std::panic::set_hook(hook);
    report.check(
        matches!(out, Err(wg_netns::Error::NetnsThreadPanicked(_))),
        "a panic between attach and start unwinds through the guards",
    );
    let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
    report_leftovers(lab, report, &id, birth.as_str(), "after the panic");
    Ok(())
}
