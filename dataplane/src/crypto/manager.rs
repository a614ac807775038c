//! The key manager: makes and renews the sessions with every peer that
//! shares an encrypted network with this node, and publishes them to the
//! lanes as one [`SessionTable`]. Sans-io like the overlay core: handshake
//! messages and the time go in, messages to send come out (the driver,
//! `io::keys`, reads the queue the lanes fill and sends on the underlay
//! socket).
//!
//! The handshake is Noise IK (`Noise_IK_25519_ChaChaPoly_BLAKE2s`, the one
//! WireGuard builds on), from the `snow` crate: the initiator knows the
//! responder's static key from the cluster, the responder learns the
//! initiator's from message 1 and accepts it only if it is the key of the
//! node at that underlay address. The split of the finished handshake gives
//! one key per direction for the data AEAD (see [`super::aead`]).
//!
//! Timers, after WireGuard's: of two nodes, the one with the lower public
//! key starts the next session after [`RekeyPolicy::after`] or
//! `after_messages`; the other only after one and a half times as long
//! (so the two do not race each other); an initiation without an answer is
//! sent again after [`RETRY`]. A new
//! initiation must carry a newer timestamp than the last one accepted from
//! that node, so a captured initiation cannot be replayed.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ring::rand::{SecureRandom, SystemRandom};

use super::aead::Cipher;
use super::keys::{NodeKey, PublicKey};
use super::session::{Crypto, Keypair, PeerKeys, RekeyPolicy, SessionTable};
use super::wire::{self, Initiation, Kind, Response};

/// The Noise protocol name.
pub const NOISE: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Mixed into every handshake: a vxmesh node talks only to vxmesh nodes
/// of this wire version.
pub const PROLOGUE: &[u8] = b"vxmesh encrypted overlay 1";
/// An initiation that got no response is sent again after this long.
pub const RETRY: Duration = Duration::from_millis(500);
/// Most handshake messages accepted from one node per second; more are
/// refused before any Diffie-Hellman is computed.
pub const HANDSHAKES_PER_SECOND: u32 = 20;

/// What the control plane gives the manager, in every table snapshot.
#[derive(Debug, Clone, Default)]
pub struct CryptoConfig {
    /// This node's key (none: every encrypted network carries nothing).
    pub node: Option<Arc<NodeKey>>,
    /// Every node that shares an encrypted network with this one, with its
    /// public key if the cluster has one for it.
    pub peers: HashMap<Ipv4Addr, Option<PublicKey>>,
    pub policy: RekeyPolicy,
}

/// A message for the underlay.
#[derive(Debug, PartialEq, Eq)]
pub struct Outbound {
    pub peer: Ipv4Addr,
    pub msg: Vec<u8>,
}

/// Why a handshake message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NoNodeKey,
    /// The sender shares no encrypted network with us, or has no key.
    UnknownPeer,
    RateLimited,
    Malformed,
    /// Noise refused it (not for our key, or tampered with).
    Handshake,
    /// The initiator's static key is not that node's.
    WrongKey,
    /// An initiation no newer than the last one accepted.
    Replayed,
    /// A response to no initiation of ours.
    NotPending,
}

struct Pending {
    hs: snow::HandshakeState,
    index: u32,
    sent: Instant,
}

struct Peer {
    public: PublicKey,
    keys: PeerKeys,
    pending: Option<Pending>,
    /// Timestamp of the newest initiation accepted from this node.
    newest: u64,
    /// Start of the current second and handshake messages in it.
    rate: (Instant, u32),
}

pub struct Manager {
    crypto: Arc<Crypto>,
    node: Option<Arc<NodeKey>>,
    policy: RekeyPolicy,
    peers: HashMap<Ipv4Addr, Peer>,
    rng: SystemRandom,
    prefer: Cipher,
    params: snow::params::NoiseParams,
    /// Last timestamp sent: initiations carry strictly growing ones even
    /// if the wall clock steps back.
    last_stamp: u64,
}

impl Manager {
    pub fn new(crypto: Arc<Crypto>) -> Manager {
        Manager::with_cipher(crypto, Cipher::preferred())
    }

    /// A manager that offers `prefer` (tests pick one).
    pub fn with_cipher(crypto: Arc<Crypto>, prefer: Cipher) -> Manager {
        Manager {
            crypto,
            node: None,
            policy: RekeyPolicy::default(),
            peers: HashMap::new(),
            rng: SystemRandom::new(),
            prefer,
            params: NOISE.parse().expect("a valid Noise protocol name"),
            last_stamp: 0,
        }
    }

    /// Takes a new configuration: sessions with a node that left, or whose
    /// key changed, end at once (and all of them when this node's key
    /// changed); the lanes see it when this returns.
    pub fn configure(&mut self, cfg: &CryptoConfig) {
        let mut changed = false;
        let same_node = match (&self.node, &cfg.node) {
            (Some(a), Some(b)) => a.public() == b.public(),
            (None, None) => true,
            _ => false,
        };
        if !same_node {
            self.node = cfg.node.clone();
            changed |= !self.peers.is_empty();
            self.peers.clear();
        }
        let before = self.peers.len();
        self.peers
            .retain(|addr, p| cfg.peers.get(addr) == Some(&Some(p.public)));
        changed |= self.peers.len() != before;
        for (addr, key) in &cfg.peers {
            if let (Some(key), false) = (key, self.peers.contains_key(addr)) {
                self.peers.insert(
                    *addr,
                    Peer {
                        public: *key,
                        keys: PeerKeys::default(),
                        pending: None,
                        newest: 0,
                        rate: (Instant::now(), 0),
                    },
                );
            }
        }
        changed |= self.policy != cfg.policy;
        self.policy = cfg.policy;
        if changed {
            self.publish();
        }
    }

    /// Timers: drops expired keypairs, moves a confirmed responder keypair
    /// to current, and starts the handshakes that are due.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Outbound>) {
        let mut changed = false;
        let policy = self.policy;
        let addrs: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for addr in addrs {
            let p = self.peers.get_mut(&addr).expect("listed above");
            for slot in [&mut p.keys.current, &mut p.keys.next] {
                if slot.as_ref().is_some_and(|k| k.expired(&policy, now)) {
                    *slot = None;
                    changed = true;
                }
            }
            let before = p.keys.retired.len();
            p.keys.retired.retain(|k| !k.expired(&policy, now));
            changed |= p.keys.retired.len() != before;
            if p.keys.next.as_ref().is_some_and(|k| k.confirmed()) {
                let next = p.keys.next.take().expect("checked above");
                p.keys.promote(next);
                changed = true;
            }
            // Of two nodes, the one with the lower public key renews their
            // session on time; the other only if that has not happened half
            // an interval later (it is down, say). So the two do not both
            // start a handshake at the same moment every time.
            let leader = self
                .node
                .as_ref()
                .is_some_and(|k| k.public().0 < p.public.0);
            let due = match &p.keys.current {
                None => true,
                Some(c) => {
                    let age = now.saturating_duration_since(c.created);
                    let after = if leader {
                        policy.after
                    } else {
                        policy.after + policy.after / 2
                    };
                    age >= after || c.sent() >= policy.after_messages
                }
            };
            let waiting = p
                .pending
                .as_ref()
                .is_some_and(|h| now.saturating_duration_since(h.sent) < RETRY);
            if due && !waiting && self.node.is_some() {
                if let Some(msg) = self.initiate(addr, now) {
                    out.push(Outbound { peer: addr, msg });
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    /// One handshake message from `src`; its answer, if any, goes to `out`.
    pub fn handshake(
        &mut self,
        src: Ipv4Addr,
        msg: &[u8],
        now: Instant,
        out: &mut Vec<Outbound>,
    ) -> Result<(), Refused> {
        let r = self.handshake_inner(src, msg, now, out);
        if r.is_err() {
            self.crypto.stats.handshakes_refused.fetch_add(1, Relaxed);
        }
        r
    }

    fn handshake_inner(
        &mut self,
        src: Ipv4Addr,
        msg: &[u8],
        now: Instant,
        out: &mut Vec<Outbound>,
    ) -> Result<(), Refused> {
        let key = self.node.clone().ok_or(Refused::NoNodeKey)?;
        let p = self.peers.get_mut(&src).ok_or(Refused::UnknownPeer)?;
        if now.saturating_duration_since(p.rate.0) >= Duration::from_secs(1) {
            p.rate = (now, 0);
        }
        p.rate.1 += 1;
        if p.rate.1 > HANDSHAKES_PER_SECOND {
            return Err(Refused::RateLimited);
        }
        match wire::kind(msg) {
            Kind::Initiation => {
                let m = Initiation::parse(msg).ok_or(Refused::Malformed)?;
                let mut hs = snow::Builder::new(self.params.clone())
                    .local_private_key(key.private())
                    .and_then(|b| b.prologue(PROLOGUE))
                    .and_then(|b| b.build_responder())
                    .map_err(|_| Refused::Handshake)?;
                let mut payload = [0u8; 64];
                let n = hs
                    .read_message(m.noise, &mut payload)
                    .map_err(|_| Refused::Handshake)?;
                if n != wire::INIT_PAYLOAD_LEN {
                    return Err(Refused::Malformed);
                }
                if hs.get_remote_static() != Some(&p.public.0[..]) {
                    return Err(Refused::WrongKey);
                }
                let stamp = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                if stamp <= p.newest {
                    return Err(Refused::Replayed);
                }
                let theirs = Cipher::from_byte(payload[8]).ok_or(Refused::Malformed)?;
                let cipher = Cipher::agree(self.prefer, theirs);
                let index = new_index(&self.rng, &self.peers);
                let mut reply = vec![0u8; wire::RESPONSE_LEN];
                Response::write_header(index, m.sender, &mut reply);
                hs.write_message(&[cipher.to_byte()], &mut reply[12..])
                    .map_err(|_| Refused::Handshake)?;
                let (i2r, r2i) = hs.dangerously_get_raw_split();
                let p = self.peers.get_mut(&src).expect("found above");
                p.newest = stamp;
                p.keys.next = Some(Arc::new(Keypair::new(
                    src, index, m.sender, cipher, &r2i, &i2r, false, now,
                )));
                out.push(Outbound {
                    peer: src,
                    msg: reply,
                });
                self.crypto.stats.responses_sent.fetch_add(1, Relaxed);
                self.crypto.stats.sessions_established.fetch_add(1, Relaxed);
            }
            Kind::Response => {
                let m = Response::parse(msg).ok_or(Refused::Malformed)?;
                if p.pending.as_ref().is_none_or(|h| h.index != m.receiver) {
                    return Err(Refused::NotPending);
                }
                let mut pending = p.pending.take().expect("checked above");
                let mut payload = [0u8; 64];
                let n = match pending.hs.read_message(m.noise, &mut payload) {
                    Ok(n) => n,
                    Err(_) => {
                        // A forged response does not cancel the handshake.
                        p.pending = Some(pending);
                        return Err(Refused::Handshake);
                    }
                };
                let cipher = (n == wire::RESP_PAYLOAD_LEN)
                    .then(|| Cipher::from_byte(payload[0]))
                    .flatten()
                    .ok_or(Refused::Malformed)?;
                let (i2r, r2i) = pending.hs.dangerously_get_raw_split();
                let kp = Arc::new(Keypair::new(
                    src,
                    pending.index,
                    m.sender,
                    cipher,
                    &i2r,
                    &r2i,
                    true,
                    now,
                ));
                // An empty data message confirms the session to the
                // responder, which then sends with it too.
                let mut keepalive = vec![0u8; wire::DATA_OVERHEAD];
                if kp.seal(&mut keepalive) {
                    out.push(Outbound {
                        peer: src,
                        msg: keepalive,
                    });
                }
                p.keys.promote(kp);
                self.crypto.stats.sessions_established.fetch_add(1, Relaxed);
            }
            Kind::Data | Kind::Vxlan => return Err(Refused::Malformed),
        }
        self.publish();
        Ok(())
    }

    fn initiate(&mut self, addr: Ipv4Addr, now: Instant) -> Option<Vec<u8>> {
        let key = self.node.clone()?;
        let stamp = self.stamp();
        let index = new_index(&self.rng, &self.peers);
        let p = self.peers.get_mut(&addr)?;
        let mut hs = snow::Builder::new(self.params.clone())
            .local_private_key(key.private())
            .and_then(|b| b.remote_public_key(&p.public.0))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .ok()?;
        let mut payload = [0u8; wire::INIT_PAYLOAD_LEN];
        payload[..8].copy_from_slice(&stamp.to_be_bytes());
        payload[8] = self.prefer.to_byte();
        let mut msg = vec![0u8; wire::INITIATION_LEN];
        Initiation::write_header(index, &mut msg);
        let n = hs.write_message(&payload, &mut msg[8..]).ok()?;
        debug_assert_eq!(n, wire::NOISE_INIT_LEN);
        p.pending = Some(Pending {
            hs,
            index,
            sent: now,
        });
        self.crypto.stats.initiations_sent.fetch_add(1, Relaxed);
        Some(msg)
    }

    /// Nanoseconds since the epoch, strictly growing.
    fn stamp(&mut self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.last_stamp = wall.max(self.last_stamp + 1);
        self.last_stamp
    }

    fn publish(&self) {
        let peers = self
            .peers
            .iter()
            .map(|(a, p)| (*a, p.keys.clone()))
            .collect();
        self.crypto
            .sessions
            .store(Arc::new(SessionTable::new(peers, self.policy)));
    }
}

/// A random session index no keypair or pending handshake uses.
fn new_index(rng: &SystemRandom, peers: &HashMap<Ipv4Addr, Peer>) -> u32 {
    loop {
        let mut b = [0u8; 4];
        if rng.fill(&mut b).is_err() {
            continue;
        }
        let i = u32::from_le_bytes(b);
        let used = peers.values().any(|p| {
            p.keys.all().any(|k| k.local_index == i)
                || p.pending.as_ref().is_some_and(|h| h.index == i)
        });
        if !used {
            return i;
        }
    }
}

#[cfg(test)]
mod tests;
