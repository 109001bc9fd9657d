//! `wg-agent showconf` (also `kubectl wg showconf` when the binary is
//! installed as `kubectl-wg`): the WireGuard configuration a host outside
//! the cluster needs to join as a WireGuardPeer, printed from the cluster's
//! resources with the caller's own credentials.
//!
//! The pods it lists are exactly those the node agents give the peer to:
//! the same index ([`crate::index::Index`]: an attachment counts only when
//! its namespace is admitted by the network and every address it publishes
//! lies in an address block of its own node) and the same selector rule
//! ([`desired::selects`]). The host's private key never leaves it: the
//! output carries no `PrivateKey` (the host sets its own, `wg set IFACE
//! private-key FILE`, or a wg-quick `PostUp`), and a preshared key is only
//! named (the host has it already), never read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use wg_k8s_types::{WireGuardAddressBlock, WireGuardAttachment, WireGuardNetwork, WireGuardPeer};

use crate::desired::{self, MeshMember};
use crate::index::Index;

/// What to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// For `wg setconf IFACE FILE` / `wg addconf` (the default): only
    /// keys `wg` accepts.
    #[default]
    Setconf,
    /// For `wg-quick up FILE`: the same peers, an `[Interface]` whose
    /// `PostUp` sets the host's private key from a file on the host.
    WgQuick,
}

impl std::str::FromStr for Format {
    type Err = ShowConfError;
    fn from_str(s: &str) -> Result<Format, ShowConfError> {
        match s {
            "setconf" | "wg" => Ok(Format::Setconf),
            "wg-quick" => Ok(Format::WgQuick),
            other => Err(ShowConfError::Usage(format!(
                "unknown format {other:?}: setconf or wg-quick"
            ))),
        }
    }
}

/// Why no configuration could be printed.
#[derive(Debug, thiserror::Error)]
pub enum ShowConfError {
    /// Bad arguments.
    #[error("{0}\nusage: wg-agent showconf [-n NAMESPACE] PEER [--format setconf|wg-quick] [--private-key-file PATH]")]
    Usage(String),
    /// An apiserver request failed (a missing object, a refusal).
    #[error("{what}: {source}")]
    Api {
        /// What was asked.
        what: String,
        /// The apiserver's answer.
        #[source]
        source: kube::Error,
    },
    /// The peer's or its network's spec is unusable: the agents ignore it.
    #[error("{0}")]
    Invalid(String),
}

/// The command line of `showconf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// The peer's namespace (`None`: the kubeconfig's).
    pub namespace: Option<String>,
    /// The WireGuardPeer's name.
    pub peer: String,
    /// What to print.
    pub format: Format,
    /// For wg-quick: where the host keeps its private key.
    pub private_key_file: String,
}

impl Args {
    /// Parse the arguments after `showconf`.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, ShowConfError> {
        let mut namespace = None;
        let mut peer = None;
        let mut format = Format::default();
        let mut private_key_file = "/etc/wireguard/%i.key".to_string();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = |flag: &str| {
                it.next()
                    .ok_or_else(|| ShowConfError::Usage(format!("{flag} needs a value")))
            };
            match a.as_str() {
                "-n" | "--namespace" => namespace = Some(value(&a)?),
                "--format" => format = value(&a)?.parse()?,
                "--private-key-file" => private_key_file = value(&a)?,
                s if s.starts_with('-') => {
                    return Err(ShowConfError::Usage(format!("unknown option {s}")))
                }
                _ if peer.is_none() => peer = Some(a),
                _ => return Err(ShowConfError::Usage(format!("one peer only, not {a:?}"))),
            }
        }
        let peer = peer.ok_or_else(|| ShowConfError::Usage("which WireGuardPeer?".into()))?;
        Ok(Args {
            namespace,
            peer,
            format,
            private_key_file,
        })
    }
}

/// One pod the peer reaches, as the host must know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `NAMESPACE/ATTACHMENT`.
    pub attachment: String,
    /// Its pod and node, for the comment.
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Its key, endpoint and addresses.
    pub member: MeshMember,
}

/// Read what `args` names from the apiserver and render it.
pub async fn showconf(client: Client, args: &Args) -> Result<String, ShowConfError> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let api = |what: String| move |source| ShowConfError::Api { what, source };
    let peer = Api::<WireGuardPeer>::namespaced(client.clone(), &ns)
        .get(&args.peer)
        .await
        .map_err(api(format!("WireGuardPeer {ns}/{}", args.peer)))?;
    let network_name = peer.spec.network.as_str().to_string();
    let network = Api::<WireGuardNetwork>::all(client.clone())
        .get(&network_name)
        .await
        .map_err(api(format!("WireGuardNetwork {network_name}")))?;
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .map_err(api(format!("Namespace {ns}")))?;
    let blocks = Api::<WireGuardAddressBlock>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api("WireGuardAddressBlocks".into()))?;
    let attachments = Api::<WireGuardAttachment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map_err(api(format!("WireGuardAttachments of {ns}")))?;
    let pods = Api::<Pod>::namespaced(client, &ns)
        .list(&ListParams::default())
        .await
        .map_err(api(format!("Pods of {ns}")))?;
    let members = members(
        &peer,
        &network,
        &namespace,
        &blocks.items,
        &attachments.items,
        &pods.items,
    )?;
    Ok(render(&peer, &members, args))
}

/// The pods `peer` is given to, by the agents' own rules.
pub fn members(
    peer: &WireGuardPeer,
    network: &WireGuardNetwork,
    namespace: &Namespace,
    blocks: &[WireGuardAddressBlock],
    attachments: &[WireGuardAttachment],
    pods: &[Pod],
) -> Result<Vec<Member>, ShowConfError> {
    let ns = peer.namespace().unwrap_or_default();
    let config = peer.spec.validate().map_err(|e| {
        ShowConfError::Invalid(format!("WireGuardPeer {ns}/{}: {e}", peer.name_any()))
    })?;
    let net = network.spec.validate().map_err(|e| {
        ShowConfError::Invalid(format!("WireGuardNetwork {}: {e}", network.name_any()))
    })?;
    if let (Some(allowed), Some(addr)) = (
        &net.peer_endpoints,
        config.endpoint.as_ref().and_then(|e| e.address()),
    ) {
        if !desired::endpoint_allowed(allowed, addr) {
            return Err(ShowConfError::Invalid(format!(
                "the endpoint {addr} of WireGuardPeer {ns}/{} is outside network {}'s peerEndpoints: the agents leave it out",
                peer.name_any(),
                network.name_any()
            )));
        }
    }
    let mut index = Index::default();
    index.network(network);
    index.namespace(namespace);
    for b in blocks {
        index.block(b);
    }
    for a in attachments {
        index.attachment(a);
    }
    let labels: BTreeMap<&str, &BTreeMap<String, String>> = pods
        .iter()
        .filter_map(|p| Some((p.metadata.uid.as_deref()?, p.labels())))
        .collect();
    let by_key: BTreeMap<String, &WireGuardAttachment> = attachments
        .iter()
        .map(|a| {
            (
                format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()),
                a,
            )
        })
        .collect();
    let mut out = Vec::new();
    for (key, member) in index.mesh.get(&config.network).into_iter().flatten() {
        let Some(a) = by_key.get(key) else { continue };
        let selected = labels
            .get(member.pod_uid.as_str())
            .is_some_and(|l| desired::selects(peer.spec.pod_selector.as_ref(), l));
        if selected {
            out.push(Member {
                attachment: key.clone(),
                pod: a.spec.pod_name.as_str().to_string(),
                node: a.spec.node_name.as_str().to_string(),
                member: member.clone(),
            });
        }
    }
    Ok(out)
}

/// The configuration text.
pub fn render(peer: &WireGuardPeer, members: &[Member], args: &Args) -> String {
    let ns = peer.namespace().unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# WireGuardPeer {ns}/{} (network {}), public key {}.",
        peer.name_any(),
        peer.spec.network.as_str(),
        peer.spec.public_key.as_str()
    );
    let _ = writeln!(
        s,
        "# {} pod(s). This host's private key stays on it; a preshared key is only named.",
        members.len()
    );
    let listen = peer
        .spec
        .validate()
        .ok()
        .and_then(|c| c.endpoint)
        .map(|e| match e {
            wg_netns::Endpoint::Addr(a) => a.port(),
            wg_netns::Endpoint::Host { port, .. } => port,
        });
    match args.format {
        Format::Setconf => {
            let _ = writeln!(
                s,
                "# wg setconf IFACE THIS-FILE; wg set IFACE private-key KEY-FILE"
            );
            let _ = writeln!(s, "[Interface]");
            if let Some(port) = listen {
                let _ = writeln!(s, "ListenPort = {port}");
            }
        }
        Format::WgQuick => {
            let _ = writeln!(s, "# wg-quick up THIS-FILE (add this host's Address)");
            let _ = writeln!(s, "[Interface]");
            if let Some(port) = listen {
                let _ = writeln!(s, "ListenPort = {port}");
            }
            let _ = writeln!(
                s,
                "PostUp = wg set %i private-key {}",
                args.private_key_file
            );
        }
    }
    let keepalive = peer
        .spec
        .validate()
        .ok()
        .and_then(|c| c.persistent_keepalive);
    let psk = peer.spec.preshared_key_secret_ref.as_ref();
    for m in members {
        let _ = writeln!(
            s,
            "\n[Peer]\n# pod {}/{} on node {} (WireGuardAttachment {})",
            ns, m.pod, m.node, m.attachment
        );
        let _ = writeln!(s, "PublicKey = {}", m.member.public_key.to_base64());
        if let Some(e) = m.member.endpoint {
            let _ = writeln!(s, "Endpoint = {e}");
        }
        let ips: Vec<String> = m
            .member
            .addresses
            .iter()
            .map(|a| desired::host(a).to_string())
            .collect();
        let _ = writeln!(s, "AllowedIPs = {}", ips.join(", "));
        if let Some(k) = keepalive {
            let _ = writeln!(s, "PersistentKeepalive = {k}");
        }
        if let Some(r) = psk {
            let _ = writeln!(
                s,
                "# PresharedKey = (this host's copy of Secret {ns}/{} key {})",
                r.name.as_str(),
                r.key
            );
        }
    }
    s
}

#[cfg(test)]
mod tests;
