//! What every listener of `serve` (LMTP, HTTP) needs to survive idle sockets and
//! descriptor exhaustion: a cap on connections that, when reached, closes the
//! longest-idle connection rather than turning the newcomer away (refusing would
//! let a few thousand idle sockets lock everyone out until they time out, while
//! an idle connection costs its client only a reconnect); a backoff for `accept`
//! errors that never spins; and log lines throttled to one a minute.
//!
//! Knows sockets only through its callers: no protocol, no bus, no store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The connections of one listener, so the cap can be kept and the longest-idle one found.
pub struct Seats {
    cap: usize,
    epoch: Instant,
    table: Mutex<(u64, HashMap<u64, Arc<Seat>>)>,
}

/// One connection's place: when bytes last moved, how many requests or transfers are in
/// progress, and how it is told to make room.
pub struct Seat {
    id: u64,
    epoch: Instant,
    last: AtomicU64,
    busy: AtomicUsize,
    evict: Notify,
}

/// How a new connection was let in.
pub enum Admission {
    /// Below the cap.
    Free(Seated),
    /// At the cap; the longest-idle connection was told to close.
    Evicted(Seated),
    /// At the cap with every connection busy: the newcomer is to be turned away.
    Full,
}

impl Seats {
    /// Seats for at most `cap` connections (at least one).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Seats { cap: cap.max(1), epoch: Instant::now(), table: Mutex::new((0, HashMap::new())) })
    }

    /// Seats a new connection, closing the longest-idle one at the cap (ties go to the older).
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut guard = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (next, table) = &mut *guard;
        let mut evicted = false;
        if table.len() >= self.cap {
            let victim = table
                .values()
                .filter(|s| s.busy.load(Ordering::Relaxed) == 0)
                .min_by_key(|s| (s.last.load(Ordering::Relaxed), s.id))
                .cloned();
            let Some(victim) = victim else { return Admission::Full };
            table.remove(&victim.id);
            victim.evict.notify_one();
            evicted = true;
        }
        *next += 1;
        let seat =
            Arc::new(Seat { id: *next, epoch: self.epoch, last: AtomicU64::new(0), busy: AtomicUsize::new(0), evict: Notify::new() });
        seat.touch();
        table.insert(seat.id, seat.clone());
        let seated = Seated { seats: self.clone(), seat };
        if evicted { Admission::Evicted(seated) } else { Admission::Free(seated) }
    }

    /// Connections seated now.
    pub fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.len()
    }

    /// Whether no connection is seated.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Seat {
    /// Notes that bytes moved now: the connection is not idle.
    pub fn touch(&self) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks a request or transfer in progress until the guard is dropped; a busy connection
    /// is never closed to make room.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves when this connection is told to close to make room for a new one.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// A request or transfer in progress; the connection is idle again (and just active) when dropped.
pub struct Busy(Arc<Seat>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's seat, given back when the connection ends.
pub struct Seated {
    seats: Arc<Seats>,
    /// The seat itself, for the connection to touch, mark busy and watch for eviction.
    pub seat: Arc<Seat>,
}

impl Drop for Seated {
    fn drop(&mut self) {
        self.seats.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.remove(&self.seat.id);
    }
}

/// A listener's door: seats each accepted connection, closing the longest-idle one at the cap,
/// and says so in the log at most once a minute per kind of event.
pub struct Gate {
    what: &'static str,
    seats: Arc<Seats>,
    evicted: Throttled,
    refused: Throttled,
}

impl Gate {
    /// A gate for the listener named `what` (`LMTP`, `HTTP`) with room for `cap` connections.
    pub fn new(what: &'static str, cap: usize) -> Self {
        Gate { what, seats: Seats::new(cap), evicted: Throttled::default(), refused: Throttled::default() }
    }

    /// Seats the connection from `peer`; `None` when every seated connection is busy (the
    /// caller answers "too many connections" and closes it).
    pub async fn admit(&mut self, peer: std::net::SocketAddr) -> Option<Seated> {
        match self.seats.admit() {
            Admission::Free(seat) => Some(seat),
            Admission::Evicted(seat) => {
                if let Some(count) = self.evicted.hit() {
                    tracing::info!(listener = self.what, %peer, count, max = self.seats.cap, "At the connection cap: closed the longest-idle connections to admit new ones.");
                }
                // In a flood the backlog holds thousands of ready sockets: let the connections
                // already admitted read what they were sent before admitting more, or a real
                // request would be closed as "idle" before its bytes were ever read.
                tokio::task::yield_now().await;
                Some(seat)
            }
            Admission::Full => {
                if let Some(count) = self.refused.hit() {
                    tracing::warn!(listener = self.what, %peer, count, max = self.seats.cap, "Connections refused: too many connections, all busy.");
                }
                None
            }
        }
    }
}

/// The next connection on `listener`; after a failed `accept`, waits out `backoff` and answers
/// `None` (the caller loops), so a listener out of descriptors never spins. Cancel-safe.
pub async fn accept(listener: &tokio::net::TcpListener, backoff: &mut Backoff) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => {
            backoff.succeeded();
            Some(accepted)
        }
        Err(error) => {
            tokio::time::sleep(backoff.failed(&error)).await;
            None
        }
    }
}

/// Backs off while `accept` fails (out of descriptors, say): from 10 ms doubling to 1 s,
/// logged once when a burst of failures begins and once when it ends.
pub struct Backoff {
    what: &'static str,
    failures: u32,
    since: Option<Instant>,
}

impl Backoff {
    /// A backoff for the listener named `what` (`LMTP`, `HTTP`) in its log lines.
    pub fn new(what: &'static str) -> Self {
        Backoff { what, failures: 0, since: None }
    }

    /// How long to wait after `error` before accepting again.
    pub fn failed(&mut self, error: &std::io::Error) -> Duration {
        use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
        // One connection's trouble, not the listener's.
        if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
            return Duration::ZERO;
        }
        if self.failures == 0 {
            tracing::warn!(listener = self.what, %error, "Accept failed; backing off until it works again.");
            self.since = Some(Instant::now());
        }
        self.failures = self.failures.saturating_add(1);
        Duration::from_millis(10 << self.failures.min(8).saturating_sub(1)).min(Duration::from_secs(1))
    }

    /// Notes an accept that worked, ending a burst of failures.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            let secs = self.since.map_or(0.0, |s| s.elapsed().as_secs_f64());
            tracing::info!(listener = self.what, failures = self.failures, secs, "Accept works again.");
            self.failures = 0;
            self.since = None;
        }
    }
}

/// Counts events and says when to log them: the first at once, then at most once a minute.
#[derive(Default)]
pub struct Throttled {
    count: u64,
    last: Option<Instant>,
}

impl Throttled {
    /// Counts one event; `Some(count since the last log line)` when it is time to log.
    pub fn hit(&mut self) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|l| l.elapsed() < Duration::from_secs(60)) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_idle_connection_makes_room_and_busy_ones_never_do() {
        let seats = Seats::new(2);
        let Admission::Free(a) = seats.admit() else { panic!("below the cap") };
        let Admission::Free(b) = seats.admit() else { panic!("below the cap") };
        let busy = b.seat.busy();
        // At the cap: `a` is idle, `b` busy; `a` goes, whatever their times.
        let Admission::Evicted(c) = seats.admit() else { panic!("a makes room") };
        assert_eq!(seats.len(), 2);
        drop(a);
        assert_eq!(seats.len(), 2, "an evicted seat is already gone from the table");
        let _c_busy = c.seat.busy();
        assert!(matches!(seats.admit(), Admission::Full), "every connection is busy");
        drop(busy);
        assert!(matches!(seats.admit(), Admission::Evicted(_)), "b is idle again");
    }

    #[test]
    fn backoff_grows_to_a_second_and_resets() {
        let mut b = Backoff::new("test");
        let err = std::io::Error::other("EMFILE");
        let waits: Vec<Duration> = (0..10).map(|_| b.failed(&err)).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(1));
        b.succeeded();
        assert_eq!(b.failed(&err), Duration::from_millis(10));
        assert_eq!(b.failed(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)), Duration::ZERO);
    }

    #[test]
    fn throttled_logs_the_first_then_counts() {
        let mut t = Throttled::default();
        assert_eq!(t.hit(), Some(1));
        assert_eq!(t.hit(), None);
        assert_eq!(t.hit(), None);
    }
}
