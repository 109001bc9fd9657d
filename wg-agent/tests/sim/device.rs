//! A simulated node's device layer: a userspace WireGuard device that
//! records. It answers on the control socket where wg-netns's userspace
//! backend looks for a device (`SOCKET_DIR/BIRTH_NAME.sock`) and speaks the
//! cross-platform userspace API (`get=1`, `set=1`), so the agent's own
//! reconcile (`Agent::reconcile` -> `WgDevice::update_from`) writes to it as
//! to wireguard-go; it keeps what it was told and touches nothing else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use wg_netns::PublicKey;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct State {
    private_key: String,
    listen_port: u16,
    /// Peers by public key (hex), with their allowed IPs.
    peers: BTreeMap<String, Vec<String>>,
    sets: u64,
}

impl State {
    fn get(&self) -> String {
        let mut out = format!(
            "private_key={}\nlisten_port={}\n",
            self.private_key, self.listen_port
        );
        for (k, ips) in &self.peers {
            out.push_str(&format!("public_key={k}\n"));
            for ip in ips {
                out.push_str(&format!("allowed_ip={ip}\n"));
            }
        }
        out.push_str("errno=0\n\n");
        out
    }

    /// Apply a `set=1` body the way a device does (the parts the agent
    /// sends: peers added, changed, removed, allowed IPs replaced).
    fn set(&mut self, body: &str) {
        self.sets += 1;
        let mut current: Option<String> = None;
        for line in body.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "private_key" => self.private_key = v.to_string(),
                "listen_port" => self.listen_port = v.parse().unwrap_or(self.listen_port),
                "replace_peers" => self.peers.clear(),
                "public_key" => {
                    self.peers.entry(v.to_string()).or_default();
                    current = Some(v.to_string());
                }
                "remove" if v == "true" => {
                    if let Some(c) = current.take() {
                        self.peers.remove(&c);
                    }
                }
                "replace_allowed_ips" if v == "true" => {
                    if let Some(p) = current.as_ref().and_then(|c| self.peers.get_mut(c)) {
                        p.clear();
                    }
                }
                "allowed_ip" => {
                    if let Some(p) = current.as_ref().and_then(|c| self.peers.get_mut(c)) {
                        p.push(v.to_string());
                    }
                }
                _ => {}
            }
        }
    }
}

/// One recording device; its socket goes when it is dropped.
pub struct Recorder {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Listen as device `birth_name` in `dir`, holding `private_key` (hex)
    /// and `listen_port`, no peer.
    pub fn start(dir: &Path, birth_name: &str, private_key: &[u8], listen_port: u16) -> Recorder {
        let path = dir.join(format!("{birth_name}.sock"));
        let listener = UnixListener::bind(&path).expect("bind a recorder socket");
        let state = Arc::new(Mutex::new(State {
            private_key: hex(private_key),
            listen_port,
            ..State::default()
        }));
        let s = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let (r, mut w) = conn.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        let mut req = String::new();
                        let mut line = String::new();
                        loop {
                            line.clear();
                            match r.read_line(&mut line).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line == "\n" => break,
                                Ok(_) => req.push_str(&line),
                            }
                        }
                        let reply = if req.starts_with("get=1") {
                            s.lock().expect("state").get()
                        } else if req.starts_with("set=1") {
                            s.lock().expect("state").set(&req);
                            "errno=0\n\n".to_string()
                        } else {
                            "errno=22\n\n".to_string()
                        };
                        if w.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder { state, path, task }
    }

    /// Whether the device has `key` as a peer.
    pub fn has_peer(&self, key: &PublicKey) -> bool {
        self.state
            .lock()
            .expect("state")
            .peers
            .contains_key(&hex(key.as_bytes()))
    }

    /// How many peers it has.
    pub fn peers(&self) -> usize {
        self.state.lock().expect("state").peers.len()
    }

    /// Whether peer `key` has `cidr` (as the agent wrote it) among its
    /// allowed IPs.
    pub fn allows(&self, key: &PublicKey, cidr: &str) -> bool {
        self.state
            .lock()
            .expect("state")
            .peers
            .get(&hex(key.as_bytes()))
            .is_some_and(|ips| ips.iter().any(|ip| ip == cidr))
    }

    /// How many `set=1` it received.
    pub fn sets(&self) -> u64 {
        self.state.lock().expect("state").sets
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
