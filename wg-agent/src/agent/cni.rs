//! The managed protocol's verbs: ADD, DEL and CHECK of one pod interface,
//! each a short story told with wg-netns calls (a network, an address, a
//! port, the pod's key, `Birthplace::ensure`, a record, an answer).

use super::*;

impl Agent {
    /// Answer one request of the plugin, starting any daemon itself.
    pub async fn handle(self: &Arc<Self>, req: Request, netns: Option<OwnedFd>) -> Reply {
        self.handle_with(req, netns, None).await
    }

    /// Answer one request of the plugin; `plugin`, the request's
    /// connection when its plugin can start daemons (an ADD of protocol
    /// version 2 or later), is asked to when the settings say so
    /// ([`UserspaceLaunch::Plugin`]).
    pub async fn handle_with(
        self: &Arc<Self>,
        req: Request,
        netns: Option<OwnedFd>,
        plugin: Option<Arc<PluginConn>>,
    ) -> Reply {
        let started = Instant::now();
        let verb = req.verb;
        let reply = match verb {
            Verb::Add => self.add(req, netns, plugin).await,
            Verb::Del => self.del(req).await,
            Verb::Check => self.check(req).await,
        };
        let outcome = match &reply {
            Reply::Failed(_) => "error",
            Reply::Skipped { .. } => "skipped",
            _ => "ok",
        };
        self.metrics
            .cni_request(verb, outcome, started.elapsed().as_secs_f64());
        reply
    }

    /// The pod a request is about, from the cache or the apiserver.
    pub(super) async fn pod_of(&self, pod: &PodRef) -> Result<PodInfo, Failure> {
        if let Some(p) = self.index().pod_info(&pod.namespace, &pod.name).cloned() {
            if pod.uid.as_deref().is_none_or(|u| u == p.uid) {
                return Ok(p);
            }
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        match api.get(&pod.name).await {
            Ok(p) => PodInfo::of(&p)
                .ok_or_else(|| fail(code::TRY_AGAIN, "the pod has no UID yet", pod.name.clone())),
            Err(e) => {
                self.metrics.apiserver_error("get_pod");
                Err(fail(
                    code::TRY_AGAIN,
                    format!("cannot read pod {}/{}", pod.namespace, pod.name),
                    e.to_string(),
                ))
            }
        }
    }

    pub(super) fn network_config(&self, name: &str) -> Result<NetworkConfig, Failure> {
        match self.index().networks.get(name) {
            Some(Ok(c)) => Ok(c.clone()),
            Some(Err(why)) => Err(fail(
                code::INVALID_CONFIG,
                format!("WireGuardNetwork {name} is invalid"),
                why.clone(),
            )),
            None => Err(fail(
                code::TRY_AGAIN,
                format!("WireGuardNetwork {name} is not known (yet)"),
                "create it, or wait for the agent's watch to see it",
            )),
        }
    }

    /// The backend an ADD makes its device with: the agent's, or, for a
    /// userspace device when the settings say `plugin` and the request's
    /// plugin can, the agent's with its daemon started by the plugin, in
    /// the namespace the device is born in (`socket`: the node's or the
    /// pod's, as [`Birthplace::for_container`] chooses). A request whose
    /// plugin cannot (protocol 1) gets the agent's, with one warning.
    pub(super) fn launch_backend(
        &self,
        socket: SocketNamespace,
        plugin: Option<&Arc<PluginConn>>,
        req: &Request,
    ) -> Backend {
        let Backend::Userspace(u) = &self.backend else {
            return self.backend.clone();
        };
        if self.settings.userspace_launch != UserspaceLaunch::Plugin {
            return self.backend.clone();
        }
        let Some(plugin) = plugin else {
            if !self.warned_old_plugin.swap(true, Ordering::AcqRel) {
                warn!(
                    version = req.version,
                    container = %req.container_id,
                    "WG_AGENT_USERSPACE_LAUNCH=plugin, but this plugin's protocol cannot start \
                     daemons: the agent starts them as its children until wg-cni is upgraded \
                     (they stop with the agent's container); logged once"
                );
            }
            return self.backend.clone();
        };
        let namespace = match socket {
            SocketNamespace::Host => LaunchNamespace::Node,
            SocketNamespace::Container => LaunchNamespace::Pod,
        };
        Backend::Userspace(u.clone().with_launcher(plugin.launcher(namespace)))
    }

    /// ADD.
    pub(super) async fn add(
        self: &Arc<Self>,
        req: Request,
        netns: Option<OwnedFd>,
        plugin: Option<Arc<PluginConn>>,
    ) -> Reply {
        let Some(pod_ref) = req.pod.clone() else {
            return failed(
                code::INVALID_CONFIG,
                "managed mode needs the pod's identity",
                "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME",
            );
        };
        let Some(fd) = netns else {
            return failed(code::IO, "no network namespace was passed", req.netns_path);
        };
        let pod = match self.pod_of(&pod_ref).await {
            Ok(p) => p,
            Err(r) => return Reply::Failed(r),
        };
        let Some(network) = req.network.clone().or_else(|| pod.network.clone()) else {
            return Reply::Skipped {
                reason: format!(
                    "pod {}/{} asks for no WireGuard network",
                    pod_ref.namespace, pod_ref.name
                ),
            };
        };
        let net = match self.network_config(&network) {
            Ok(n) => n,
            Err(r) => return Reply::Failed(r),
        };
        if !self.index().namespace_allowed(&network, &pod_ref.namespace) {
            return failed(
                code::INVALID_CONFIG,
                format!(
                    "namespace {} may not join WireGuardNetwork {network}",
                    pod_ref.namespace
                ),
                "the network's spec.namespaceSelector does not select the pod's namespace",
            );
        }
        let iface = net.interface_name.clone();
        let Some(key) = Key::new(&pod.uid, iface.as_str()) else {
            return failed(code::INVALID_CONFIG, "unusable pod UID", pod.uid.clone());
        };
        // The network's and namespace's watches, if the pod watch has not
        // started them already (a network named by the CNI configuration).
        self.scope.pin(&key, &network, &pod_ref.namespace);
        let slot = {
            let mut slots = self.slots();
            Arc::clone(
                slots
                    .entry(key.clone())
                    .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None))),
            )
        };
        let mut guard = slot.lock().await;
        match self
            .add_locked(
                &mut guard,
                &key,
                &req,
                &pod_ref,
                &pod,
                &network,
                &net,
                fd,
                plugin.as_ref(),
            )
            .await
        {
            Ok(a) => {
                let _ = self.publish.send(Publish::Upsert(key.clone()));
                self.metrics.devices.set(self.slots().len() as i64);
                Reply::Attached(a)
            }
            Err(r) => {
                if guard.is_none() {
                    drop(guard);
                    self.drop_slot(&key);
                }
                Reply::Failed(r)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn add_locked(
        self: &Arc<Self>,
        slot: &mut Option<Entry>,
        key: &Key,
        req: &Request,
        pod_ref: &PodRef,
        pod: &PodInfo,
        network: &str,
        net: &NetworkConfig,
        fd: OwnedFd,
        plugin: Option<&Arc<PluginConn>>,
    ) -> Result<Attached, Failure> {
        // Addresses and a port: the existing ones on a repeated ADD.
        let (addresses, port, fresh) = match slot.as_ref() {
            Some(e) => (e.rec.addresses.clone(), e.rec.listen_port, false),
            None => {
                let addrs = self.allocate(network, net, key).await?;
                let port = match self.take_port(net) {
                    Some(p) => p,
                    None => {
                        self.release(network, key).await;
                        return Err(fail(
                            code::TRY_AGAIN,
                            format!("network {network} has no free listen port on this node"),
                            format!(
                                "all of {}..={} are in use",
                                net.listen_ports.from, net.listen_ports.to
                            ),
                        ));
                    }
                };
                (addrs, port, true)
            }
        };
        let undo = |me: Arc<Self>| async move {
            if fresh {
                me.release(network, key).await;
                me.ports_lock().remove(&port);
            }
        };
        let kid = match KeyId::new(&pod.uid, net.interface_name.as_str()) {
            Ok(k) => k,
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::INVALID_CONFIG, "unusable key id", e.to_string()));
            }
        };
        let (private, _) = match self.keys.get_or_create(&kid, &pod.rotation) {
            Ok(k) => k,
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::IO, "cannot store the pod's key", e.to_string()));
            }
        };
        let public_key = private.public_key();
        let desired = if self.is_synced() && self.scope_listed(network, &pod_ref.namespace).await {
            Some(
                self.desired_for(
                    network,
                    &pod_ref.namespace,
                    pod,
                    &public_key,
                    &addresses,
                    net,
                )
                .await,
            )
        } else {
            None
        };
        let birth = match IfName::derived("wga", key.as_str()) {
            Ok(b) => b,
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::IO, "cannot name the interface", e.to_string()));
            }
        };
        let mut device = desired
            .as_ref()
            .map(|d| d.device.clone())
            .unwrap_or_else(DeviceConfig::new);
        device = device.private_key(private).listen_port(port);
        let routes: BTreeSet<IpNetwork> = desired
            .as_ref()
            .map(|d| d.routes.clone())
            .unwrap_or_else(|| net.routes.iter().copied().collect());
        let mut spec = InterfaceSpec::new(birth, net.interface_name.clone()).device(device);
        for a in &addresses {
            spec = spec.address(*a);
        }
        for r in &routes {
            spec = spec.route(Route::new(*r));
        }
        let me = Arc::clone(self);
        let socket_ns = net.socket_namespace;
        let backend = self.launch_backend(socket_ns, plugin, req);
        let mtu = net.mtu;
        let netns_path = req.netns_path.clone();
        let node_ip = self.settings.node_ip;
        let kill_switch = net.kill_switch.clone();
        let made = tokio::task::spawn_blocking(move || {
            let pod_ns = Netns::from_fd(fd, &netns_path)?;
            // The kill switch first, before the device exists: from here
            // on the pod reaches only its local networks and, once made,
            // the tunnel (docs/egress.md).
            if let Some(ks) = &kill_switch {
                ks.ensure(&wg_netns::Rtnl::open(&pod_ns)?, None)?;
            }
            let place = Birthplace::for_container(&me.node, &pod_ns, socket_ns, &backend)?;
            let underlay = match mtu {
                Mtu::Auto => place.underlay_mtu(node_ip).ok(),
                Mtu::Bytes(_) => None,
            };
            spec = spec.mtu(mtu.resolve(underlay));
            let done = place.ensure(&spec)?;
            // The place is kept for reconciles and repairs, which happen
            // outside any CNI request: with the agent's own backend, so a
            // daemon a repair recreates is the agent's child (until the
            // pod's next ADD), and the plugin's connection is not held.
            let place = place.with_backend(me.backend.clone());
            let dev = place.device(&done.attachment)?;
            let heard_as = super::links::link_ns(&me.node, &place);
            // The device's state is read by the first reconcile, off the
            // pod's critical path.
            Ok::<_, wg_netns::Error>((place, done, dev, heard_as))
        })
        .await;
        let (place, done, dev, heard_as) = match made {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                undo(Arc::clone(self)).await;
                return Err(fail(
                    code::IO,
                    "cannot make the WireGuard interface",
                    e.to_string(),
                ));
            }
            Err(e) => {
                undo(Arc::clone(self)).await;
                return Err(fail(code::IO, "internal error", e.to_string()));
            }
        };
        let attachment = done.attachment.clone();
        let record = LocalRecord {
            network: network.to_string(),
            namespace: pod_ref.namespace.clone(),
            pod: pod_ref.name.clone(),
            pod_uid: pod.uid.clone(),
            container_id: req.container_id.clone(),
            cni_ifname: req.ifname.clone(),
            addresses: addresses.clone(),
            listen_port: port,
            public_key,
            key_generation: pod.rotation.clone(),
            attachment: wg_netns::AttachmentRecord {
                interface: attachment.name.clone(),
                birth_name: attachment.birth_name.clone(),
                netns: req.netns_path.clone().into(),
                socket_namespace: socket_ns,
                backend: attachment.kind,
                userspace_implementation: self.userspace.resolve(),
            },
            created: slot.as_ref().map(|e| e.rec.created).unwrap_or_else(now),
        };
        if let Err(e) = self.records.save(&record) {
            let place2 = Arc::new(place);
            let a = attachment.clone();
            let _ =
                tokio::task::spawn_blocking(move || place2.detach(&a.name, &a.birth_name)).await;
            undo(Arc::clone(self)).await;
            return Err(fail(
                code::IO,
                "cannot save the attachment record",
                e.to_string(),
            ));
        }
        info!(
            attachment = %key,
            pod = %format!("{}/{}", pod_ref.namespace, pod_ref.name),
            network,
            created = done.created,
            addresses = ?addresses,
            port,
            "attached"
        );
        *slot = Some(Entry {
            dev: Some(Arc::new(dev)),
            routes,
            ..Entry::new(record, place, Some(attachment.clone()), heard_as)
        });
        Ok(Attached::new(
            network.to_string(),
            attachment.name.to_string(),
            addresses,
            slot.as_ref()
                .map(|e| e.routes.iter().copied().collect())
                .unwrap_or_default(),
            attachment.mtu,
            public_key,
        ))
    }

    /// DEL: whatever is already gone is success.
    pub(super) async fn del(self: &Arc<Self>, req: Request) -> Reply {
        let found = self.slots().iter().find_map(|(k, s)| {
            let g = s.try_lock().ok()?;
            let e = g.as_ref()?;
            (e.rec.container_id == req.container_id && e.rec.cni_ifname == req.ifname)
                .then(|| k.clone())
        });
        // A slot busy with another request: look for it by the pod.
        let found = found.or_else(|| {
            let uid = req.pod.as_ref()?.uid.clone()?;
            self.slots().keys().find(|k| k.pod_uid() == uid).cloned()
        });
        let Some(key) = found else {
            return Reply::Done;
        };
        let Some(slot) = self.slot(&key) else {
            return Reply::Done;
        };
        let mut guard = slot.lock().await;
        let Some(entry) = guard.take() else {
            return Reply::Done;
        };
        if entry.rec.container_id != req.container_id {
            // Another sandbox of the same pod now owns it.
            *guard = Some(entry);
            return Reply::Done;
        }
        let rec = entry.rec.clone();
        drop(entry);
        let path = (!req.netns_path.is_empty()).then(|| req.netns_path.clone());
        match self.forget(&rec, path).await {
            Ok(()) => {
                drop(guard);
                self.drop_slot(&key);
                self.metrics.devices.set(self.slots().len() as i64);
                Reply::Done
            }
            Err(e) => failed(code::IO, "cannot remove the WireGuard interface", e),
        }
    }

    /// Remove an interface and give back what it held.
    pub(super) async fn forget(
        &self,
        rec: &LocalRecord,
        netns: Option<String>,
    ) -> Result<(), String> {
        let node = match self.node.try_clone() {
            Ok(n) => n,
            Err(e) => return Err(e.to_string()),
        };
        let r = rec.attachment.clone();
        let userspace = self.userspace.clone();
        let detached = tokio::task::spawn_blocking(move || {
            r.detach_in(
                &node,
                netns.as_deref().map(std::path::Path::new),
                &userspace,
            )
        })
        .await
        .map_err(|e| e.to_string())?;
        detached.map_err(|e| e.to_string())?;
        if let Some(key) = rec.key() {
            self.release(&rec.network, &key).await;
            if let Ok(kid) = KeyId::new(&rec.pod_uid, rec.attachment.interface.as_str()) {
                if let Err(e) = self.keys.remove(&kid) {
                    warn!(attachment = %key, error = %e, "cannot remove the key file");
                }
            }
            if let Err(e) = self.records.remove(&key) {
                warn!(attachment = %key, error = %e, "cannot remove the record");
            }
        }
        self.ports_lock().remove(&rec.listen_port);
        let _ = self.publish.send(Publish::Delete {
            namespace: rec.namespace.clone(),
            name: object_name(&rec.pod, rec.attachment.interface.as_str()),
            pod_uid: rec.pod_uid.clone(),
        });
        info!(pod = %format!("{}/{}", rec.namespace, rec.pod), interface = %rec.attachment.interface, "detached");
        Ok(())
    }

    /// CHECK: the interface exists and matches the resources.
    pub(super) async fn check(self: &Arc<Self>, req: Request) -> Reply {
        let key = self.slots().iter().find_map(|(k, s)| {
            let g = s.try_lock().ok()?;
            let e = g.as_ref()?;
            (e.rec.container_id == req.container_id).then(|| k.clone())
        });
        let Some(key) = key else {
            return match req.pod.as_ref() {
                Some(p) => match self.pod_of(p).await {
                    Ok(info) if req.network.is_none() && info.network.is_none() => Reply::Done,
                    _ => failed(
                        code::CHECK_MISMATCH,
                        "no WireGuard interface for this container",
                        req.container_id,
                    ),
                },
                None => failed(code::CHECK_MISMATCH, "no interface", req.container_id),
            };
        };
        match self.verify_one(&key, false).await {
            Ok(drift) if drift.is_empty() => Reply::Done,
            Ok(drift) => failed(
                code::CHECK_MISMATCH,
                "the interface differs from its resources",
                verify::describe(&drift),
            ),
            Err(e) => failed(e.code(), "cannot check the interface", e.to_string()),
        }
    }
}
