use std::time::Duration;

use wg_netns::IfName;

use crate::container::{run_container, Mode, Timings};
use crate::lab::Lab;
use crate::scenarios::{ms, Report};
use crate::{Ctx, Res};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `n` containers each way (no attach; attach with the UDP socket in the
/// node, the default; attach with `socketNamespace: "container"`), in
/// rotating order; medians.
pub(crate) fn bench(lab: &Lab, report: &mut Report, n: usize) -> Res<()> {
    let host = lab.config("")?;
    let in_ctr = lab.config(r#", "socketNamespace": "container""#)?;
    let configs = [None, Some(&host), Some(&in_ctr)];
    let suffix = ["p", "h", "c"];
    let mut runs: [Vec<Timings>; 3] = Default::default();
    for i in 0..n {
        for k in 0..3 {
            let m = (i + k) % 3;
            let id = format!("wglc-{}-b{i}{}", lab.tag, suffix[m]);
            let mode = configs[m].map_or(Mode::Plain, Mode::Attach);
            // The kernel tears a network namespace down asynchronously, and
            // creating the next one waits for it: let the previous
            // container's go first, so each create is timed alone.
            std::thread::sleep(Duration::from_millis(100));
            let out = lab
                .node
                .run(|| run_container(lab, &id, "true", mode))
                .ctx("node thread")??;
            if !out.exit_ok {
                return Err(format!("bench container {id}: {}", out.status));
            }
            runs[m].push(out.timings);
        }
    }
    let med = |v: &[Timings], f: fn(&Timings) -> Duration| median(v.iter().map(f).collect());
    let cs_plain = med(&runs[0], |t| t.create + t.start);
    println!("# bench: {n} containers each way, process `true`, medians");
    println!(
        "#   no attach:               create {} + start {} = create+start {}; delete {}",
        ms(med(&runs[0], |t| t.create)),
        ms(med(&runs[0], |t| t.start)),
        ms(cs_plain),
        ms(med(&runs[0], |t| t.delete)),
    );
    for (m, label) in [
        (1, "attach, socket in node:  "),
        (2, "attach, socket container:"),
    ] {
        let attach = med(&runs[m], |t| t.attach);
        let cas = med(&runs[m], |t| t.create + t.attach + t.start);
        println!(
            "#   {label} create {} + attach {} + start {} = {}; detach {}, delete {}",
            ms(med(&runs[m], |t| t.create)),
            ms(attach),
            ms(med(&runs[m], |t| t.start)),
            ms(cas),
            ms(med(&runs[m], |t| t.detach)),
            ms(med(&runs[m], |t| t.delete)),
        );
        println!(
            "#     attach / create+start = {:.2}; (create+attach+start) / create+start = {:.2}",
            attach.as_secs_f64() / cs_plain.as_secs_f64(),
            cas.as_secs_f64() / cs_plain.as_secs_f64(),
        );
    }
    report.check(
        true,
        format!("bench: 3 x {n} containers ran and were removed"),
    );
    let mut left = Vec::new();
    for i in 0..n {
        for s in suffix {
            let id = format!("wglc-{}-b{i}{s}", lab.tag);
            let birth = wg_oci::birth_name("oci", &id, &IfName::new("wg0").ctx("name")?);
            left.extend(lab.leftovers(&id, birth.as_str()));
        }
    }
    report.check(
        left.is_empty(),
        format!("nothing left after the bench {left:?}"),
    );
    Ok(())
}
