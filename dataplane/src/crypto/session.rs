//! Sessions between node pairs as the lanes see them: an immutable
//! [`SessionTable`] the key manager publishes whole (`ArcSwap`, like the
//! forwarding tables), whose [`Keypair`]s carry the only per-packet mutable
//! state, an atomic send counter and the receive window.
//!
//! Each peer has `current` (what is sent with), `next` (made by this node
//! as responder: it is sent with only once a datagram from the initiator
//! has arrived on it, which proves the initiator has it too) and up to
//! [`RETIRED`] older ones, still accepted until they expire: the peer may
//! go on sending with one of them for a moment after this node moved on
//! (both nodes rekeying at once, a keepalive still in flight), and none of
//! those datagrams may be lost.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::aead::{AeadKey, Cipher};
use super::replay::ReplayWindow;
use super::wire::{DataHeader, DATA_HEADER_LEN, TAG_LEN};
use crate::overlay::DropReason;

/// When sessions are renewed and when an old one is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RekeyPolicy {
    /// The initiator of a session starts a new handshake after this long
    /// (WireGuard's REKEY_AFTER_TIME is 120 s).
    pub after: Duration,
    /// ... or after sending this many datagrams with it.
    pub after_messages: u64,
}

impl RekeyPolicy {
    pub const DEFAULT_AFTER: Duration = Duration::from_secs(120);
    /// WireGuard's REKEY_AFTER_MESSAGES.
    pub const DEFAULT_AFTER_MESSAGES: u64 = 1 << 60;
    /// No key ever sends more than this (WireGuard's REJECT_AFTER_MESSAGES):
    /// far below where a 64-bit counter could wrap.
    pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

    /// A keypair is refused, both ways, this long after it was made: three
    /// rekey intervals (WireGuard: 180 s for 120 s), so a rekey that fails
    /// for a while still has time, and a session never lives unrenewed.
    pub fn reject_after(&self) -> Duration {
        self.after * 3
    }
}

impl Default for RekeyPolicy {
    fn default() -> Self {
        RekeyPolicy {
            after: Self::DEFAULT_AFTER,
            after_messages: Self::DEFAULT_AFTER_MESSAGES,
        }
    }
}

/// The keys of one session with one peer, both directions.
#[derive(Debug)]
pub struct Keypair {
    pub peer: Ipv4Addr,
    /// Index the peer puts in datagrams for us.
    pub local_index: u32,
    /// Index we put in datagrams for the peer.
    pub remote_index: u32,
    send: AeadKey,
    recv: AeadKey,
    send_counter: AtomicU64,
    replay: Mutex<ReplayWindow>,
    pub created: Instant,
    /// This node started the handshake.
    pub initiator: bool,
    /// A datagram arrived on it (for a responder's keypair: the initiator
    /// has it, so it may be sent with).
    confirmed: AtomicBool,
    pub rx_datagrams: AtomicU64,
}

/// Why a sealed datagram was refused: each a [`DropReason`].
pub type OpenError = DropReason;

impl Keypair {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer: Ipv4Addr,
        local_index: u32,
        remote_index: u32,
        cipher: Cipher,
        send: &[u8; 32],
        recv: &[u8; 32],
        initiator: bool,
        created: Instant,
    ) -> Keypair {
        Keypair {
            peer,
            local_index,
            remote_index,
            send: AeadKey::new(cipher, send),
            recv: AeadKey::new(cipher, recv),
            send_counter: AtomicU64::new(0),
            replay: Mutex::new(ReplayWindow::default()),
            created,
            initiator,
            confirmed: AtomicBool::new(initiator),
            rx_datagrams: AtomicU64::new(0),
        }
    }

    pub fn cipher(&self) -> Cipher {
        self.send.cipher
    }

    /// Datagrams sent with it so far.
    pub fn sent(&self) -> u64 {
        self.send_counter.load(Relaxed)
    }

    pub fn confirmed(&self) -> bool {
        self.confirmed.load(Relaxed)
    }

    /// Seals a datagram laid out as `[data header (16) | plaintext | room
    /// for the tag (16)]`: writes the header with the next counter,
    /// encrypts the plaintext in place and writes the tag. `false` (and
    /// nothing sealed) when the key has sent all it may.
    pub fn seal(&self, d: &mut [u8]) -> bool {
        let counter = self.send_counter.fetch_add(1, Relaxed);
        if counter >= RekeyPolicy::REJECT_AFTER_MESSAGES || d.len() < DATA_HEADER_LEN + TAG_LEN {
            return false;
        }
        let (hdr, rest) = d.split_at_mut(DATA_HEADER_LEN);
        DataHeader {
            receiver: self.remote_index,
            counter,
        }
        .write(hdr);
        let body = rest.len() - TAG_LEN;
        let (body, tag) = rest.split_at_mut(body);
        tag.copy_from_slice(&self.send.seal(counter, hdr, body));
        true
    }

    /// Opens a sealed datagram in place; on success the plaintext is
    /// `d[range]`. The counter is checked against the window only after
    /// the datagram authenticated.
    pub fn open(&self, h: DataHeader, d: &mut [u8]) -> Result<Range<usize>, OpenError> {
        let (hdr, rest) = d.split_at_mut(DATA_HEADER_LEN);
        if !self.recv.open(h.counter, hdr, rest) {
            return Err(DropReason::BadSeal);
        }
        let fresh = self
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .accept(h.counter);
        if !fresh {
            return Err(DropReason::Replayed);
        }
        if !self.confirmed.load(Relaxed) {
            self.confirmed.store(true, Relaxed);
        }
        self.rx_datagrams.fetch_add(1, Relaxed);
        Ok(DATA_HEADER_LEN..d.len() - TAG_LEN)
    }

    /// Too old, or used up, to send or receive with.
    pub fn expired(&self, policy: &RekeyPolicy, now: Instant) -> bool {
        now.saturating_duration_since(self.created) >= policy.reject_after()
            || self.sent() >= RekeyPolicy::REJECT_AFTER_MESSAGES
    }
}

/// Most older keypairs a peer keeps for receiving.
pub const RETIRED: usize = 3;

/// The keypairs of one peer.
#[derive(Debug, Default, Clone)]
pub struct PeerKeys {
    pub current: Option<Arc<Keypair>>,
    pub next: Option<Arc<Keypair>>,
    /// Older keypairs, newest first: received on, never sent with.
    pub retired: Vec<Arc<Keypair>>,
}

impl PeerKeys {
    pub fn all(&self) -> impl Iterator<Item = &Arc<Keypair>> {
        [&self.current, &self.next]
            .into_iter()
            .flatten()
            .chain(&self.retired)
    }

    /// Makes `k` current; the one it replaces is retired.
    pub fn promote(&mut self, k: Arc<Keypair>) {
        if let Some(old) = self.current.replace(k) {
            self.retired.insert(0, old);
            self.retired.truncate(RETIRED);
        }
    }

    /// The newest retired keypair.
    pub fn previous(&self) -> Option<&Arc<Keypair>> {
        self.retired.first()
    }
}

/// What the lanes use: every peer's keypairs, and every keypair by the
/// index peers address it with.
#[derive(Debug, Default)]
pub struct SessionTable {
    peers: HashMap<Ipv4Addr, PeerKeys>,
    by_index: HashMap<u32, Arc<Keypair>>,
    policy: RekeyPolicy,
}

impl SessionTable {
    pub fn new(peers: HashMap<Ipv4Addr, PeerKeys>, policy: RekeyPolicy) -> SessionTable {
        let by_index = peers
            .values()
            .flat_map(|k| k.all())
            .map(|k| (k.local_index, k.clone()))
            .collect();
        SessionTable {
            peers,
            by_index,
            policy,
        }
    }

    pub fn peer(&self, peer: Ipv4Addr) -> Option<&PeerKeys> {
        self.peers.get(&peer)
    }

    /// The keypair to send to `peer` with: a responder's new one as soon
    /// as the initiator has shown it has it, the current one otherwise;
    /// none when there is no session that is still valid (fail closed).
    pub fn sender(&self, peer: Ipv4Addr, now: Instant) -> Option<&Arc<Keypair>> {
        let k = self.peers.get(&peer)?;
        let pick = match &k.next {
            Some(n) if n.confirmed() => Some(n),
            _ => k.current.as_ref(),
        }?;
        (!pick.expired(&self.policy, now)).then_some(pick)
    }

    /// Opens a sealed datagram from `src` in place: its session must be
    /// one of `src`'s, valid, and the datagram authentic and fresh.
    pub fn open(
        &self,
        src: Ipv4Addr,
        d: &mut [u8],
        now: Instant,
    ) -> Result<Range<usize>, OpenError> {
        let h = DataHeader::parse(d).ok_or(DropReason::Malformed)?;
        let k = self
            .by_index
            .get(&h.receiver)
            .filter(|k| k.peer == src && !k.expired(&self.policy, now))
            .ok_or(DropReason::UnknownSession)?;
        k.open(h, d)
    }
}

/// Counters of the key manager.
#[derive(Debug, Default)]
pub struct CryptoStats {
    pub initiations_sent: AtomicU64,
    pub responses_sent: AtomicU64,
    /// Sessions made, as initiator or responder.
    pub sessions_established: AtomicU64,
    /// Handshake messages refused: malformed, an unknown or changed key,
    /// no pending handshake, a replayed or stale initiation.
    pub handshakes_refused: AtomicU64,
    /// Handshake messages dropped before the manager saw them: its queue
    /// was full or the sender over its rate.
    pub handshakes_dropped: AtomicU64,
}

/// A serialisable copy of [`CryptoStats`].
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CryptoCounters {
    pub initiations_sent: u64,
    pub responses_sent: u64,
    pub sessions_established: u64,
    pub handshakes_refused: u64,
    pub handshakes_dropped: u64,
}

impl CryptoStats {
    pub fn snapshot(&self) -> CryptoCounters {
        CryptoCounters {
            initiations_sent: self.initiations_sent.load(Relaxed),
            responses_sent: self.responses_sent.load(Relaxed),
            sessions_established: self.sessions_established.load(Relaxed),
            handshakes_refused: self.handshakes_refused.load(Relaxed),
            handshakes_dropped: self.handshakes_dropped.load(Relaxed),
        }
    }
}

/// How many handshake messages wait for the manager at most.
pub const INBOX: usize = 256;

/// A handshake message from the underlay, for the manager.
#[derive(Debug)]
pub struct Inbound {
    pub src: Ipv4Addr,
    pub msg: Vec<u8>,
}

/// The encryption state the lanes and the key manager share: one per
/// daemon, handed to every table snapshot.
#[derive(Debug)]
pub struct Crypto {
    pub sessions: arc_swap::ArcSwap<SessionTable>,
    pub stats: CryptoStats,
    inbox: std::sync::mpsc::SyncSender<Inbound>,
    /// Taken by the one manager that runs.
    pub(crate) outbox: Mutex<Option<std::sync::mpsc::Receiver<Inbound>>>,
}

impl Default for Crypto {
    fn default() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(INBOX);
        Crypto {
            sessions: arc_swap::ArcSwap::from_pointee(SessionTable::default()),
            stats: CryptoStats::default(),
            inbox: tx,
            outbox: Mutex::new(Some(rx)),
        }
    }
}

impl Crypto {
    /// Queues a handshake message for the manager (dropped, and counted,
    /// when the queue is full: a flood of handshakes costs the lanes a
    /// copy each and no more).
    pub fn handshake_in(&self, src: Ipv4Addr, msg: &[u8]) {
        if self
            .inbox
            .try_send(Inbound {
                src,
                msg: msg.to_vec(),
            })
            .is_err()
        {
            self.stats.handshakes_dropped.fetch_add(1, Relaxed);
        }
    }

    /// The manager's end of the queue (once).
    pub fn take_inbox(&self) -> Option<std::sync::mpsc::Receiver<Inbound>> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(now: Instant) -> (Arc<Keypair>, Arc<Keypair>) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let ip = |n| Ipv4Addr::new(198, 18, 0, n);
        let i = Keypair::new(ip(2), 10, 20, Cipher::Aes256Gcm, &a, &b, true, now);
        let r = Keypair::new(ip(1), 20, 10, Cipher::Aes256Gcm, &b, &a, false, now);
        (Arc::new(i), Arc::new(r))
    }

    #[test]
    fn sealed_datagrams_open_once_on_the_other_side() {
        let now = Instant::now();
        let (i, r) = pair(now);
        let table = SessionTable::new(
            HashMap::from([(
                r.peer,
                PeerKeys {
                    current: None,
                    next: Some(r.clone()),
                    retired: Vec::new(),
                },
            )]),
            RekeyPolicy::default(),
        );
        // The responder's keypair is not sent with before it is confirmed.
        assert!(table.sender(r.peer, now).is_none());
        let mut d = [vec![0u8; 16], b"a frame".to_vec(), vec![0u8; 16]].concat();
        assert!(i.seal(&mut d));
        assert!(!d.windows(7).any(|w| w == b"a frame"));
        let captured = d.clone();
        let src = r.peer;
        // From the wrong source: refused before any work.
        assert_eq!(
            table.open(i.peer, &mut d.clone(), now),
            Err(DropReason::UnknownSession)
        );
        let got = table.open(src, &mut d, now).unwrap();
        assert_eq!(&d[got], b"a frame");
        assert!(r.confirmed());
        assert!(
            table.sender(r.peer, now).is_some(),
            "confirmed: sent with now"
        );
        assert_eq!(
            table.open(src, &mut captured.clone(), now),
            Err(DropReason::Replayed)
        );
        let mut flipped = captured;
        flipped[20] ^= 0x10;
        assert_eq!(table.open(src, &mut flipped, now), Err(DropReason::BadSeal));
        // Past its lifetime a keypair is refused both ways.
        let late = now + RekeyPolicy::default().reject_after();
        let mut d = [vec![0u8; 16], b"late".to_vec(), vec![0u8; 16]].concat();
        assert!(i.seal(&mut d));
        assert_eq!(
            table.open(src, &mut d, late),
            Err(DropReason::UnknownSession)
        );
        assert!(table.sender(r.peer, late).is_none());
    }
}
