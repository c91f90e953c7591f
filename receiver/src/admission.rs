//! Admission: what a webhook POST must pass before its body is read, and reading the body
//! within bounds.
//!
//! The webhook path is public and only Meta knows the app secret, so everything a client
//! without it can make the receiver hold is bounded here, before any of it is spent:
//!
//! - **Unsigned requests** never get a body read: [`has_signature_header`] is checked first,
//!   and the 401 closes the connection (hyper does not drain the body).
//! - **Concurrency**: at most `limits.max_in_flight` POSTs at once (503), and at most
//!   `limits.max_in_flight_per_peer` from one client address (429), so one address cannot
//!   take every slot. An IPv6 client counts per /64, the block one host usually gets.
//!   Clients the certificate policy verified (`tls.mode: mutual`, `trusted_proxy`) are Meta
//!   and are not limited per peer: behind an ingress every request has the ingress's address.
//! - **Memory**: the bytes of bodies being read or held are reserved from one budget,
//!   `limits.max_buffered_body_bytes`: a declared `Content-Length` in full before anything is
//!   read, a chunked body as its buffer grows. A request that does not fit gets 503 and
//!   `Retry-After`. The reservation lives as long as the body's buffer does (see
//!   [`Ticket::read_body`]), so the budget counts what is really held.
//! - **Time**: the body has `limits.body_timeout` to arrive, extended by one second for every
//!   `limits.min_body_bytes_per_second` bytes received (a body arriving at least that fast is
//!   never cut), and never beyond `limits.request_timeout`. A stalled body is cut (408) after
//!   `body_timeout`, not after the whole request timeout.
//!
//! The slot guards ([`Ticket`]) are RAII: whatever way a request ends, its slots and bytes
//! return, and a peer with no request in flight leaves no entry behind.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Body;
use metahook_config::Limits;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::verify;

/// Smallest buffer allocated for a body of unknown length (a chunked body), so that a body
/// arriving in many small chunks is not reallocated at each one.
const MIN_CHUNKED_BUFFER: usize = 4096;

/// Whether the request carries a signature header the endpoint would check: the SHA-256 one,
/// or the legacy SHA-1 one where the endpoint accepts it. Without one the body is not read.
pub fn has_signature_header(headers: &HeaderMap, legacy_sha1: bool) -> bool {
    headers.contains_key(verify::SIGNATURE_HEADER)
        || (legacy_sha1 && headers.contains_key(verify::LEGACY_SIGNATURE_HEADER))
}

/// Why a request is refused before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The declared `Content-Length` exceeds `limits.max_body_bytes` (413).
    TooLarge,
    /// `limits.max_in_flight_per_peer` requests from this client are in flight (429).
    PeerLimit,
    /// `limits.max_in_flight` requests are in flight (503).
    InFlight,
    /// The declared body does not fit in `limits.max_buffered_body_bytes` (503).
    BodyBudget,
}

/// Why a body was not read to its end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyRefused {
    /// The body grew past `limits.max_body_bytes` (413).
    #[error("the body exceeds limits.max_body_bytes")]
    TooLarge,
    /// The body did not arrive in time (408).
    #[error("the body did not arrive within its deadline")]
    Timeout,
    /// A chunked body grew past what `limits.max_buffered_body_bytes` has left (503).
    #[error("the body does not fit in limits.max_buffered_body_bytes")]
    BodyBudget,
    /// The connection failed while the body was read (400).
    #[error("cannot read the body: {0}")]
    Read(String),
}

/// The limits of one receiver and what is in use of them, shared by every connection.
#[derive(Debug)]
pub struct Admission {
    in_flight: Semaphore,
    peers: PeerLimit,
    budget: Arc<ByteBudget>,
    max_body_bytes: u64,
    body_timeout: Duration,
    request_timeout: Duration,
    min_body_rate: u64,
}

impl Admission {
    /// The admission of `limits`; `per_peer` is false when every client is verified by its
    /// certificate (then the per-peer limit would only limit Meta, or the ingress).
    pub fn new(limits: &Limits, per_peer: bool) -> Admission {
        Admission {
            in_flight: Semaphore::new(limits.max_in_flight),
            peers: PeerLimit {
                max: per_peer.then_some(limits.max_in_flight_per_peer),
                counts: Mutex::new(HashMap::new()),
            },
            budget: Arc::new(ByteBudget {
                limit: limits.buffered_body_limit(),
                used: AtomicU64::new(0),
            }),
            max_body_bytes: limits.max_body_bytes,
            body_timeout: limits.body_timeout,
            request_timeout: limits.request_timeout,
            min_body_rate: limits.min_body_bytes_per_second.max(1),
            // `max(1)`: validation refuses 0; a rate of 0 would divide by zero below.
        }
    }

    /// Takes the slots and the byte reservation a request from `peer` that declared
    /// `declared` body bytes needs, or says which limit refuses it. Nothing of the body is
    /// read here.
    pub fn admit(&self, peer: IpAddr, declared: Option<u64>) -> Result<Ticket<'_>, Refused> {
        if declared.is_some_and(|len| len > self.max_body_bytes) {
            return Err(Refused::TooLarge);
        }
        let peer = self.peers.enter(peer)?;
        let in_flight = self
            .in_flight
            .try_acquire()
            .map_err(|_| Refused::InFlight)?;
        let reservation =
            Reservation::try_new(&self.budget, declared.unwrap_or(0)).ok_or(Refused::BodyBudget)?;
        Ok(Ticket {
            admission: self,
            _peer: peer,
            _in_flight: in_flight,
            declared,
            reservation: Some(reservation),
        })
    }

    /// Request slots free now (of `limits.max_in_flight`): tests wait on it.
    #[cfg(test)]
    pub(crate) fn free_slots(&self) -> usize {
        self.in_flight.available_permits()
    }

    /// Bytes of bodies reserved now (being read, or read and still held).
    pub fn buffered_bytes(&self) -> u64 {
        self.budget.used.load(Ordering::Relaxed)
    }

    /// `limits.max_buffered_body_bytes`.
    pub fn buffered_limit(&self) -> u64 {
        self.budget.limit
    }

    /// The deadline of a body that started at `started` and has `received` bytes so far.
    fn deadline(&self, started: Instant, received: u64) -> Instant {
        let earned = Duration::from_millis(received.saturating_mul(1000) / self.min_body_rate);
        let by_rate = self.body_timeout.saturating_add(earned);
        started + by_rate.min(self.request_timeout)
    }
}

/// An admitted request: its in-flight slot, its peer's slot and its byte reservation, all
/// returned when it is dropped.
#[derive(Debug)]
pub struct Ticket<'a> {
    admission: &'a Admission,
    _peer: Option<PeerSlot<'a>>,
    _in_flight: SemaphorePermit<'a>,
    declared: Option<u64>,
    /// Taken by [`Ticket::read_body`], which hands it to the body's buffer.
    reservation: Option<Reservation>,
}

impl Ticket<'_> {
    /// Reads the whole body within the time and size limits. The returned buffer owns the
    /// byte reservation: the bytes count against the budget until the last clone of it is
    /// dropped, wherever that happens (after the answer, in another task).
    pub async fn read_body<B>(&mut self, body: B) -> Result<Bytes, BodyRefused>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let admission = self.admission;
        let mut reservation = self
            .reservation
            .take()
            .unwrap_or_else(|| Reservation::empty(&admission.budget));
        let max = usize::try_from(admission.max_body_bytes).unwrap_or(usize::MAX);
        // A declared length is reserved already and bounded by `max`: allocate it once.
        let declared = self
            .declared
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or(0)
            .min(max);
        let mut buffer: Vec<u8> = Vec::with_capacity(declared);
        let started = Instant::now();
        let mut body = std::pin::pin!(body);
        loop {
            let deadline = admission.deadline(started, buffer.len() as u64);
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(BodyRefused::Timeout),
                Ok(None) => break,
                Ok(Some(Err(err))) => return Err(BodyRefused::Read(err.to_string())),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers carry nothing the receiver reads
            };
            let needed = buffer.len().saturating_add(data.len());
            if needed > max {
                return Err(BodyRefused::TooLarge);
            }
            if needed > buffer.capacity() {
                // Chunked (or longer than declared, which hyper refuses anyway): grow by
                // doubling, reserving the new capacity before allocating it.
                let capacity = needed
                    .max(buffer.capacity().saturating_mul(2))
                    .max(MIN_CHUNKED_BUFFER)
                    .min(max);
                if !reservation.grow_to(capacity as u64) {
                    return Err(BodyRefused::BodyBudget);
                }
                buffer.reserve_exact(capacity - buffer.len());
            }
            buffer.extend_from_slice(&data);
        }
        Ok(Bytes::from_owner(Buffered {
            bytes: buffer,
            _reservation: reservation,
        }))
    }
}

/// A body's bytes and their reservation, freed together.
#[derive(Debug)]
struct Buffered {
    bytes: Vec<u8>,
    _reservation: Reservation,
}

impl AsRef<[u8]> for Buffered {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Requests in flight per client address.
#[derive(Debug)]
struct PeerLimit {
    /// `None`: not limited per peer.
    max: Option<usize>,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PeerLimit {
    fn enter(&self, peer: IpAddr) -> Result<Option<PeerSlot<'_>>, Refused> {
        let Some(max) = self.max else {
            return Ok(None);
        };
        let key = peer_key(peer);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return Err(Refused::PeerLimit);
        }
        *count += 1;
        Ok(Some(PeerSlot { limit: self, key }))
    }

    #[cfg(test)]
    fn peers(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One request's place in its peer's count.
#[derive(Debug)]
struct PeerSlot<'a> {
    limit: &'a PeerLimit,
    key: IpAddr,
}

impl Drop for PeerSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .limit
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Who a client is for the per-peer limit: its IPv4 address, or its IPv6 /64 (a host is
/// usually given a whole /64, so counting single IPv6 addresses would limit nothing).
fn peer_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// The budget of buffered body bytes.
#[derive(Debug)]
struct ByteBudget {
    limit: u64,
    used: AtomicU64,
}

impl ByteBudget {
    fn try_take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes taken from the budget, given back on drop.
#[derive(Debug)]
struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl Reservation {
    fn try_new(budget: &Arc<ByteBudget>, bytes: u64) -> Option<Reservation> {
        budget.try_take(bytes).then(|| Reservation {
            budget: Arc::clone(budget),
            bytes,
        })
    }

    fn empty(budget: &Arc<ByteBudget>) -> Reservation {
        Reservation {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Grows the reservation to `bytes` in total; false (unchanged) when the budget lacks it.
    fn grow_to(&mut self, bytes: u64) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        if !self.budget.try_take(more) {
            return false;
        }
        self.bytes += more;
        true
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::{StreamExt, stream};
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    use super::*;

    fn limits() -> Limits {
        Limits {
            max_in_flight: 4,
            max_in_flight_per_peer: 2,
            max_body_bytes: 1000,
            max_buffered_body_bytes: Some(2500),
            body_timeout: Duration::from_millis(100),
            min_body_bytes_per_second: 1000,
            request_timeout: Duration::from_secs(2),
            ..Limits::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_peer_holds_at_most_its_share_and_leaves_no_entry_behind() {
        let admission = Admission::new(&limits(), true);
        let a = ip("192.0.2.1");
        let first = admission.admit(a, Some(10)).expect("first");
        let second = admission.admit(a, Some(10)).expect("second");
        assert_eq!(
            admission.admit(a, Some(10)).map(|_| ()),
            Err(Refused::PeerLimit)
        );
        // Another peer is not affected, and an IPv4-mapped IPv6 address is the same peer.
        let other = admission.admit(ip("192.0.2.2"), Some(10)).expect("other");
        assert_eq!(
            admission.admit(ip("::ffff:192.0.2.1"), None).map(|_| ()),
            Err(Refused::PeerLimit)
        );
        drop(first);
        let third = admission.admit(a, Some(10)).expect("a slot came back");
        drop((second, third, other));
        assert_eq!(admission.peers.peers(), 0, "no entry for idle peers");
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let admission = Admission::new(&limits(), true);
        let _one = admission.admit(ip("2001:db8:1:2::1"), None).expect("one");
        let _two = admission
            .admit(ip("2001:db8:1:2::ffff"), None)
            .expect("two");
        assert_eq!(
            admission
                .admit(ip("2001:db8:1:2:aaaa::3"), None)
                .map(|_| ()),
            Err(Refused::PeerLimit)
        );
        assert!(admission.admit(ip("2001:db8:1:3::1"), None).is_ok());
    }

    #[test]
    fn verified_clients_are_not_limited_per_peer_but_in_total() {
        let admission = Admission::new(&limits(), false);
        let a = ip("10.0.0.1");
        let tickets: Vec<_> = (0..4)
            .map(|_| admission.admit(a, None).expect("admitted"))
            .collect();
        assert_eq!(admission.admit(a, None).map(|_| ()), Err(Refused::InFlight));
        drop(tickets);
    }

    #[test]
    fn declared_bodies_are_reserved_before_reading_and_refused_past_the_budget() {
        let admission = Admission::new(&limits(), false);
        assert_eq!(
            admission.admit(ip("192.0.2.1"), Some(1001)).map(|_| ()),
            Err(Refused::TooLarge)
        );
        let one = admission.admit(ip("192.0.2.1"), Some(1000)).expect("one");
        let two = admission.admit(ip("192.0.2.2"), Some(1000)).expect("two");
        assert_eq!(admission.buffered_bytes(), 2000);
        assert_eq!(
            admission.admit(ip("192.0.2.3"), Some(501)).map(|_| ()),
            Err(Refused::BodyBudget)
        );
        assert!(admission.admit(ip("192.0.2.3"), Some(500)).is_ok());
        drop((one, two));
        assert_eq!(admission.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn the_body_keeps_its_reservation_until_its_last_clone_is_dropped() {
        let admission = Admission::new(&limits(), false);
        let mut ticket = admission.admit(ip("192.0.2.1"), Some(5)).expect("ticket");
        let body = ticket
            .read_body(Full::new(Bytes::from_static(b"hello")))
            .await
            .expect("body");
        drop(ticket);
        assert_eq!(&body[..], b"hello");
        assert_eq!(admission.buffered_bytes(), 5, "held by the buffer");
        let clone = body.clone();
        drop(body);
        assert_eq!(admission.buffered_bytes(), 5);
        drop(clone);
        assert_eq!(admission.buffered_bytes(), 0);
    }

    fn chunks(
        parts: Vec<Vec<u8>>,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
        StreamBody::new(stream::iter(
            parts
                .into_iter()
                .map(|part| Ok(Frame::data(Bytes::from(part)))),
        ))
    }

    #[tokio::test]
    async fn a_chunked_body_reserves_as_it_grows() {
        let admission = Admission::new(&limits(), false);
        let mut ticket = admission.admit(ip("192.0.2.1"), None).expect("ticket");
        let body = ticket
            .read_body(chunks(vec![vec![b'a'; 600], vec![b'b'; 300]]))
            .await
            .expect("body");
        assert_eq!(body.len(), 900);
        assert!(admission.buffered_bytes() >= 900);
        assert!(
            admission.buffered_bytes() <= 1000,
            "capped at max_body_bytes"
        );

        // Past max_body_bytes while chunked: 413, and nothing stays reserved.
        let mut big = admission.admit(ip("192.0.2.2"), None).expect("ticket");
        let refused = big
            .read_body(chunks(vec![vec![b'a'; 600], vec![b'b'; 600]]))
            .await;
        assert_eq!(refused, Err(BodyRefused::TooLarge));
        drop(big);
        drop(body);
        drop(ticket);
        assert_eq!(admission.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_past_the_remaining_budget_is_refused() {
        let admission = Admission::new(&limits(), false);
        let _one = admission.admit(ip("192.0.2.1"), Some(1000)).expect("one");
        let _two = admission.admit(ip("192.0.2.2"), Some(1000)).expect("two");
        let mut chunked = admission.admit(ip("192.0.2.3"), None).expect("chunked");
        let refused = chunked
            .read_body(chunks(vec![vec![b'a'; 400], vec![b'b'; 400]]))
            .await;
        assert_eq!(refused, Err(BodyRefused::BodyBudget));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_after_body_timeout_and_a_steady_one_is_not() {
        let admission = Admission::new(&limits(), false);
        let mut stalled = admission.admit(ip("192.0.2.1"), Some(100)).expect("ticket");
        let started = Instant::now();
        let trickle = stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"{")))])
            .chain(stream::pending());
        let refused = stalled.read_body(StreamBody::new(trickle)).await;
        assert_eq!(refused, Err(BodyRefused::Timeout));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(100) && waited < Duration::from_millis(110),
            "{waited:?}"
        );

        // 100 bytes every 50 ms is 2000 B/s, above the 1000 B/s minimum: never cut, though
        // it takes well past body_timeout.
        let steady = stream::iter(0..10).then(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; 100])))
        });
        let mut ticket = admission
            .admit(ip("192.0.2.1"), Some(1000))
            .expect("ticket");
        let started = Instant::now();
        let body = ticket
            .read_body(StreamBody::new(steady))
            .await
            .expect("steady body");
        assert_eq!(body.len(), 1000);
        assert!(started.elapsed() >= Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn request_timeout_caps_even_a_fast_enough_body() {
        let mut limits = limits();
        limits.request_timeout = Duration::from_millis(300);
        limits.max_body_bytes = 100_000;
        limits.max_buffered_body_bytes = Some(100_000);
        let admission = Admission::new(&limits, false);
        // 2000 B/s, twice the minimum rate, for 5 s: longer than request_timeout.
        let steady = stream::iter(0..100).then(|_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b' '; 100])))
        });
        let mut ticket = admission.admit(ip("192.0.2.1"), None).expect("ticket");
        let started = Instant::now();
        assert_eq!(
            ticket.read_body(StreamBody::new(steady)).await,
            Err(BodyRefused::Timeout)
        );
        assert!(started.elapsed() < Duration::from_millis(310));
    }

    #[test]
    fn only_a_signature_header_the_endpoint_checks_counts() {
        let mut headers = HeaderMap::new();
        assert!(!has_signature_header(&headers, true));
        headers.insert(
            verify::LEGACY_SIGNATURE_HEADER,
            "sha1=00".parse().expect("value"),
        );
        assert!(!has_signature_header(&headers, false));
        assert!(has_signature_header(&headers, true));
        headers.insert(
            verify::SIGNATURE_HEADER,
            "sha256=00".parse().expect("value"),
        );
        assert!(has_signature_header(&headers, false));
    }
}
