//! The key manager's thread: it owns the [`Manager`] of the daemon's
//! [`Crypto`], feeds it the handshake messages the lanes queue, ticks its
//! timers and sends what it hands back on the underlay. Handshakes are a
//! few per peer and rekey interval, so one thread off the packet path
//! does them all; the lanes only seal and open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::worker::Shared;
use crate::crypto::manager::Outbound;
use crate::crypto::session::Inbound;
use crate::crypto::{Crypto, Manager};

/// How often the timers run when no handshake message comes.
const TICK: Duration = Duration::from_millis(50);

pub(super) fn key_loop(sh: Arc<Shared>, stop: Arc<AtomicBool>) {
    let mut running: Option<(Arc<Crypto>, Receiver<Inbound>, Manager)> = None;
    let mut out: Vec<Outbound> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let tables = sh.tables.load_full();
        let fresh = running
            .as_ref()
            .is_none_or(|(c, _, _)| !Arc::ptr_eq(c, &tables.crypto));
        if fresh {
            // A snapshot with another `Crypto` (the first real one after a
            // placeholder): a manager of its own, if nobody took its queue.
            match tables.crypto.take_inbox() {
                Some(rx) => {
                    let m = Manager::new(tables.crypto.clone());
                    running = Some((tables.crypto.clone(), rx, m));
                }
                None if running.is_none() => {
                    std::thread::sleep(TICK);
                    continue;
                }
                None => {}
            }
        }
        let Some((_, rx, m)) = running.as_mut() else {
            continue;
        };
        m.configure(&tables.keys);
        match rx.recv_timeout(TICK) {
            Ok(msg) => {
                let _ = m.handshake(msg.src, &msg.msg, Instant::now(), &mut out);
                // What else is queued, bounded by the queue's size.
                while let Ok(msg) = rx.try_recv() {
                    let _ = m.handshake(msg.src, &msg.msg, Instant::now(), &mut out);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        m.tick(Instant::now(), &mut out);
        for o in out.drain(..) {
            if let Err(e) = sh.underlay.send(0, o.peer, &o.msg) {
                tracing::debug!(peer = %o.peer, error = %e, "handshake message not sent");
            }
        }
    }
}
