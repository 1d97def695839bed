//! Who an inbound request waits for, and how long it may take: a cap on streams per IP address
//! (one host cannot hold every slot, whatever peer ids it makes up), slots (a few per peer,
//! handed out in turn among the peers that wait, so one peer cannot hold them all), the budget
//! of request body bytes held in memory at once, and the rate a body must arrive at.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::{Instant, Sleep};

/// Inbound streams (waiting or served) per IP address.
pub(crate) struct IpStreams {
    max: Option<usize>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One stream counted against its IP address until dropped.
pub(crate) struct IpStream {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for IpStream {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl IpStreams {
    pub fn new(max: Option<usize>) -> IpStreams {
        IpStreams {
            max,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts a stream from `ip`; `Err` when that address has as many as it may. Streams of
    /// unknown origin, or with no cap, are not counted.
    pub fn enter(&self, ip: Option<IpAddr>) -> Result<Option<IpStream>, ()> {
        let (Some(max), Some(ip)) = (self.max, ip) else {
            return Ok(None);
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= max {
            return Err(());
        }
        *count += 1;
        Ok(Some(IpStream {
            open: self.open.clone(),
            ip,
        }))
    }
}

/// Request slots: at most `total` at once, at most `per_peer` of them for one peer. A peer
/// whose slots are all taken waits for its own (at most `waiting_per_peer` streams; more are
/// refused at once), never holding one of another peer's; when every slot is taken, a freed one
/// goes to the next peer in turn among those waiting, not to the peer that asked first. So a
/// peer that asks for many waits behind itself, and a peer that asks for one is served as soon
/// as any request ends.
pub(crate) struct Slots {
    /// Itself, for the slots it hands out from `release` (which only has `&self`).
    me: Weak<Slots>,
    state: Mutex<SlotState>,
    total: usize,
    per_peer: usize,
    waiting_per_peer: usize,
}

#[derive(Default)]
struct SlotState {
    running: usize,
    peers: HashMap<PeerId, PeerSlots>,
    /// Peers with a waiting stream and a free slot of their own, in turn order.
    turn: VecDeque<PeerId>,
}

#[derive(Default)]
struct PeerSlots {
    running: usize,
    waiting: VecDeque<oneshot::Sender<Slot>>,
}

/// A slot held by one request; dropping it hands it on.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    peer: PeerId,
    /// False for a slot taken back before anyone held it: its drop releases nothing.
    held: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.slots.release(self.peer);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// The peer already has as many streams waiting as it may.
    TooManyWaiting,
    /// No slot came free in time.
    TimedOut,
}

impl Slots {
    pub fn new(total: usize, per_peer: usize, waiting_per_peer: usize) -> Arc<Slots> {
        Arc::new_cyclic(|me| Slots {
            me: me.clone(),
            state: Mutex::new(SlotState::default()),
            total: total.max(1),
            per_peer: per_peer.max(1),
            waiting_per_peer,
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Nothing in here panics while holding the lock; a poisoned state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for one request of `peer`, waiting at most `wait` for it.
    pub async fn acquire(self: &Arc<Self>, peer: PeerId, wait: Duration) -> Result<Slot, NoSlot> {
        let receiver = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let free = state.running < self.total;
            let entry = state.peers.entry(peer).or_default();
            entry.waiting.retain(|waiter| !waiter.is_closed());
            if free && entry.running < self.per_peer && entry.waiting.is_empty() {
                entry.running += 1;
                state.running += 1;
                return Ok(Slot {
                    slots: self.clone(),
                    peer,
                    held: true,
                });
            }
            if entry.waiting.len() >= self.waiting_per_peer {
                return Err(NoSlot::TooManyWaiting);
            }
            let (sender, receiver) = oneshot::channel();
            entry.waiting.push_back(sender);
            let has_own_slot = entry.running < self.per_peer;
            if has_own_slot && !state.turn.contains(&peer) {
                state.turn.push_back(peer);
            }
            receiver
        };
        match tokio::time::timeout(wait, receiver).await {
            Ok(Ok(slot)) => Ok(slot),
            // The sender went away with the state (never while `self` lives), or time is up:
            // the closed receiver makes the waiter skipped when its turn comes.
            Ok(Err(_)) | Err(_) => Err(NoSlot::TimedOut),
        }
    }

    fn release(&self, peer: PeerId) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.running = state.running.saturating_sub(1);
        if let Some(entry) = state.peers.get_mut(&peer) {
            entry.running = entry.running.saturating_sub(1);
            if !entry.waiting.is_empty() && !state.turn.contains(&peer) {
                state.turn.push_back(peer);
            }
        }
        self.dispatch(state);
        if state
            .peers
            .get(&peer)
            .is_some_and(|e| e.running == 0 && e.waiting.is_empty())
        {
            state.peers.remove(&peer);
        }
    }

    /// Hands free slots to waiting peers in turn. Called with the lock held.
    fn dispatch(&self, state: &mut SlotState) {
        // Some Slot or the server holds the Arc while anyone calls this.
        let Some(me) = self.me.upgrade() else {
            return;
        };
        while state.running < self.total {
            let Some(peer) = state.turn.pop_front() else {
                return;
            };
            let Some(entry) = state.peers.get_mut(&peer) else {
                continue;
            };
            let Some(waiter) = entry.waiting.pop_front() else {
                if entry.running == 0 {
                    state.peers.remove(&peer);
                }
                continue;
            };
            entry.running += 1;
            state.running += 1;
            let granted = Slot {
                slots: me.clone(),
                peer,
                held: true,
            };
            if let Err(mut slot) = waiter.send(granted) {
                // The waiter gave up a moment ago: take the slot back here (`release` would
                // lock again), and give the peer's next waiter its chance.
                slot.held = false;
                entry.running -= 1;
                state.running -= 1;
                if !entry.waiting.is_empty() {
                    state.turn.push_front(peer);
                } else if entry.running == 0 {
                    state.peers.remove(&peer);
                }
                continue;
            }
            if entry.running < self.per_peer && !entry.waiting.is_empty() {
                state.turn.push_back(peer);
            }
        }
    }

    /// How many slots are taken now (for tests).
    #[cfg(test)]
    fn running(&self) -> usize {
        self.lock().running
    }
}

/// The request body bytes held in memory at once: a body over [`crate::config::SMALL_BODY`]
/// reserves its declared length (in KiB) before it is read, and gives it back when its request
/// is answered. The semaphore is fair, so large bodies are taken in the order they came. A
/// request waiting here holds its slot, so only `max_waiting` may wait at once (more are
/// answered 503 at once): large bodies can never take the slots small requests need.
pub(crate) struct BodyBudget {
    permits: Arc<Semaphore>,
    total_kib: usize,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    max_waiting: usize,
}

/// Counts a request waiting for the budget while it lives.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl BodyBudget {
    pub fn new(bytes: usize, max_waiting: usize) -> BodyBudget {
        let total_kib = (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            permits: Arc::new(Semaphore::new(total_kib)),
            total_kib,
            waiting: Arc::default(),
            max_waiting,
        }
    }

    /// Room for a body of `len` bytes, waiting at most `wait`; `None` when none came in time,
    /// or when too many wait already. A body larger than the whole budget waits for all of it.
    pub async fn reserve(&self, len: usize, wait: Duration) -> Option<OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering;
        let kib = len.div_ceil(1024).clamp(1, self.total_kib);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        if let Ok(room) = self.permits.clone().try_acquire_many_owned(kib) {
            return Some(room);
        }
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let _waiting = Waiting(self.waiting.clone());
        tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(kib))
            .await
            .ok()?
            .ok()
    }
}

/// A request body that must keep arriving: after `grace` from the head, at least `min_rate`
/// bytes per second on average, else it ends with [`BodyTooSlow`]. A peer that trickles bytes
/// to hold a slot loses it after the grace; an honest slow link has the grace and the rate.
pub(crate) struct PacedBody<B> {
    inner: B,
    started: Instant,
    received: u64,
    grace: Duration,
    min_rate: u64,
    deadline: Pin<Box<Sleep>>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body arrived slower than {0} bytes per second")]
pub struct BodyTooSlow(u64);

impl<B> PacedBody<B> {
    pub fn new(inner: B, grace: Duration, min_rate: u64) -> PacedBody<B> {
        let started = Instant::now();
        PacedBody {
            inner,
            started,
            received: 0,
            grace,
            min_rate: min_rate.max(1),
            deadline: Box::pin(tokio::time::sleep_until(started + grace)),
        }
    }
}

impl<B> Body for PacedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let earned =
                        Duration::from_secs_f64(this.received as f64 / this.min_rate as f64);
                    let deadline = this.started + this.grace + earned;
                    this.deadline.as_mut().reset(deadline);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => return Poll::Ready(other.map(|r| r.map_err(Into::into))),
            Poll::Pending => {}
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTooSlow(this.min_rate).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_peer_waits_behind_itself_and_a_freed_slot_goes_to_the_next_peer_in_turn() {
        let slots = Slots::new(4, 3, 2);
        let (greedy, other) = (PeerId::random(), PeerId::random());
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(slots.acquire(greedy, WAIT).await.unwrap());
        }
        // Its own slots are taken: the greedy peer waits (twice at most), the other does not.
        let mut greedy_waiting: Vec<_> = (0..2)
            .map(|_| {
                let slots = slots.clone();
                tokio::spawn(async move { slots.acquire(greedy, WAIT).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let extra = slots.acquire(greedy, Duration::from_millis(50)).await;
        assert_eq!(extra.err(), Some(NoSlot::TooManyWaiting));
        let first_other = slots.acquire(other, WAIT).await.unwrap();
        assert_eq!(slots.running(), 4);

        // Every slot is taken. The other peer asks after the greedy one is waiting; when one
        // of the greedy peer's requests ends, its own waiter takes it (it is that peer's
        // slot), but when the other peer's ends, the other peer's waiter is next in turn.
        let other_waiting = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(other, WAIT).await })
        };
        tokio::task::yield_now().await;
        drop(first_other);
        let second_other = other_waiting.await.unwrap().unwrap();
        assert_eq!(slots.running(), 4);
        drop(held.pop());
        let next = greedy_waiting.remove(0).await.unwrap().unwrap();
        assert_eq!(slots.running(), 4);

        // A waiter that gave up is skipped; nothing leaks.
        let gave_up = slots
            .acquire(PeerId::random(), Duration::from_millis(20))
            .await;
        assert_eq!(gave_up.err(), Some(NoSlot::TimedOut));
        drop((held, next, second_other));
        let last = greedy_waiting.remove(0).await.unwrap().unwrap();
        drop(last);
        assert_eq!(slots.running(), 0);
        assert!(slots.lock().peers.is_empty());
    }

    #[tokio::test]
    async fn a_trickled_body_ends_after_the_grace_and_a_steady_one_does_not() {
        use http_body_util::{BodyExt, StreamBody};

        let grace = Duration::from_millis(300);
        let chunks = |every: Duration, count: usize| {
            StreamBody::new(Box::pin(futures::stream::unfold(0, move |n| async move {
                if n == count {
                    return None;
                }
                tokio::time::sleep(every).await;
                let chunk = Frame::data(Bytes::from(vec![b'x'; 1024]));
                Some((Ok::<_, std::io::Error>(chunk), n + 1))
            })))
        };
        // 1 KiB every 100 ms is 10 KiB/s: under a minimum of 64 KiB/s once the grace is over.
        let trickled = PacedBody::new(chunks(Duration::from_millis(100), 20), grace, 64 * 1024);
        let started = Instant::now();
        let error = trickled.collect().await.unwrap_err();
        assert!(error.is::<BodyTooSlow>(), "{error}");
        let took = started.elapsed();
        assert!(took >= grace && took < grace * 2, "{took:?}");

        // The same rate with a minimum of 8 KiB/s arrives whole.
        let steady = PacedBody::new(chunks(Duration::from_millis(100), 8), grace, 8 * 1024);
        assert_eq!(steady.collect().await.unwrap().to_bytes().len(), 8 * 1024);
    }

    #[tokio::test]
    async fn large_bodies_wait_for_room_in_the_budget() {
        let budget = BodyBudget::new(1024 * 1024, 1);
        let first = budget.reserve(700 * 1024, WAIT).await.unwrap();
        assert!(
            budget
                .reserve(400 * 1024, Duration::from_millis(50))
                .await
                .is_none()
        );
        // Larger than the whole budget: it waits for all of it. Only one may wait.
        let waiting = tokio::spawn(async move {
            let room = budget.reserve(10 * 1024 * 1024, WAIT).await;
            (room, budget)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        let (room, budget) = waiting.await.unwrap();
        assert!(room.is_some());
        let _held = room;
        let waiting = budget.reserve(1024 * 1024, Duration::from_millis(500));
        let refused = async {
            let started = Instant::now();
            (budget.reserve(1024 * 1024, WAIT).await, started.elapsed())
        };
        let (waited, (refused, took)) = tokio::join!(waiting, refused);
        assert!(waited.is_none(), "no room came in time");
        assert!(
            refused.is_none() && took < Duration::from_millis(100),
            "{took:?}"
        );
    }
}
