//! The relay's end of the tunnel: authenticates nodes (link token once, then
//! their pinned key) and delivers each account's spool to its node,
//! at-least-once, deleting a message only when the node acknowledges that it
//! stored it durably.

mod session;

pub use session::{serve, TunnelContext};

use omb_shared::transport::SideStreams;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

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
}

/// A registered session's handles.
pub struct Registration {
    pub generation: u64,
    pub wake: Arc<Notify>,
    pub stop: Arc<Notify>,
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
                },
            );
        }
        Registration {
            generation,
            wake,
            stop,
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
