use super::*;
use std::os::fd::AsRawFd;

#[test]
fn request_reply_and_descriptor_cross_a_socket() {
    let (a, b) = UnixStream::pair().unwrap();
    let file = std::fs::File::open("/proc/self/ns/net").unwrap();
    let fd: OwnedFd = file.into();
    let req = Request::new(Verb::Add, "c1", "eth0", "/x").network(Some("pods".into()));
    send(&a, &req, Some(&fd)).unwrap();
    let (got, got_fd): (Request, _) = recv(&b).unwrap();
    assert_eq!(got, req);
    let got_fd = got_fd.expect("descriptor");
    assert_ne!(got_fd.as_raw_fd(), fd.as_raw_fd());
    let same = |f: &OwnedFd| rustix::fs::fstat(f).map(|s| (s.st_dev, s.st_ino)).unwrap();
    assert_eq!(same(&got_fd), same(&fd));

    let reply = Reply::Failed(Failure {
        code: 11,
        msg: "m".into(),
        details: "d".into(),
    });
    send(&b, &reply, None).unwrap();
    let (back, none): (Reply, _) = recv(&a).unwrap();
    assert_eq!(back, reply);
    assert!(none.is_none());
}

#[test]
fn oversized_and_truncated_frames_are_refused() {
    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(&(MAX_MESSAGE as u32 + 1).to_be_bytes())
        .unwrap();
    assert!(matches!(recv::<Reply>(&b), Err(ProtoError::Malformed(_))));
    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(&[0, 0]).unwrap();
    drop(a);
    assert!(recv::<Reply>(&b).is_err());
    let (a, b) = UnixStream::pair().unwrap();
    (&a).write_all(&3u32.to_be_bytes()).unwrap();
    (&a).write_all(b"{{{").unwrap();
    assert!(matches!(recv::<Reply>(&b), Err(ProtoError::Malformed(_))));
}

#[test]
fn connect_waits_no_longer_than_the_timeout() {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let dir = std::env::temp_dir().join(format!("wgcni-connect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    let listener = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    rustix::net::bind(&listener, &SocketAddrUnix::new(&path).unwrap()).unwrap();
    // A backlog of 0 admits one pending connection; the next waits.
    rustix::net::listen(&listener, 0).unwrap();
    let timeout = Duration::from_millis(100);
    let mut pending = Vec::new();
    let started = std::time::Instant::now();
    let err = loop {
        match connect(&path, timeout) {
            Ok(s) if pending.len() < 8 => pending.push(s),
            Ok(_) => panic!("the backlog never filled"),
            Err(e) => break e,
        }
    };
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(&err, ProtoError::Io { source, .. } if source.kind() == io::ErrorKind::WouldBlock),
        "{err}"
    );
    drop(pending);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A fake agent on the other end of a pair: reads the request, sends
/// each of `asks`, reads each answer, then sends `Done`.
fn fake_agent(
    agent: UnixStream,
    asks: Vec<Launch>,
) -> std::thread::JoinHandle<Result<(Request, Vec<Launched>), ProtoError>> {
    std::thread::spawn(move || {
        let (req, _) = recv::<Request>(&agent)?;
        let mut answers = Vec::new();
        for l in asks {
            send(&agent, &Reply::Launch(l), None)?;
            answers.push(recv::<Launched>(&agent)?.0);
        }
        send(&agent, &Reply::Done, None)?;
        Ok((req, answers))
    })
}

fn launch(name: &str) -> Launch {
    Launch::new(
        name,
        LaunchNamespace::Pod,
        vec!["--x".into()],
        true,
        "/var/run/wireguard".into(),
    )
}

#[test]
fn launches_are_answered_before_the_reply() {
    let (plugin, agent) = UnixStream::pair().unwrap();
    let fake = fake_agent(agent, vec![launch("wga1"), launch("bad/name")]);
    let req = Request::new(Verb::Add, "c1", "eth0", "/x");
    let mut asked = Vec::new();
    let mut on_launch = |l: &Launch| {
        asked.push(l.clone());
        if l.name.contains('/') {
            Err(format!("{:?} is not an interface name", l.name))
        } else {
            Ok(4242)
        }
    };
    let reply = converse(&plugin, &req, None, Some(&mut on_launch)).unwrap();
    assert_eq!(reply, Reply::Done);
    assert_eq!(asked, [launch("wga1"), launch("bad/name")]);
    let (got, answers) = fake.join().unwrap().unwrap();
    assert_eq!(got, req);
    assert_eq!(answers[0], Launched::started(4242));
    assert_eq!(answers[0].result(), Ok(Some(4242)));
    assert!(answers[1]
        .result()
        .unwrap_err()
        .contains("not an interface"));
}

#[test]
fn without_a_launcher_a_launch_is_the_reply() {
    let (plugin, agent) = UnixStream::pair().unwrap();
    let fake = fake_agent(agent, vec![launch("wga1")]);
    let reply = converse(
        &plugin,
        &Request::new(Verb::Del, "c1", "eth0", "/x"),
        None,
        None,
    );
    assert_eq!(reply.unwrap(), Reply::Launch(launch("wga1")));
    drop(plugin);
    // The agent's wait for an answer ends with the connection.
    assert!(fake.join().unwrap().is_err());
}

#[test]
fn an_agent_that_asks_too_often_is_cut_off() {
    let (plugin, agent) = UnixStream::pair().unwrap();
    let asks = (0..=MAX_LAUNCHES)
        .map(|i| launch(&format!("wga{i}")))
        .collect();
    let fake = fake_agent(agent, asks);
    let mut n = 0;
    let mut on_launch = |_: &Launch| {
        n += 1;
        Ok(1)
    };
    let err = converse(
        &plugin,
        &Request::new(Verb::Add, "c1", "eth0", "/x"),
        None,
        Some(&mut on_launch),
    )
    .unwrap_err();
    assert!(matches!(err, ProtoError::Malformed(_)), "{err}");
    assert_eq!(n, MAX_LAUNCHES);
    drop(plugin);
    assert!(fake.join().unwrap().is_err());
}

/// The socket path entry point: `call_launching` connects and answers.
#[test]
fn call_launching_answers_over_a_socket() {
    let dir = std::env::temp_dir().join(format!("wgcni-launch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.sock");
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fake = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        fake_agent(s, vec![launch("wga7")]).join().unwrap()
    });
    let reply = call_launching(
        &path,
        &Request::new(Verb::Add, "c1", "eth0", "/x"),
        None,
        Duration::from_secs(5),
        |l| Err(format!("will not start {}", l.name)),
    )
    .unwrap();
    assert_eq!(reply, Reply::Done);
    let (_, answers) = fake.join().unwrap().unwrap();
    assert_eq!(answers, [Launched::failed("will not start wga7")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reply_shapes() {
    let k = wg_netns::PrivateKey::generate().unwrap().public_key();
    let r = Reply::Attached(Attached::new(
        "pods".into(),
        "wg0".into(),
        vec!["10.244.0.2/16".parse().unwrap()],
        vec![],
        1420,
        k,
    ));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["attached"]["addresses"][0], "10.244.0.2/16");
    assert_eq!(v["attached"]["publicKey"], k.to_base64().as_str());
    assert_eq!(serde_json::to_value(Reply::Done).unwrap(), "done");
    let l = serde_json::to_value(Reply::Launch(launch("wga1"))).unwrap();
    assert_eq!(
        l,
        serde_json::json!({"launch": {"name": "wga1", "namespace": "pod", "args": ["--x"],
            "foreground": true, "socketDir": "/var/run/wireguard"}})
    );
    let node: Reply = serde_json::from_value(
        serde_json::json!({"launch": {"name": "wga1", "namespace": "node", "socketDir": "/s"}}),
    )
    .unwrap();
    assert_eq!(
        node,
        Reply::Launch(Launch::new(
            "wga1",
            LaunchNamespace::Node,
            vec![],
            false,
            "/s".into()
        ))
    );
    let both: Launched = serde_json::from_str(r#"{"pid":1,"error":"e"}"#).unwrap();
    assert_eq!(both.result(), Err("e".into()), "an error wins");
    assert_eq!(Launched::default().result(), Ok(None));
}
