//! `--max-connections`, and room made at it the way nginx makes it: when
//! every slot is taken and another client connects, the oldest connection
//! with no request in flight is asked to close: one that has not sent a
//! whole request yet first (what a flood of silent sockets is made of),
//! then an idle keep-alive one (a client that has spoken HTTP, and whose
//! next request could race the close). Either must have been quiet for
//! [`QUIET`]: a client that has just connected, or just had an answer, is
//! given the moment it needs to send its request. A connection with a
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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Activity;
use crate::telemetry::ConnectionCounters;

/// How long a shed connection gets to give its slot back before another
/// is shed.
const SHED_WAIT: Duration = Duration::from_millis(50);

/// How often connections are looked at again while every one is busy.
const BUSY_RECHECK: Duration = Duration::from_secs(1);

/// How long a connection must have had no request start or end before it
/// may be closed for room.
const QUIET: Duration = Duration::from_secs(1);

/// How often connections are looked at again while those with nothing in
/// flight are all too recently active to close.
const QUIET_RECHECK: Duration = Duration::from_millis(100);

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
    /// The connection's requests started and ended when last looked at,
    /// and since when they have been that.
    seen: (u64, Instant),
}

/// What one look for a connection to close found.
#[derive(Debug, PartialEq, Eq)]
enum Shed {
    /// One was asked to close: `true` if it had never sent a request.
    Closed(bool),
    /// Those with nothing in flight have all been active within [`QUIET`].
    TooRecent,
    /// Every connection has a request or session in flight.
    AllBusy,
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

    /// Whether connections are being shed to make room.
    pub fn is_pressed(&self) -> bool {
        self.open.pressed.load(Ordering::Acquire)
    }

    /// A slot, if one is free now.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// A slot; when every one is taken, room is made: idle connections
    /// are shed, oldest first, while there are any, and while every one is
    /// busy it waits for one to close or to become idle. A slot freed
    /// meanwhile is kept, so that several waiting callers (the accept loop
    /// and sessions) never hand one back and forth.
    pub async fn take(&self) -> OwnedSemaphorePermit {
        let mut said_busy = false;
        loop {
            if let Some(slot) = self.try_take() {
                return slot;
            }
            let wait = self.make_room(&mut said_busy);
            let freed = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await;
            if let Ok(Ok(slot)) = freed {
                return slot;
            }
        }
    }

    /// Registers a connection being served, with its activity; it is
    /// asked to close when `parent` is cancelled too.
    pub fn register(&self, activity: Arc<Activity>, parent: &CancellationToken) -> Registered {
        let id = self.open.next.fetch_add(1, Ordering::Relaxed);
        let shed = parent.child_token();
        if let Ok(mut connections) = self.open.connections.lock() {
            let entry = Entry {
                seen: (activity.requests_seen(), Instant::now()),
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

    /// Sheds one connection if one may be, and says how long to wait for
    /// a slot before looking again.
    fn make_room(&self, said_busy: &mut bool) -> Duration {
        match self.shed_oldest_idle(Instant::now()) {
            Shed::Closed(never_asked) => {
                self.open.counters.shed(never_asked);
                if !self.open.pressed.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        max = self.max,
                        "at --max-connections: closing connections with no request in flight, oldest first, to make room"
                    );
                }
                SHED_WAIT
            }
            Shed::TooRecent => QUIET_RECHECK,
            Shed::AllBusy => {
                if !std::mem::replace(said_busy, true) {
                    tracing::warn!(
                        max = self.max,
                        "at --max-connections with every connection busy: new clients wait until one closes or is idle"
                    );
                }
                BUSY_RECHECK
            }
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
    /// or failing one, the oldest with no request in flight; either only
    /// once it has been quiet for [`QUIET`] as of `now`.
    fn shed_oldest_idle(&self, now: Instant) -> Shed {
        let Ok(mut connections) = self.open.connections.lock() else {
            return Shed::AllBusy;
        };
        let mut idle = 0;
        let mut oldest_quiet_idle = None;
        for (&id, entry) in connections.iter_mut() {
            if entry.shed.is_cancelled() || !entry.activity.is_idle() {
                continue;
            }
            idle += 1;
            let requests = entry.activity.requests_seen();
            if requests != entry.seen.0 {
                entry.seen = (requests, now);
            }
            if now.duration_since(entry.seen.1) < QUIET {
                continue;
            }
            if entry.activity.never_asked() {
                entry.shed.cancel();
                return Shed::Closed(true);
            }
            oldest_quiet_idle.get_or_insert(id);
        }
        match oldest_quiet_idle.and_then(|id| connections.get(&id)) {
            Some(entry) => {
                entry.shed.cancel();
                Shed::Closed(false)
            }
            None if idle > 0 => Shed::TooRecent,
            None => Shed::AllBusy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shed(limit: &Limit) -> Shed {
        limit.shed_oldest_idle(Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_quiet_idle_connection_is_shed_and_a_busy_one_never() {
        let limit = Limit::new(3, ConnectionCounters::default());
        let shutdown = CancellationToken::new();
        let slots: Vec<_> = (0..3).map(|_| limit.try_take().unwrap()).collect();
        let busy = Arc::new(Activity::default());
        let _in_flight = busy.begin();
        let busy = limit.register(busy, &shutdown);
        let oldest_idle = limit.register(Arc::new(Activity::default()), &shutdown);
        let newest_idle = limit.register(Arc::new(Activity::default()), &shutdown);
        assert_eq!(limit.taken(), 3);

        // Just connected: given the moment they need to send a request.
        assert_eq!(shed(&limit), Shed::TooRecent);
        tokio::time::advance(QUIET).await;
        assert_eq!(shed(&limit), Shed::Closed(true));
        assert!(oldest_idle.closing().is_cancelled());
        assert!(!busy.closing().is_cancelled() && !newest_idle.closing().is_cancelled());

        // Its slot comes back when it closes: room is made without another.
        let mut slots = slots.into_iter();
        drop((oldest_idle, slots.next()));
        let _again = limit.take().await;
        assert!(!newest_idle.closing().is_cancelled());

        assert_eq!(shed(&limit), Shed::Closed(true));
        assert!(newest_idle.closing().is_cancelled());
        assert_eq!(shed(&limit), Shed::AllBusy, "the busy one stays");
        assert!(!busy.closing().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_never_asked_goes_before_an_older_idle_keep_alive_one() {
        let limit = Limit::new(2, ConnectionCounters::default());
        let shutdown = CancellationToken::new();
        let served = Arc::new(Activity::default());
        let keep_alive = limit.register(served.clone(), &shutdown);
        let silent = limit.register(Arc::new(Activity::default()), &shutdown);
        tokio::time::advance(QUIET).await;
        // A request starts and ends on the keep-alive connection: it is
        // recently active, then quiet again.
        drop(served.begin());
        assert_eq!(shed(&limit), Shed::Closed(true));
        assert!(silent.closing().is_cancelled() && !keep_alive.closing().is_cancelled());
        assert_eq!(shed(&limit), Shed::TooRecent);
        tokio::time::advance(QUIET).await;
        assert_eq!(shed(&limit), Shed::Closed(false));
        assert!(keep_alive.closing().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_while_two_wait_goes_to_one_and_nothing_is_shed() {
        let limit = Limit::new(2, ConnectionCounters::default());
        let shutdown = CancellationToken::new();
        let (first, _second) = (limit.try_take().unwrap(), limit.try_take().unwrap());
        let busy = Arc::new(Activity::default());
        let _in_flight = busy.begin();
        let busy = limit.register(busy, &shutdown);
        let waiting = || {
            let limit = limit.clone();
            tokio::spawn(async move { limit.take().await })
        };
        let (a, b) = (waiting(), waiting());
        tokio::time::sleep(BUSY_RECHECK / 2).await;
        drop(first);
        tokio::time::sleep(BUSY_RECHECK * 3).await;
        assert!(a.is_finished() != b.is_finished(), "one slot, one taker");
        assert!(!busy.closing().is_cancelled());
        assert_eq!(limit.taken(), 2);
    }
}
