use super::*;

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, n)
}

struct Node {
    addr: Ipv4Addr,
    key: Arc<NodeKey>,
    crypto: Arc<Crypto>,
    m: Manager,
}

fn node(n: u8, cipher: Cipher) -> Node {
    let crypto = Arc::new(Crypto::default());
    Node {
        addr: ip(n),
        key: Arc::new(NodeKey::generate()),
        m: Manager::with_cipher(crypto.clone(), cipher),
        crypto,
    }
}

fn config(me: &Node, peers: &[&Node], policy: RekeyPolicy) -> CryptoConfig {
    CryptoConfig {
        node: Some(me.key.clone()),
        peers: peers
            .iter()
            .map(|p| (p.addr, Some(p.key.public())))
            .collect(),
        policy,
    }
}

/// Delivers every message in `out` (sent by `from`) to `to`, and their
/// answers back, until nothing is left.
fn exchange(a: &mut Node, b: &mut Node, mut out: Vec<Outbound>, now: Instant) {
    let mut from_a = true;
    while !out.is_empty() {
        let mut next = Vec::new();
        let (src, dst) = if from_a {
            (a.addr, &mut *b)
        } else {
            (b.addr, &mut *a)
        };
        for o in out {
            if wire::kind(&o.msg) == Kind::Data {
                // A keepalive: the lanes open it.
                let _ = dst
                    .crypto
                    .sessions
                    .load()
                    .open(src, &mut o.msg.clone(), now);
            } else {
                let _ = dst.m.handshake(src, &o.msg, now, &mut next);
            }
        }
        out = next;
        from_a = !from_a;
    }
}

fn seal_to(n: &Node, peer: Ipv4Addr, text: &[u8], now: Instant) -> Option<Vec<u8>> {
    let t = n.crypto.sessions.load();
    let k = t.sender(peer, now)?;
    let mut d = [vec![0u8; 16], text.to_vec(), vec![0u8; 16]].concat();
    k.seal(&mut d).then_some(d)
}

fn opens(
    n: &Node,
    src: Ipv4Addr,
    mut d: Vec<u8>,
    now: Instant,
) -> Result<Vec<u8>, DropReasonAlias> {
    let r = n.crypto.sessions.load().open(src, &mut d, now)?;
    Ok(d[r].to_vec())
}

type DropReasonAlias = crate::overlay::DropReason;

/// `a` starts a handshake at `at` and every message goes across.
fn handshake_at(a: &mut Node, b: &mut Node, at: Instant) {
    let mut out = Vec::new();
    a.m.tick(at, &mut out);
    exchange(a, b, out, at);
}

/// Two configured nodes; `a` has the lower public key (it leads rekeys).
fn pair(cipher_a: Cipher, cipher_b: Cipher, policy: RekeyPolicy) -> (Node, Node) {
    let (mut a, mut b) = (node(1, cipher_a), node(2, cipher_b));
    if a.key.public().0 > b.key.public().0 {
        std::mem::swap(&mut a.key, &mut b.key);
    }
    let (ca, cb) = (config(&a, &[&b], policy), config(&b, &[&a], policy));
    a.m.configure(&ca);
    b.m.configure(&cb);
    (a, b)
}

#[test]
fn a_handshake_gives_both_sides_one_session_and_data_flows_both_ways() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Cipher::Aes256Gcm, Cipher::Aes256Gcm, RekeyPolicy::default());
    assert!(
        seal_to(&a, b.addr, b"x", now).is_none(),
        "no session: nothing is sent"
    );
    let mut out = Vec::new();
    a.m.tick(now, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].msg.len(), wire::INITIATION_LEN);
    exchange(&mut a, &mut b, out, now);
    // The keepalive confirmed B's keypair: both send now.
    let d = seal_to(&a, b.addr, b"hello from a", now).unwrap();
    assert_eq!(opens(&b, a.addr, d, now).unwrap(), b"hello from a");
    let d = seal_to(&b, a.addr, b"hello from b", now).unwrap();
    assert_eq!(opens(&a, b.addr, d, now).unwrap(), b"hello from b");
    let k = a.crypto.sessions.load();
    assert_eq!(k.sender(b.addr, now).unwrap().cipher(), Cipher::Aes256Gcm);
    assert_eq!(a.crypto.stats.snapshot().sessions_established, 1);
    assert_eq!(b.crypto.stats.snapshot().sessions_established, 1);
    // B's tick moves its confirmed keypair to current; nothing is due.
    let mut out = Vec::new();
    b.m.tick(now, &mut out);
    a.m.tick(now, &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn chacha_is_used_when_one_side_lacks_aes() {
    let now = Instant::now();
    let (mut a, mut b) = pair(
        Cipher::Aes256Gcm,
        Cipher::ChaCha20Poly1305,
        RekeyPolicy::default(),
    );
    handshake_at(&mut a, &mut b, now);
    let d = seal_to(&a, b.addr, b"frame", now).unwrap();
    assert_eq!(opens(&b, a.addr, d, now).unwrap(), b"frame");
    let k = b.crypto.sessions.load();
    assert_eq!(
        k.sender(a.addr, now).unwrap().cipher(),
        Cipher::ChaCha20Poly1305
    );
}

#[test]
fn rekeying_keeps_the_old_session_for_what_is_in_flight() {
    let policy = RekeyPolicy {
        after: Duration::from_secs(2),
        after_messages: 1 << 40,
    };
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Cipher::Aes256Gcm, Cipher::Aes256Gcm, policy);
    handshake_at(&mut a, &mut b, t0);
    let in_flight = seal_to(&a, b.addr, b"sent before the rekey", t0).unwrap();
    let t1 = t0 + Duration::from_secs(2);
    let mut out = Vec::new();
    b.m.tick(t1, &mut out);
    assert!(out.is_empty(), "the follower waits longer");
    a.m.tick(t1, &mut out);
    assert_eq!(out.len(), 1, "the leader rekeys");
    exchange(&mut a, &mut b, out, t1);
    let old = a
        .crypto
        .sessions
        .load()
        .peer(b.addr)
        .unwrap()
        .previous()
        .cloned()
        .unwrap();
    let new = a.crypto.sessions.load().sender(b.addr, t1).unwrap().clone();
    assert_ne!(old.local_index, new.local_index);
    assert_eq!(
        opens(&b, a.addr, in_flight, t1).unwrap(),
        b"sent before the rekey"
    );
    let d = seal_to(&b, a.addr, b"after", t1).unwrap();
    assert_eq!(opens(&a, b.addr, d, t1).unwrap(), b"after");
    assert_eq!(a.crypto.stats.snapshot().sessions_established, 2);
    // Rekeying on volume: a keypair that sent its share is renewed.
    let volume = RekeyPolicy {
        after: Duration::from_secs(100),
        after_messages: 3,
    };
    let (mut a, mut b) = pair(Cipher::Aes256Gcm, Cipher::Aes256Gcm, volume);
    handshake_at(&mut a, &mut b, t0);
    for _ in 0..3 {
        seal_to(&a, b.addr, b"x", t0).unwrap();
    }
    let mut out = Vec::new();
    a.m.tick(t0, &mut out);
    assert_eq!(out.len(), 1, "three datagrams: due");
}

#[test]
fn replayed_forged_and_foreign_handshakes_are_refused() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Cipher::Aes256Gcm, Cipher::Aes256Gcm, RekeyPolicy::default());
    let mut out = Vec::new();
    a.m.tick(now, &mut out);
    let init = out[0].msg.clone();
    exchange(&mut a, &mut b, out, now);
    let mut ignored = Vec::new();
    assert_eq!(
        b.m.handshake(a.addr, &init, now, &mut ignored),
        Err(Refused::Replayed)
    );
    let mut flipped = init.clone();
    flipped[40] ^= 1;
    assert_eq!(
        b.m.handshake(a.addr, &flipped, now, &mut ignored),
        Err(Refused::Handshake)
    );
    assert_eq!(
        b.m.handshake(ip(9), &init, now, &mut ignored),
        Err(Refused::UnknownPeer)
    );
    // A node with another key at A's address.
    let mut mallory = node(1, Cipher::Aes256Gcm);
    mallory
        .m
        .configure(&config(&mallory, &[&b], RekeyPolicy::default()));
    let mut out = Vec::new();
    mallory.m.tick(now, &mut out);
    assert_eq!(
        b.m.handshake(a.addr, &out[0].msg, now, &mut ignored),
        Err(Refused::WrongKey)
    );
    assert!(ignored.is_empty());
    assert_eq!(b.crypto.stats.snapshot().handshakes_refused, 4);
    // The session made before is untouched.
    let d = seal_to(&a, b.addr, b"still", now).unwrap();
    assert_eq!(opens(&b, a.addr, d, now).unwrap(), b"still");
}

#[test]
fn a_removed_node_or_a_changed_key_ends_its_sessions_at_once() {
    let now = Instant::now();
    let policy = RekeyPolicy::default();
    let (mut a, mut b) = pair(Cipher::Aes256Gcm, Cipher::Aes256Gcm, policy);
    handshake_at(&mut a, &mut b, now);
    let d = seal_to(&a, b.addr, b"x", now).unwrap();
    // B learns that A's key changed.
    let other = NodeKey::generate();
    b.m.configure(&CryptoConfig {
        node: Some(b.key.clone()),
        peers: HashMap::from([(a.addr, Some(other.public()))]),
        policy,
    });
    assert_eq!(
        opens(&b, a.addr, d.clone(), now),
        Err(crate::overlay::DropReason::UnknownSession)
    );
    // A is removed from B's cluster.
    b.m.configure(&CryptoConfig {
        node: Some(b.key.clone()),
        peers: HashMap::new(),
        policy,
    });
    let mut out = Vec::new();
    a.m.tick(now + RETRY, &mut out);
    let mut ignored = Vec::new();
    // A's current session is still fine on its side, so it does not
    // initiate; a fresh initiation from it is refused by B all the same.
    let mut fresh = node(1, Cipher::Aes256Gcm);
    fresh.key = a.key.clone();
    fresh.m.configure(&config(&fresh, &[&b], policy));
    fresh.m.tick(now, &mut out);
    assert_eq!(
        b.m.handshake(a.addr, &out.last().unwrap().msg, now, &mut ignored),
        Err(Refused::UnknownPeer)
    );
    assert!(b.crypto.sessions.load().peer(a.addr).is_none());
}

#[test]
fn a_restarted_node_with_the_same_key_gets_a_session_again() {
    let now = Instant::now();
    let policy = RekeyPolicy::default();
    let (mut a, mut b) = pair(Cipher::Aes256Gcm, Cipher::Aes256Gcm, policy);
    handshake_at(&mut a, &mut b, now);
    // A restarts: same key, no sessions, a newer timestamp.
    let key = a.key.clone();
    let crypto = Arc::new(Crypto::default());
    let mut a2 = Node {
        addr: a.addr,
        key,
        m: Manager::with_cipher(crypto.clone(), Cipher::Aes256Gcm),
        crypto,
    };
    a2.m.configure(&config(&a2, &[&b], policy));
    let later = now + Duration::from_millis(5);
    handshake_at(&mut a2, &mut b, later);
    let d = seal_to(&b, a2.addr, b"welcome back", later).unwrap();
    assert_eq!(opens(&a2, b.addr, d, later).unwrap(), b"welcome back");
}

#[test]
fn both_nodes_rekeying_at_once_lose_nothing_in_flight() {
    let policy = RekeyPolicy {
        after: Duration::from_secs(2),
        after_messages: 1 << 40,
    };
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Cipher::Aes256Gcm, Cipher::Aes256Gcm, policy);
    handshake_at(&mut a, &mut b, t0);
    // Late enough that both are due, and the messages cross.
    let t1 = t0 + Duration::from_secs(3);
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    a.m.tick(t1, &mut from_a);
    b.m.tick(t1, &mut from_b);
    assert_eq!((from_a.len(), from_b.len()), (1, 1), "both initiate");
    let (mut resp_b, mut resp_a) = (Vec::new(), Vec::new());
    b.m.handshake(a.addr, &from_a[0].msg, t1, &mut resp_b)
        .unwrap();
    a.m.handshake(b.addr, &from_b[0].msg, t1, &mut resp_a)
        .unwrap();
    let early_a = seal_to(&a, b.addr, b"a before", t1).unwrap();
    let early_b = seal_to(&b, a.addr, b"b before", t1).unwrap();
    let (mut keep_a, mut keep_b) = (Vec::new(), Vec::new());
    a.m.handshake(b.addr, &resp_b[0].msg, t1, &mut keep_a)
        .unwrap();
    b.m.handshake(a.addr, &resp_a[0].msg, t1, &mut keep_b)
        .unwrap();
    // Each has moved on before the other's keepalive came: what the other
    // sealed meanwhile still opens.
    let mid_a = seal_to(&a, b.addr, b"a between", t1).unwrap();
    let mid_b = seal_to(&b, a.addr, b"b between", t1).unwrap();
    for k in keep_a {
        opens(&b, a.addr, k.msg, t1).unwrap();
    }
    for k in keep_b {
        opens(&a, b.addr, k.msg, t1).unwrap();
    }
    let mut ignored = Vec::new();
    a.m.tick(t1, &mut ignored);
    b.m.tick(t1, &mut ignored);
    let late_a = seal_to(&a, b.addr, b"a after", t1).unwrap();
    let late_b = seal_to(&b, a.addr, b"b after", t1).unwrap();
    for (d, text) in [
        (early_a, "a before"),
        (mid_a, "a between"),
        (late_a, "a after"),
    ] {
        assert_eq!(opens(&b, a.addr, d, t1).unwrap(), text.as_bytes());
    }
    for (d, text) in [
        (early_b, "b before"),
        (mid_b, "b between"),
        (late_b, "b after"),
    ] {
        assert_eq!(opens(&a, b.addr, d, t1).unwrap(), text.as_bytes());
    }
}
