//! Are wg-netns's blocking handles fit for an async agent? The same calls on
//! one shared `Arc<Birthplace>`, side by side in one run: made directly,
//! through `tokio::task::spawn_blocking` one at a time (the hop's cost), and
//! 64 at once from async tasks (do they serialize or overlap?).
//!
//!     sudo cargo bench -p wg-netns-benches --bench handles [-- --rounds 200]
//!
//! Needs root and a backend (kernel, or wireguard-go). Works inside two
//! namespaces it creates (node and pod) and removes. Prints a Markdown
//! table; timings are never asserted.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use wg_netns::{
    Backend, Birthplace, DeviceConfig, IfName, InterfaceSpec, Netns, PeerConfig, PrivateKey,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() -> Res<()> {
    let rounds: usize = common::flag("--rounds").unwrap_or(200);
    if !common::is_root() {
        eprintln!("SKIP handles bench: needs root");
        return Ok(());
    }
    let backend = Backend::detect()?;
    let tag = std::process::id();
    let (node_name, pod_name) = (format!("wgbench-{tag}-hn"), format!("wgbench-{tag}-hp"));
    let mut cleanup = common::Cleanup {
        namespaces: Vec::new(),
        dir: None,
    };
    let node = Netns::create_named(&node_name)?;
    cleanup.namespaces.push(node_name.clone());
    let pod = Netns::create_named(&pod_name)?;
    cleanup.namespaces.push(pod_name.clone());

    let place = Arc::new(Birthplace::new(&node, &pod, &backend)?);
    let mut cfg = DeviceConfig::new()
        .private_key(PrivateKey::generate()?)
        .listen_port(51820)
        .replace_peers();
    for i in 0..10u8 {
        cfg.peers.push(
            PeerConfig::new(PrivateKey::generate()?.public_key())
                .allowed_ip(format!("10.201.{i}.0/24").parse()?),
        );
    }
    let spec = Arc::new(
        InterfaceSpec::new(
            IfName::derived("wgb", &format!("{tag}/handles"))?,
            IfName::new("wg0")?,
        )
        .device(cfg)
        .address("10.200.0.1/24".parse()?),
    );
    let attached = place.attach(&spec)?;
    let device = Arc::new(place.device(&attached)?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "backend: {}; {rounds} rounds; one shared Arc<Birthplace> and Arc<WgDevice>; a 2-worker tokio runtime",
        backend.kind()
    );
    println!();
    println!("| call | direct | via spawn_blocking | hop | 64 concurrent tasks: wall / call |");
    println!("|---|---:|---:|---:|---:|");
    type Call = Arc<dyn Fn() -> Res<()> + Send + Sync>;
    let calls: Vec<(&str, Call)> = vec![
        ("WgDevice::stats", {
            let d = device.clone();
            Arc::new(move || d.stats().map(|_| ()).map_err(Into::into))
        }),
        ("Birthplace::verify", {
            let (p, s) = (place.clone(), spec.clone());
            Arc::new(move || {
                let drift = p.verify(&s)?;
                if drift.is_empty() {
                    Ok(())
                } else {
                    Err(format!("unexpected drift: {drift:?}").into())
                }
            })
        }),
        ("Birthplace::ensure (no change)", {
            let (p, s) = (place.clone(), spec.clone());
            Arc::new(move || {
                let e = p.ensure(&s)?;
                if e.changed() {
                    Err("ensure changed something".into())
                } else {
                    Ok(())
                }
            })
        }),
    ];
    for (label, call) in calls {
        call()?; // warm: sockets opened
        let mut direct = Vec::with_capacity(rounds);
        let mut hopped = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            call()?;
            direct.push(t.elapsed());
            let c = call.clone();
            let t = Instant::now();
            rt.block_on(async move { tokio::task::spawn_blocking(move || c()).await })??;
            hopped.push(t.elapsed());
        }
        let (d, h) = (median(direct), median(hopped));
        let n = 64;
        let c = call.clone();
        let t = Instant::now();
        rt.block_on(async move {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let c = c.clone();
                    tokio::spawn(async move { tokio::task::spawn_blocking(move || c()).await })
                })
                .collect();
            for t in tasks {
                t.await???;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })?;
        let wall = t.elapsed();
        println!(
            "| {label} | {} | {} | {} | {} / {} |",
            us(d),
            us(h),
            us(h.saturating_sub(d)),
            us(wall),
            us(wall / n)
        );
    }
    place.detach(&spec.name, &spec.birth_name)?;
    drop(cleanup);
    Ok(())
}
