//! Prometheus metrics. Per-peer series use the names and labels of the
//! established WireGuard exporter (mdlayher/wireguard_exporter:
//! `wireguard_peer_receive_bytes_total{device,public_key}`,
//! `wireguard_peer_transmit_bytes_total`, `wireguard_peer_last_handshake_seconds`,
//! `wireguard_device_info`, `wireguard_peer_info`), so its dashboards work;
//! the agent adds `namespace`, `pod` and `network` labels to identify the pod.
//! The agent's own series are `wg_agent_*`.

use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use wg_attach::managed::Verb;
use wg_netns::DeviceStats;

use crate::local::LocalRecord;

/// One device's counters at the last read.
#[derive(Clone, Debug)]
pub struct DeviceSample {
    device: String,
    namespace: String,
    pod: String,
    network: String,
    public_key: String,
    listen_port: u16,
    peers: Vec<PeerSample>,
}

#[derive(Clone, Debug)]
struct PeerSample {
    public_key: String,
    endpoint: String,
    allowed_ips: String,
    rx: u64,
    tx: u64,
    handshake: f64,
}

impl DeviceSample {
    /// From a record and the device's counters (no key material but public
    /// keys).
    pub fn new(rec: &LocalRecord, s: &DeviceStats) -> Self {
        DeviceSample {
            device: rec.attachment.interface.to_string(),
            namespace: rec.namespace.clone(),
            pod: rec.pod.clone(),
            network: rec.network.clone(),
            public_key: rec.public_key.to_base64().to_string(),
            listen_port: s.listen_port,
            peers: s
                .peers
                .iter()
                .map(|p| PeerSample {
                    public_key: p.public_key.to_base64().to_string(),
                    endpoint: p.endpoint.map(|e| e.to_string()).unwrap_or_default(),
                    allowed_ips: p
                        .allowed_ips
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    rx: p.rx_bytes,
                    tx: p.tx_bytes,
                    handshake: p
                        .last_handshake
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Default)]
struct Devices(Mutex<Vec<DeviceSample>>);

impl Collector for Devices {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let devices = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let dev_labels = |d: &'_ DeviceSample| -> Vec<(&'static str, String)> {
            vec![
                ("device", d.device.clone()),
                ("namespace", d.namespace.clone()),
                ("pod", d.pod.clone()),
                ("network", d.network.clone()),
            ]
        };
        {
            let g = ConstGauge::new(1i64);
            let mut m = enc.encode_descriptor(
                "wireguard_device_info",
                "Metadata about a device.",
                None,
                g.metric_type(),
            )?;
            for d in &devices {
                let mut l = dev_labels(d);
                l.push(("public_key", d.public_key.clone()));
                l.push(("listen_port", d.listen_port.to_string()));
                ConstGauge::new(1i64).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "wireguard_peer_info",
                "Metadata about a peer. The public_key label on peer metrics refers to the peer's public key.",
                None,
                ConstGauge::new(1i64).metric_type(),
            )?;
            for d in &devices {
                for p in &d.peers {
                    let mut l = dev_labels(d);
                    l.push(("public_key", p.public_key.clone()));
                    l.push(("endpoint", p.endpoint.clone()));
                    ConstGauge::new(1i64).encode(m.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "wireguard_peer_allowed_ips_info",
                "Metadata about each of a peer's allowed IP subnets for a given device.",
                None,
                ConstGauge::new(1i64).metric_type(),
            )?;
            for d in &devices {
                for p in &d.peers {
                    for ip in p.allowed_ips.split(',').filter(|s| !s.is_empty()) {
                        let mut l = dev_labels(d);
                        l.push(("public_key", p.public_key.clone()));
                        l.push(("allowed_ips", ip.to_string()));
                        ConstGauge::new(1i64).encode(m.encode_family(&l)?)?;
                    }
                }
            }
        }
        for (name, help, pick) in [
            (
                "wireguard_peer_receive_bytes",
                "Number of bytes received from a given peer.",
                (|p: &PeerSample| p.rx) as fn(&PeerSample) -> u64,
            ),
            (
                "wireguard_peer_transmit_bytes",
                "Number of bytes transmitted to a given peer.",
                |p: &PeerSample| p.tx,
            ),
        ] {
            let mut m =
                enc.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
            for d in &devices {
                for p in &d.peers {
                    let mut l = dev_labels(d);
                    l.push(("public_key", p.public_key.clone()));
                    ConstCounter::new(pick(p)).encode(m.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "wireguard_peer_last_handshake_seconds",
                "UNIX timestamp for the last handshake with a given peer (0: none).",
                None,
                ConstGauge::new(0f64).metric_type(),
            )?;
            for d in &devices {
                for p in &d.peers {
                    let mut l = dev_labels(d);
                    l.push(("public_key", p.public_key.clone()));
                    ConstGauge::new(p.handshake).encode(m.encode_family(&l)?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CniLabels {
    verb: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetworkLabels {
    network: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    operation: String,
}

/// The agent's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    devices_sample: Arc<Devices>,
    /// Interfaces the agent holds.
    pub devices: Gauge,
    /// Time of one reconcile pass.
    pub reconcile_seconds: Histogram,
    /// Reconciles of one interface that failed.
    pub reconcile_errors: Counter,
    /// Device writes that changed something.
    pub device_updates: Counter,
    /// Drift found by the periodic verify and repaired.
    pub drift_repairs: Counter,
    /// Kill switches found leaking by the periodic verify and repaired.
    pub kill_switch_repairs: Counter,
    /// Status writes.
    pub status_writes: Counter,
    /// Held interfaces the link watch heard deleted (each then verified
    /// and made again at once).
    pub links_removed: Counter,
    /// 1 while the link watch listens; 0 when it could not subscribe (the
    /// periodic verify alone finds deleted interfaces then).
    pub link_watch: Gauge,
    /// Interfaces of running pods the agent cannot reach (their record
    /// names a namespace it cannot open).
    pub orphans: Gauge,
    cni: Family<CniLabels, Histogram>,
    watch_events: Family<KindLabels, Counter>,
    watched: Family<ScopeLabels, Gauge>,
    apiserver_errors: Family<OpLabels, Counter>,
    mesh_rejected: Family<NetworkLabels, Gauge>,
    drift_found: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let devices_sample = Arc::new(Devices::default());
        r.register_collector(Box::new(Arc::clone(&devices_sample)));
        let devices = Gauge::default();
        r.register(
            "wg_agent_devices",
            "WireGuard interfaces of pods the agent holds",
            devices.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        r.register(
            "wg_agent_reconcile_duration_seconds",
            "Time to bring the interfaces a change touches to their resources",
            reconcile_seconds.clone(),
        );
        let reconcile_errors = Counter::default();
        r.register(
            "wg_agent_reconcile_errors",
            "Interface reconciles that failed",
            reconcile_errors.clone(),
        );
        let device_updates = Counter::default();
        r.register(
            "wg_agent_device_updates",
            "Device writes that changed something",
            device_updates.clone(),
        );
        let drift_repairs = Counter::default();
        r.register(
            "wg_agent_drift_repairs",
            "Drift found by the periodic verify and repaired",
            drift_repairs.clone(),
        );
        let drift_found = Family::<KindLabels, Counter>::default();
        r.register(
            "wg_agent_drift_found",
            "Differences the periodic verify found between an interface and its resources, by kind (drift::Drift::kind, or kill_switch_leak); each is repaired",
            drift_found.clone(),
        );
        let kill_switch_repairs = Counter::default();
        r.register(
            "wg_agent_kill_switch_repairs",
            "Pods whose kill switch the periodic verify found leaking and repaired",
            kill_switch_repairs.clone(),
        );
        let status_writes = Counter::default();
        r.register(
            "wg_agent_status_writes",
            "Attachment status writes",
            status_writes.clone(),
        );
        let links_removed = Counter::default();
        r.register(
            "wg_agent_links_removed",
            "Held interfaces the link watch heard deleted; each is verified and made again at once",
            links_removed.clone(),
        );
        let link_watch = Gauge::default();
        r.register(
            "wg_agent_link_watch_up",
            "1 while the agent hears link events from the pods' namespaces; 0 when it could not subscribe (the periodic verify alone then finds deleted interfaces)",
            link_watch.clone(),
        );
        let cni = Family::<CniLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        r.register(
            "wg_agent_cni_request_duration_seconds",
            "CNI requests served, by verb and outcome",
            cni.clone(),
        );
        let watch_events = Family::<KindLabels, Counter>::default();
        r.register(
            "wg_agent_watch_events",
            "Objects the agent's watches received (listed or changed), by kind: what this node is sent grows with its own pods and their networks' members, not with the cluster",
            watch_events.clone(),
        );
        let watched = Family::<ScopeLabels, Gauge>::default();
        r.register(
            "wg_agent_watched",
            "Networks (their attachments and address blocks) and namespaces (their peers) watched because pods of the node are members",
            watched.clone(),
        );
        let apiserver_errors = Family::<OpLabels, Counter>::default();
        r.register(
            "wg_agent_apiserver_errors",
            "Failed apiserver requests, by operation",
            apiserver_errors.clone(),
        );
        let orphans = Gauge::default();
        r.register(
            "wg_agent_orphan_interfaces",
            "Recorded interfaces of running pods that the agent cannot reach (their network namespace cannot be opened)",
            orphans.clone(),
        );
        let mesh_rejected = Family::<NetworkLabels, Gauge>::default();
        r.register(
            "wg_agent_mesh_members_rejected",
            "Attachments not taken as mesh peers because an address they publish lies outside their node's address blocks, by network",
            mesh_rejected.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            devices_sample,
            devices,
            reconcile_seconds,
            reconcile_errors,
            device_updates,
            drift_repairs,
            kill_switch_repairs,
            status_writes,
            cni,
            watch_events,
            watched,
            apiserver_errors,
            mesh_rejected,
            drift_found,
            links_removed,
            link_watch,
            orphans,
        }
    }

    /// Set the number of refused mesh members of each network (networks
    /// not named go back to no series).
    pub fn set_mesh_rejected(&self, by_network: &std::collections::BTreeMap<String, u64>) {
        self.mesh_rejected.clear();
        for (network, n) in by_network {
            self.mesh_rejected
                .get_or_create(&NetworkLabels {
                    network: network.clone(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// Count one difference the periodic verify found, by its kind.
    pub fn drift_found(&self, kind: &str) {
        self.drift_found
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Count one object a watch received (listed, changed or deleted).
    pub fn watch_event(&self, kind: &str) {
        self.watch_events
            .get_or_create(&KindLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// How many networks and namespaces the scoped watches cover.
    pub fn set_watched(&self, networks: usize, namespaces: usize) {
        for (scope, n) in [("network", networks), ("namespace", namespaces)] {
            self.watched
                .get_or_create(&ScopeLabels {
                    scope: scope.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Count a failed apiserver request.
    pub fn apiserver_error(&self, operation: &str) {
        self.apiserver_errors
            .get_or_create(&OpLabels {
                operation: operation.to_string(),
            })
            .inc();
    }

    /// Record a CNI request.
    pub fn cni_request(&self, verb: Verb, outcome: &str, seconds: f64) {
        let verb = match verb {
            Verb::Add => "ADD",
            Verb::Del => "DEL",
            Verb::Check => "CHECK",
        };
        self.cni
            .get_or_create(&CniLabels {
                verb: verb.into(),
                outcome: outcome.into(),
            })
            .observe(seconds);
    }

    /// Replace the per-device samples.
    pub fn set_devices(&self, samples: Vec<DeviceSample>) {
        *self
            .devices_sample
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = samples;
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::new();
        m.devices.set(2);
        m.apiserver_error("get_pod");
        m.cni_request(Verb::Add, "ok", 0.01);
        m.set_mesh_rejected(&[("pods".to_string(), 3)].into());
        let text = m.encode();
        for name in [
            "wg_agent_devices 2",
            "wg_agent_apiserver_errors_total{operation=\"get_pod\"} 1",
            "wg_agent_cni_request_duration_seconds_count{verb=\"ADD\",outcome=\"ok\"} 1",
            "# TYPE wireguard_peer_receive_bytes counter",
            "wg_agent_mesh_members_rejected{network=\"pods\"} 3",
        ] {
            assert!(text.contains(name), "{name} missing in:\n{text}");
        }
    }
}
