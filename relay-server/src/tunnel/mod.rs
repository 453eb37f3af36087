//! The relay's end of the tunnel: authenticates nodes (link token once, then
//! their pinned key) and delivers each account's spool to its node,
//! at-least-once, deleting a message only when the node acknowledges that it
//! stored it durably.

mod session;

pub use session::{serve, TunnelContext};

use crate::store::SpoolEntry;
use omb_shared::transport::SideStreams;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// Messages up to this size are handed to a connected node's session in
/// memory, right after their spool commit; larger ones only wake it, and it
/// reads them from the spool.
const OFFER_MAX_BYTES: usize = 256 * 1024;
/// Offers waiting for a session at most; beyond, it is woken to read the spool.
const OFFER_QUEUE: usize = 256;

/// Wakes the tunnel session of an account when new mail is spooled for it,
/// makes a new session of a node replace its older one, and lends the live
/// connection of a node to SNI passthrough.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<HashMap<String, Slot>>,
}

struct Slot {
    generation: u64,
    wake: Arc<Notify>,
    stop: Arc<Notify>,
    side: Arc<dyn SideStreams>,
    offers: mpsc::Sender<Arc<SpoolEntry>>,
}

/// A registered session's handles.
pub struct Registration {
    pub generation: u64,
    pub wake: Arc<Notify>,
    pub stop: Arc<Notify>,
    /// Newly spooled (committed) messages, handed over in memory.
    pub offers: mpsc::Receiver<Arc<SpoolEntry>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// New mail for `handle`: wake its session, if it has one here.
    pub fn notify(&self, handle: &str) {
        if let Ok(map) = self.inner.lock() {
            if let Some(slot) = map.get(handle) {
                slot.wake.notify_one();
            }
        }
    }

    /// A message for `handle` was durably spooled: hand it to the session of
    /// its node, if it has one here, so it is sent without a spool read. The
    /// spool stays the truth: an offer that does not fit only wakes the
    /// session, which then reads the spool.
    pub fn offer(&self, entry: Arc<SpoolEntry>) {
        if let Ok(map) = self.inner.lock() {
            if let Some(slot) = map.get(&entry.handle) {
                if entry.data.len() > OFFER_MAX_BYTES || slot.offers.try_send(entry).is_err() {
                    slot.wake.notify_one();
                }
            }
        }
    }

    /// The side streams of `handle`'s node connection, if it has a session here.
    pub fn side_streams(&self, handle: &str) -> Option<Arc<dyn SideStreams>> {
        let map = self.inner.lock().ok()?;
        map.get(handle).map(|slot| slot.side.clone())
    }

    /// Registers a session for `handle` on a connection whose side streams are
    /// `side`, stopping any older one.
    pub fn register(&self, handle: &str, side: Arc<dyn SideStreams>) -> Registration {
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(Notify::new());
        let (offer_tx, offers) = mpsc::channel(OFFER_QUEUE);
        let mut generation = 1;
        if let Ok(mut map) = self.inner.lock() {
            if let Some(old) = map.get(handle) {
                old.stop.notify_one();
                generation = old.generation + 1;
            }
            map.insert(
                handle.to_string(),
                Slot {
                    generation,
                    wake: wake.clone(),
                    stop: stop.clone(),
                    side,
                    offers: offer_tx,
                },
            );
        }
        Registration {
            generation,
            wake,
            stop,
            offers,
        }
    }

    /// Removes a session, unless a newer one replaced it already.
    pub fn unregister(&self, handle: &str, generation: u64) {
        if let Ok(mut map) = self.inner.lock() {
            if map.get(handle).is_some_and(|s| s.generation == generation) {
                map.remove(handle);
            }
        }
    }
}
