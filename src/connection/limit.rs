//! `--max-connections`, and room made at it the way nginx makes it: when
//! every slot is taken and another client connects, the oldest connection
//! with no request in flight is asked to close: one that has not sent a
//! whole request yet first (what a flood of silent sockets is made of),
//! then an idle keep-alive one (a client that has spoken HTTP, and whose
//! next request could race the close). A connection with a
//! request or an upgraded session in flight is never closed for room, so a
//! flood of silent or slow sockets costs real clients nothing but the
//! sockets ahead of them in the backlog.
//!
//! The registry of connections is locked when a connection opens, closes
//! or is shed, never per request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Activity;
use crate::telemetry::ConnectionCounters;

/// How long a shed connection gets to give its slot back before another
/// is shed.
const SHED_WAIT: Duration = Duration::from_millis(50);

/// How often connections are looked at again while every one is busy.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

/// The first-request deadline of a connection accepted while connections
/// are being shed, when `--first-request-timeout` is longer.
pub const PRESSED_FIRST_REQUEST: Duration = Duration::from_secs(5);

/// `--max-connections`: the slots, how many there are, and the
/// connections holding them.
#[derive(Debug, Clone)]
pub struct Limit {
    slots: Arc<Semaphore>,
    max: usize,
    open: Arc<Open>,
}

/// The client connections served now, oldest first.
#[derive(Debug, Default)]
struct Open {
    next: AtomicU64,
    connections: Mutex<BTreeMap<u64, Entry>>,
    /// Set from the first connection shed until the limit is well clear.
    pressed: AtomicBool,
    counters: ConnectionCounters,
}

#[derive(Debug)]
struct Entry {
    activity: Arc<Activity>,
    shed: CancellationToken,
}

/// A connection's place in the registry, for as long as it is served.
#[derive(Debug)]
pub struct Registered {
    id: u64,
    open: Arc<Open>,
    shed: CancellationToken,
}

impl Registered {
    /// Cancelled when the connection is asked to close: to make room, or
    /// by its parent token (shutdown). One token for both, so a
    /// connection's task polls one future for them on every wake.
    pub fn closing(&self) -> &CancellationToken {
        &self.shed
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut connections) = self.open.connections.lock() {
            connections.remove(&self.id);
        }
    }
}

impl Limit {
    /// `max` slots; connections shed are counted in `counters`.
    pub fn new(max: usize, counters: ConnectionCounters) -> Self {
        Limit {
            slots: Arc::new(Semaphore::new(max)),
            max,
            open: Arc::new(Open {
                counters,
                ..Open::default()
            }),
        }
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots taken now.
    pub fn taken(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Whether every slot is taken.
    pub fn is_full(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// Whether connections are being shed to make room.
    pub fn is_pressed(&self) -> bool {
        self.open.pressed.load(Ordering::Acquire)
    }

    /// A slot, if one is free now.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Registers a connection being served, with its activity; it is
    /// asked to close when `parent` is cancelled too.
    pub fn register(&self, activity: Arc<Activity>, parent: &CancellationToken) -> Registered {
        let id = self.open.next.fetch_add(1, Ordering::Relaxed);
        let shed = parent.child_token();
        if let Ok(mut connections) = self.open.connections.lock() {
            let entry = Entry {
                activity,
                shed: shed.clone(),
            };
            connections.insert(id, entry);
        }
        Registered {
            id,
            open: self.open.clone(),
            shed,
        }
    }

    /// Waits until a slot is free, shedding idle connections, oldest
    /// first, while there are any; while every one is busy, waits for one
    /// to close or to become idle.
    pub async fn make_room(&self) {
        let mut said_busy = false;
        while self.is_full() {
            let Some(idle) = self.shed_oldest_idle() else {
                if !std::mem::replace(&mut said_busy, true) {
                    tracing::warn!(
                        max = self.max,
                        "at --max-connections with every connection busy: new clients wait until one closes or is idle"
                    );
                }
                let _ = tokio::time::timeout(BUSY_RECHECK, self.slots.acquire()).await;
                continue;
            };
            self.open.counters.shed(idle);
            if !self.open.pressed.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    max = self.max,
                    "at --max-connections: closing connections with no request in flight, oldest first, to make room"
                );
            }
            let _ = tokio::time::timeout(SHED_WAIT, self.slots.acquire()).await;
        }
    }

    /// Ends an episode of shedding once half the slots are free again.
    pub fn relieve(&self) {
        if self.is_pressed() && self.taken() <= self.max / 2 {
            self.open.pressed.store(false, Ordering::Release);
            tracing::info!("connections are well under --max-connections again");
        }
    }

    /// Asks the oldest connection that has never sent a request to close,
    /// or failing one, the oldest with no request in flight; `Some(true)`
    /// if it had never sent a request, `Some(false)` if it was idle after
    /// one, `None` if every connection is busy.
    fn shed_oldest_idle(&self) -> Option<bool> {
        let connections = self.open.connections.lock().ok()?;
        let open = || connections.values().filter(|e| !e.shed.is_cancelled());
        let entry = open()
            .find(|e| e.activity.never_asked())
            .or_else(|| open().find(|e| e.activity.is_idle()))?;
        entry.shed.cancel();
        Some(entry.activity.never_asked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_idle_connection_is_shed_and_a_busy_one_never() {
        let limit = Limit::new(3, ConnectionCounters::default());
        let slots: Vec<_> = (0..3).map(|_| limit.try_take().unwrap()).collect();
        let busy = Arc::new(Activity::default());
        let _in_flight = busy.begin();
        let shutdown = CancellationToken::new();
        let busy = limit.register(busy, &shutdown);
        let oldest_idle = limit.register(Arc::new(Activity::default()), &shutdown);
        let newest_idle = limit.register(Arc::new(Activity::default()), &shutdown);
        assert!(limit.is_full());

        assert_eq!(limit.shed_oldest_idle(), Some(true));
        assert!(oldest_idle.closing().is_cancelled());
        assert!(!busy.closing().is_cancelled() && !newest_idle.closing().is_cancelled());

        // Its slot comes back when it closes: room is made without another.
        let mut slots = slots.into_iter();
        drop((oldest_idle, slots.next()));
        limit.make_room().await;
        assert!(!newest_idle.closing().is_cancelled());
        let _again = limit.try_take().unwrap();

        assert_eq!(limit.shed_oldest_idle(), Some(true));
        assert!(newest_idle.closing().is_cancelled());
        assert_eq!(limit.shed_oldest_idle(), None, "the busy one stays");
        assert!(!busy.closing().is_cancelled());
    }

    #[tokio::test]
    async fn a_socket_that_never_asked_goes_before_an_older_idle_keep_alive_one() {
        let limit = Limit::new(2, ConnectionCounters::default());
        let shutdown = CancellationToken::new();
        let served = Arc::new(Activity::default());
        drop(served.begin());
        let keep_alive = limit.register(served, &shutdown);
        let silent = limit.register(Arc::new(Activity::default()), &shutdown);
        assert_eq!(limit.shed_oldest_idle(), Some(true));
        assert!(silent.closing().is_cancelled() && !keep_alive.closing().is_cancelled());
        assert_eq!(limit.shed_oldest_idle(), Some(false));
        assert!(keep_alive.closing().is_cancelled());
    }
}
