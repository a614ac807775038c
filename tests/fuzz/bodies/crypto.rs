//! Encrypted networks (`dataplane/src/crypto/`): sealed datagrams through
//! the session table and node 2's receive path, and handshake messages
//! through the key manager. Part of `bodies.rs` (same rules: raw bytes in,
//! never a panic, checks that would catch a wrong answer).
//!
//! Both run on real sessions: two key managers with fixed node keys, nodes
//! 1 and 2 at 198.18.0.1 and 198.18.0.2, make them with a Noise IK
//! handshake in memory, as `dataplane/src/crypto/manager/tests.rs` does.
//! The handshake's ephemeral keys and session indices are random, so a
//! datagram sealed in one process never opens in another, a saved seed
//! included. So `sealed_datagram` also seals every input itself, with node
//! 1's key, to reach what lies behind an open that succeeds; and
//! `handshake` points a response at node 2's pending handshake before it
//! hands it over (a real initiation needs no such help: node 2's key is
//! fixed, so one saved by the seed tool is accepted by a new node 2).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use vxmesh_dataplane::crypto::manager::{Outbound, Refused};
use vxmesh_dataplane::crypto::session::Inbound;
use vxmesh_dataplane::crypto::wire::{self, Kind, DATA_HEADER_LEN, DATA_OVERHEAD, TAG_LEN};
use vxmesh_dataplane::crypto::{
    Cipher, Crypto, CryptoConfig, Manager, NodeKey, RekeyPolicy, SessionTable,
};
use vxmesh_dataplane::offload::{gso, virtio};
use vxmesh_dataplane::overlay::path::{RxPath, TapError, TapOffloads, Taps, BUF_LEN};
use vxmesh_dataplane::overlay::{
    Core, DropReason, EndpointEntry, GlobalStats, LearnedFdb, NetStats, NetworkTable, Tables,
    Verdict,
};
use vxmesh_dataplane::wire::MacAddr;

use super::{endpoint, underlay, SEGMENT_BUF, TINY_MTU, VNI_FRONT, VNI_TINY};

/// The private keys of the fuzz nodes: 1 and 2 share encrypted networks; 3
/// is a stranger to both (the seed tool makes initiations with it).
const PRIVATE_KEYS: [[u8; 32]; 3] = [[0x11; 32], [0x22; 32], [0x33; 32]];

/// Node `n`'s key pair (`n` is 1, 2 or 3), computed once per process.
pub fn node_key(n: u8) -> Arc<NodeKey> {
    static KEYS: OnceLock<Vec<Arc<NodeKey>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        PRIVATE_KEYS
            .iter()
            .map(|k| Arc::new(NodeKey::from_private(*k)))
            .collect()
    });
    keys[usize::from(n) - 1].clone()
}

/// What the control plane gives node `me`'s key manager when the only node
/// it shares an encrypted network with is `peer`.
pub fn crypto_config(me: u8, peer: u8) -> CryptoConfig {
    CryptoConfig {
        node: Some(node_key(me)),
        peers: HashMap::from([(underlay(peer), Some(node_key(peer).public()))]),
        policy: RekeyPolicy::default(),
    }
}

/// A new key manager for node `me`, configured with `peer`, and the state
/// it publishes its sessions to.
pub fn key_manager(me: u8, peer: u8) -> (Arc<Crypto>, Manager) {
    let crypto = Arc::new(Crypto::default());
    let mut m = Manager::with_cipher(crypto.clone(), Cipher::Aes256Gcm);
    m.configure(&crypto_config(me, peer));
    (crypto, m)
}

/// The one message in `out`, which must go to `peer` and be `len` bytes.
pub fn only(out: Vec<Outbound>, peer: Ipv4Addr, len: usize, what: &str) -> Vec<u8> {
    assert_eq!(
        out.len(),
        1,
        "{what}: {} messages instead of one",
        out.len()
    );
    let o = out.into_iter().next().expect("one message");
    assert_eq!(o.peer, peer, "{what}: sent to the wrong node");
    assert_eq!(o.msg.len(), len, "{what}: {} bytes", o.msg.len());
    o.msg
}

/// Node 1 and node 2 after a complete handshake: node 1 holds the
/// initiator's keypair, node 2 the responder's, confirmed by node 1's
/// keepalive. The managers are gone; the sessions stay in the two `Crypto`s.
pub struct SealedPair {
    /// When the session was made. Every input runs at this instant, so the
    /// keypairs never age out however long the fuzzer runs.
    pub now: Instant,
    node1: Arc<Crypto>,
    node2: Arc<Crypto>,
    node2_keys: CryptoConfig,
    /// Node 2's handshake queue (what its lanes hand the key manager),
    /// emptied after every datagram so that it never fills up.
    queue: Mutex<Receiver<Inbound>>,
}

/// Makes a [`SealedPair`]: node 1 initiates, node 2 answers, node 1 sends
/// its keepalive and node 2 opens it.
pub fn sealed_pair() -> SealedPair {
    let now = Instant::now();
    let (n1, n2) = (underlay(1), underlay(2));
    let (c1, mut m1) = key_manager(1, 2);
    let (c2, mut m2) = key_manager(2, 1);
    let mut out = Vec::new();
    m1.tick(now, &mut out);
    let init = only(out, n2, wire::INITIATION_LEN, "node 1's initiation");
    let mut out = Vec::new();
    m2.handshake(n1, &init, now, &mut out)
        .expect("node 2 answers node 1");
    let resp = only(out, n1, wire::RESPONSE_LEN, "node 2's response");
    let mut out = Vec::new();
    m1.handshake(n2, &resp, now, &mut out)
        .expect("node 1 takes node 2's response");
    let mut keepalive = only(out, n2, DATA_OVERHEAD, "node 1's keepalive");
    let r = c2.sessions.load().open(n1, &mut keepalive, now);
    assert_eq!(
        r,
        Ok(DATA_HEADER_LEN..DATA_HEADER_LEN),
        "the keepalive opens"
    );
    let queue = c2.take_inbox().expect("a new Crypto has its queue");
    SealedPair {
        now,
        node1: c1,
        node2: c2,
        node2_keys: crypto_config(2, 1),
        queue: Mutex::new(queue),
    }
}

impl SealedPair {
    /// `plain` sealed by node 1 for node 2, with the next counter of its
    /// session: what node 1's lanes send.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; DATA_HEADER_LEN + plain.len() + TAG_LEN];
        d[DATA_HEADER_LEN..DATA_HEADER_LEN + plain.len()].copy_from_slice(plain);
        let table = self.node1.sessions.load();
        let key = table
            .sender(underlay(2), self.now)
            .expect("node 1 has a session with node 2");
        assert!(key.seal(&mut d), "node 1's key seals");
        d
    }

    /// Datagrams node 2 has opened from node 1 so far, over all keypairs.
    fn opened(&self) -> u64 {
        self.node2
            .sessions
            .load()
            .peer(underlay(1))
            .map_or(0, |k| k.all().map(|kp| kp.rx_datagrams.load(Relaxed)).sum())
    }

    /// What node 2's lanes queued for the key manager since the last call.
    fn queued(&self) -> Vec<Inbound> {
        let q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.try_iter().collect()
    }
}

/// The pair of the fuzz process, made once.
///
/// What carries over from one input to the next is node 1's send counter
/// and node 2's receive window. Every datagram the body seals takes a
/// counter never used before, and no other input can open (it would have
/// to be sealed with this process's random keys), so no outcome depends on
/// the inputs that ran before.
fn sealed() -> &'static SealedPair {
    static PAIR: OnceLock<SealedPair> = OnceLock::new();
    PAIR.get_or_init(sealed_pair)
}

/// Why an open may fail.
fn open_refusal(r: DropReason) -> bool {
    matches!(
        r,
        DropReason::Malformed
            | DropReason::UnknownSession
            | DropReason::BadSeal
            | DropReason::Replayed
    )
}

/// Opens a copy of `d` from `src` as node 2's lanes do. When it opens, the
/// plaintext is what lies between the data header and the tag, and the
/// same bytes never open a second time; the plaintext is returned.
fn open_once(
    table: &SessionTable,
    src: Ipv4Addr,
    d: &[u8],
    now: Instant,
) -> Result<Vec<u8>, DropReason> {
    let mut buf = d.to_vec();
    let range = match table.open(src, &mut buf, now) {
        Ok(range) => range,
        Err(r) => {
            assert!(open_refusal(r), "an open refused with {r:?}");
            return Err(r);
        }
    };
    assert!(
        d.len() >= DATA_OVERHEAD && wire::kind(d) == Kind::Data && d[1..4] == [0, 0, 0],
        "opened a {}-byte datagram that starts {:02x?}",
        d.len(),
        d.get(..4)
    );
    assert!(
        range.start <= range.end && range.end <= buf.len(),
        "plaintext {range:?} outside a {}-byte datagram",
        buf.len()
    );
    assert_eq!(
        range,
        DATA_HEADER_LEN..d.len() - TAG_LEN,
        "the plaintext is not what lies between header and tag"
    );
    let mut again = d.to_vec();
    assert_eq!(
        table.open(src, &mut again, now),
        Err(DropReason::Replayed),
        "the same datagram opened twice"
    );
    Ok(buf[range].to_vec())
}

/// Copies of a sealed datagram changed in one field or in length, each
/// with the refusal it must get: the header outside the AEAD is checked
/// (type, reserved bytes, receiver index), the rest authenticates.
fn tampered(sealed: &[u8]) -> Vec<(String, Vec<u8>, DropReason)> {
    let len = sealed.len();
    let flip = |at: usize, bit: u8| {
        let mut d = sealed.to_vec();
        d[at] ^= bit;
        d
    };
    let mut v = vec![
        ("type".into(), flip(0, 0x01), DropReason::Malformed),
        ("reserved byte".into(), flip(2, 0x40), DropReason::Malformed),
        (
            "receiver index".into(),
            flip(4, 0x01),
            DropReason::UnknownSession,
        ),
        ("counter".into(), flip(8, 0x01), DropReason::BadSeal),
        (
            "counter, high bit".into(),
            flip(15, 0x80),
            DropReason::BadSeal,
        ),
        ("tag".into(), flip(len - 1, 0x01), DropReason::BadSeal),
        (
            "one byte short".into(),
            sealed[..len - 1].to_vec(),
            if len - 1 < DATA_OVERHEAD {
                DropReason::Malformed
            } else {
                DropReason::BadSeal
            },
        ),
        (
            "one byte more".into(),
            [sealed, &[0]].concat(),
            DropReason::BadSeal,
        ),
    ];
    let body = len - DATA_OVERHEAD;
    if body > 0 {
        for at in [DATA_HEADER_LEN, DATA_HEADER_LEN + body / 2] {
            v.push((
                format!("ciphertext byte {at}"),
                flip(at, 0x80),
                DropReason::BadSeal,
            ));
        }
        v.push((
            "no ciphertext".into(),
            [&sealed[..DATA_HEADER_LEN], &sealed[len - TAG_LEN..]].concat(),
            DropReason::BadSeal,
        ));
    }
    v
}

/// The input as a datagram from node 1, to node 2's session table (as it
/// came, and from a node with no session) and to node 2's receive path;
/// then the input as the plaintext of a datagram node 1 sealed, to both
/// again, together with copies of it changed in every field.
///
/// Checks: an open succeeds only for a data message, with the plaintext
/// between its header and tag, and never twice; a datagram node 1 sealed
/// opens to what was sealed, and no changed copy opens. On the receive
/// path (node 2's encrypted networks, a TAP without and one with
/// virtio-net headers) a frame reaches a TAP only from a datagram that
/// opened, and then exactly what the core decides for the plaintext (the
/// frame, its TCP segments, or its GSO super-frame); plaintext VXLAN and
/// what no session opens never get there; a handshake message from a
/// member is queued for the key manager as it came, one from a stranger is
/// dropped.
pub fn sealed_datagram(data: &[u8]) {
    let s = sealed();
    let (n1, now) = (underlay(1), s.now);
    let table = s.node2.sessions.load();

    let _ = open_once(&table, n1, data, now);
    let other = open_once(&table, underlay(3), data, now);
    assert!(
        matches!(
            other,
            Err(DropReason::Malformed | DropReason::UnknownSession)
        ),
        "opened with no session: {other:?}"
    );

    let sealed = s.seal(data);
    for (what, copy, want) in tampered(&sealed) {
        assert_eq!(
            open_once(&table, n1, &copy, now),
            Err(want),
            "a sealed datagram with its {what} changed"
        );
    }
    assert_eq!(
        open_once(&table, n1, &sealed, now).as_deref(),
        Ok(data),
        "a datagram node 1 sealed"
    );

    // The underlay never hands over more than the pipeline's buffer.
    if sealed.len() > BUF_LEN {
        return;
    }
    let offloads = [
        TapOffloads::default(),
        TapOffloads {
            vnet_hdr: true,
            uso_write: true,
        },
    ];
    // One path for all of them, as a lane keeps one: each datagram ends
    // with the flush that ends a turn, so nothing is left in it.
    let mut rx = RxPath::default();
    for tap in offloads {
        receive_raw(s, &mut rx, tap, n1, data);
        receive_raw(s, &mut rx, tap, underlay(9), data);
        receive_sealed(s, &mut rx, tap, data);
    }
}

/// Node 2's networks, both encrypted and shared with node 1: `front`
/// (10.0.9.1 lives on node 1, 10.0.9.2 on node 2; learning on) and `tiny`
/// (the smallest IPv4 MTU, so that short inputs reach TCP segmentation).
fn sealed_tables(s: &SealedPair) -> Tables {
    let eps = [endpoint([10, 0, 9, 1], 1), endpoint([10, 0, 9, 2], 2)];
    let nets = vec![
        encrypted_network("front", VNI_FRONT, 1450, &eps).with_learning(true),
        encrypted_network("tiny", VNI_TINY, TINY_MTU, &[]),
    ];
    Tables::new(underlay(2), nets, Arc::new(GlobalStats::default()))
        .with_crypto(s.node2.clone(), s.node2_keys.clone())
}

fn encrypted_network(name: &str, vni: u32, mtu: u16, eps: &[EndpointEntry]) -> NetworkTable {
    let local = underlay(2);
    NetworkTable::new(
        name,
        vni,
        mtu,
        MacAddr::from_ipv4(Ipv4Addr::new(10, 0, 9, 2)),
        Arc::new(NetStats::default()),
        Arc::new(LearnedFdb::new(2, Duration::from_secs(300))),
    )
    .with_peers(local, [underlay(1), local])
    .with_endpoints(local, eps)
    .with_encryption(true)
}

/// A TAP of every VNI, with the offloads given, that records each write.
struct TapRecorder {
    offloads: TapOffloads,
    written: Vec<(u32, Vec<u8>)>,
}

impl Taps for TapRecorder {
    fn offloads(&self, _vni: u32) -> Option<TapOffloads> {
        Some(self.offloads)
    }
    fn write(&mut self, vni: u32, frame: &[u8]) -> Result<(), TapError> {
        self.written.push((vni, frame.to_vec()));
        Ok(())
    }
    fn refuse_uso_write(&mut self, _vni: u32) {
        self.offloads.uso_write = false;
    }
}

/// One datagram from `src` through the receive path over `tables`, and the
/// flush that ends a turn: the path's answer and every TAP write.
fn receive(
    s: &SealedPair,
    rx: &mut RxPath,
    tables: &Tables,
    tap: TapOffloads,
    src: Ipv4Addr,
    d: &[u8],
) -> (Option<DropReason>, Vec<(u32, Vec<u8>)>) {
    let mut io = TapRecorder {
        offloads: tap,
        written: Vec::new(),
    };
    let mut buf = d.to_vec();
    let dropped = rx.datagram(&Core, tables, src, &mut buf, s.now, &mut io);
    rx.flush(tables, &mut io);
    (dropped, io.written)
}

/// `d` as it came from `src` into node 2's receive path.
fn receive_raw(s: &SealedPair, rx: &mut RxPath, tap: TapOffloads, src: Ipv4Addr, d: &[u8]) {
    let tables = sealed_tables(s);
    let before = s.opened();
    let (dropped, written) = receive(s, rx, &tables, tap, src, d);
    let opened = s.opened() > before;
    let queued = s.queued();
    let kind = wire::kind(d);
    assert!(
        opened || written.is_empty(),
        "{kind:?} from {src}: {} TAP write(s) from a datagram that did not open",
        written.len()
    );
    if src != underlay(1) {
        assert_eq!(
            dropped,
            Some(DropReason::UnknownPeer),
            "from stranger {src}"
        );
        assert!(!opened && queued.is_empty(), "from stranger {src}");
        return;
    }
    match kind {
        Kind::Initiation | Kind::Response => {
            assert_eq!(dropped, None, "a handshake message");
            assert!(written.is_empty() && !opened, "a handshake message");
            assert_eq!(queued.len(), 1, "a handshake message is queued once");
            assert_eq!(queued[0].src, src);
            assert_eq!(queued[0].msg, d, "queued a changed handshake message");
        }
        Kind::Data => {
            assert!(queued.is_empty(), "a data message queued for the manager");
            if !opened {
                assert!(
                    dropped.is_some_and(open_refusal),
                    "a data message that did not open: {dropped:?}"
                );
            }
        }
        Kind::Vxlan => {
            assert!(queued.is_empty(), "a VXLAN datagram queued for the manager");
            assert!(!opened, "a VXLAN datagram opened");
            assert!(dropped.is_some(), "plaintext VXLAN on encrypted networks");
        }
    }
}

/// `plain` sealed by node 1 into node 2's receive path: it opens once,
/// and the TAP gets what the core decides for the plaintext (on tables of
/// its own, which start the same), byte for byte.
fn receive_sealed(s: &SealedPair, rx: &mut RxPath, tap: TapOffloads, plain: &[u8]) {
    let tables = sealed_tables(s);
    let before = s.opened();
    let (dropped, written) = receive(s, rx, &tables, tap, underlay(1), &s.seal(plain));
    assert_eq!(
        s.opened(),
        before + 1,
        "a datagram node 1 sealed opens once"
    );
    assert!(s.queued().is_empty(), "an opened datagram queued");
    assert!(
        !matches!(
            dropped,
            Some(
                DropReason::Plaintext
                    | DropReason::BadSeal
                    | DropReason::Replayed
                    | DropReason::UnknownSession
                    | DropReason::UnknownPeer
            )
        ),
        "an opened datagram refused with {dropped:?}"
    );
    if plain.is_empty() {
        // A keepalive: it confirms its session and holds nothing.
        assert_eq!(dropped, None, "a keepalive");
        assert!(written.is_empty(), "a keepalive reached a TAP");
        return;
    }
    let shadow = sealed_tables(s);
    let mut inner = plain.to_vec();
    match Core.handle_opened(&shadow, underlay(1), &mut inner, s.now) {
        Verdict::Drop(r) => {
            assert_eq!(dropped, Some(r), "the core drops it");
            assert!(written.is_empty(), "the core dropped it, the TAP got it");
        }
        Verdict::Deliver { net, offset } => {
            let vni = shadow.networks[net].vni;
            let frame = &inner[offset..];
            assert_eq!(dropped, None, "the core delivers it");
            let want = if tap.vnet_hdr {
                with_header(virtio::Header::default(), frame)
            } else {
                frame.to_vec()
            };
            assert_eq!(written, [(vni, want)], "the frame the core delivers");
        }
        Verdict::DeliverSegmented { net, offset, mss } => {
            let vni = shadow.networks[net].vni;
            let frame = &mut inner[offset..];
            if tap.vnet_hdr {
                // One super-frame, its checksum left for the kernel.
                match gso::prepare_for_tap(frame, mss) {
                    Some(h) => {
                        assert_eq!(dropped, None, "a super-frame for a TAP with GSO");
                        assert_eq!(written, [(vni, with_header(h, frame))], "the super-frame");
                    }
                    None => {
                        assert_eq!(dropped, Some(DropReason::Malformed));
                        assert!(written.is_empty());
                    }
                }
            } else {
                let mut want = Vec::new();
                let mut seg = vec![0u8; SEGMENT_BUF];
                let cut = gso::segment_tcp(frame, mss, &mut seg, |s| want.push((vni, s.to_vec())));
                assert!(cut.is_ok(), "segment_tcp after DeliverSegmented: {cut:?}");
                assert_eq!(dropped, None, "a super-frame for a plain TAP");
                assert_eq!(written, want, "the segments of the super-frame");
            }
        }
        v => panic!("an opened datagram must be delivered or dropped, not {v:?}"),
    }
}

/// `frame` behind virtio-net header `h`.
fn with_header(h: virtio::Header, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; virtio::LEN];
    assert!(h.emit(&mut v));
    v.extend_from_slice(frame);
    v
}

/// The input as a handshake message to node 2's key manager (new for every
/// input: its rate limit, newest timestamp and pending handshake are
/// state), from node 1 and from addresses that share no encrypted network
/// with it; first to a manager with no key of its own.
///
/// Checks: whatever is refused gets no answer; an initiation node 2
/// accepts gets exactly one response, to its sender index, makes the
/// responder's keypair with those indices, and is refused as a replay the
/// second time; a refused initiation makes no session. A response is also
/// handed over pointed at node 2's own pending initiation. After the input,
/// node 1 still gets its session: a genuine initiation is answered (a
/// refused one did not move the replay timestamp), and node 1's genuine
/// response completes node 2's pending handshake (a forged one did not
/// cancel it).
pub fn handshake(data: &[u8]) {
    let now = Instant::now();
    let n1 = underlay(1);
    let mut out = Vec::new();
    let mut keyless = Manager::with_cipher(Arc::new(Crypto::default()), Cipher::Aes256Gcm);
    assert_eq!(
        keyless.handshake(n1, data, now, &mut out),
        Err(Refused::NoNodeKey)
    );
    let (c2, mut m2) = key_manager(2, 1);
    for src in [underlay(9), underlay(2)] {
        assert_eq!(
            m2.handshake(src, data, now, &mut out),
            Err(Refused::UnknownPeer),
            "from {src}"
        );
    }
    assert!(out.is_empty(), "a refused message was answered: {out:?}");
    match wire::kind(data) {
        Kind::Initiation => initiation(&c2, &mut m2, data, now),
        Kind::Response => response(&mut m2, data, now),
        Kind::Data | Kind::Vxlan => {
            assert_eq!(
                m2.handshake(n1, data, now, &mut out),
                Err(Refused::Malformed)
            );
            assert!(out.is_empty(), "a refused message was answered: {out:?}");
        }
    }
}

/// Keypairs node 2 holds for node 1.
fn keypairs(c2: &Crypto) -> usize {
    c2.sessions
        .load()
        .peer(underlay(1))
        .map_or(0, |k| k.all().count())
}

/// An initiation node 1 made when the process first needed it: newer
/// than any saved input, so a new node 2 accepts it after any input.
fn genuine_initiation() -> &'static [u8] {
    static INIT: OnceLock<Vec<u8>> = OnceLock::new();
    INIT.get_or_init(|| {
        let (_, mut m1) = key_manager(1, 2);
        let mut out = Vec::new();
        m1.tick(Instant::now(), &mut out);
        only(
            out,
            underlay(2),
            wire::INITIATION_LEN,
            "node 1's initiation",
        )
    })
}

/// What node 2 must have done with an initiation it accepted: one
/// response to its sender index (in `out`), and the responder's keypair
/// with both indices.
fn answered(c2: &Crypto, init: &[u8], out: Vec<Outbound>) {
    let n1 = underlay(1);
    let reply = only(out, n1, wire::RESPONSE_LEN, "the answer to an initiation");
    let r = wire::Response::parse(&reply).expect("the answer is a response");
    let sender = u32::from_le_bytes(init[4..8].try_into().expect("4 bytes"));
    assert_eq!(r.receiver, sender, "answered to another index");
    let table = c2.sessions.load();
    let k = table
        .peer(n1)
        .and_then(|k| k.next.clone())
        .expect("an accepted initiation makes the responder's keypair");
    assert_eq!(
        (k.local_index, k.remote_index, k.initiator),
        (r.sender, sender, false),
        "the keypair's indices"
    );
}

fn initiation(c2: &Crypto, m2: &mut Manager, data: &[u8], now: Instant) {
    let n1 = underlay(1);
    let mut out = Vec::new();
    match m2.handshake(n1, data, now, &mut out) {
        Ok(()) => {
            answered(c2, data, out);
            let mut again = Vec::new();
            assert_eq!(
                m2.handshake(n1, data, now, &mut again),
                Err(Refused::Replayed),
                "the same initiation twice"
            );
            assert!(again.is_empty(), "a replayed initiation was answered");
        }
        Err(_) => {
            assert!(out.is_empty(), "a refused initiation was answered: {out:?}");
            assert_eq!(keypairs(c2), 0, "a refused initiation made a session");
        }
    }
    let init = genuine_initiation();
    let mut out = Vec::new();
    m2.handshake(n1, init, now, &mut out)
        .expect("node 2 answers a genuine initiation after the input");
    answered(c2, init, out);
}

fn response(m2: &mut Manager, data: &[u8], now: Instant) {
    let (n1, n2) = (underlay(1), underlay(2));
    let mut out = Vec::new();
    m2.tick(now, &mut out);
    let init = only(out, n1, wire::INITIATION_LEN, "node 2's initiation");
    // Pointed at node 2's pending handshake, whose index is random.
    let mut aimed = data.to_vec();
    if aimed.len() >= 12 {
        aimed[8..12].copy_from_slice(&init[4..8]);
    }
    let mut accepted = 0;
    for msg in [data, &aimed[..]] {
        let mut out = Vec::new();
        match m2.handshake(n1, msg, now, &mut out) {
            Ok(()) => {
                only(out, n1, DATA_OVERHEAD, "the keepalive after a response");
                accepted += 1;
            }
            Err(_) => assert!(out.is_empty(), "a refused response was answered: {out:?}"),
        }
    }
    assert!(accepted <= 1, "one handshake completed twice");
    // Node 1's genuine answer to that initiation.
    let (c1, mut m1) = key_manager(1, 2);
    let mut out = Vec::new();
    m1.handshake(n2, &init, now, &mut out)
        .expect("node 1 answers node 2's initiation");
    let resp = only(out, n2, wire::RESPONSE_LEN, "node 1's response");
    let mut out = Vec::new();
    let r = m2.handshake(n1, &resp, now, &mut out);
    if accepted == 1 {
        assert_eq!(r, Err(Refused::NotPending), "completed twice");
        assert!(out.is_empty());
        return;
    }
    assert_eq!(
        r,
        Ok(()),
        "a refused response cancelled the pending handshake"
    );
    let mut keepalive = only(out, n1, DATA_OVERHEAD, "node 2's keepalive");
    assert_eq!(
        c1.sessions.load().open(n2, &mut keepalive, now),
        Ok(DATA_HEADER_LEN..DATA_HEADER_LEN),
        "node 2's keepalive on the new session"
    );
}
