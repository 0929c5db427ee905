//! Whether a session has a statement in flight, read off its own bytes.
//!
//! tokio-postgres does not say whether a statement is still running when the future that
//! sent it is dropped (a web request timed out). [`Watched`] wraps the stream a session speaks
//! Postgres over (under TLS, the decrypted side) and counts, from the message headers only,
//! the frontend messages that each end in one `ReadyForQuery` (a simple `Query`, a `Sync`)
//! and the `ReadyForQuery` messages that came back. More sent than answered means a statement
//! is in flight. The cost is a few comparisons per message header; bodies are skipped by
//! length.
//!
//! A statement's request is queued for the session's driver before the driver writes it: a
//! future dropped in between leaves a statement that the bytes do not show yet. [`Driven`]
//! wraps the driver's future and counts the wakes it was given and the ones its polls have
//! seen through; while it is behind, the session may have such a statement queued, and a
//! checkout waits the driver's next poll out (microseconds) before it reads the counts.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_postgres::tls::{ChannelBinding, TlsStream};

use crate::metrics::Counted;

/// What a session has sent and had answered, shared by its stream and its pool entry.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Frontend messages that each end in one `ReadyForQuery`: `Query` and `Sync`.
    sent: AtomicU64,
    /// `ReadyForQuery` messages received, the start-up's included.
    ready: AtomicU64,
    /// What the stream knows beyond the counts ([`WRITING`], [`COPYING_IN`],
    /// [`RESULTS_IN`]), as its sides last set it.
    flags: AtomicU8,
    /// Woken at a `ReadyForQuery` while someone waits in `settled`.
    answered: Notify,
    /// How many wait in `settled`: without any, a `ReadyForQuery` wakes no one (a
    /// `notify_waiters` takes a lock, on every statement's answer otherwise).
    waiting: AtomicUsize,
    /// Wakes given to the driver's task (its spawn counts as one).
    woken: AtomicU64,
    /// Of those, how many its polls had seen when they ended.
    driven: AtomicU64,
    /// The driver ended (or was dropped): nothing queued will be written.
    ended: AtomicBool,
    /// The driver task's own waker, woken through this. A tokio task is polled with the same
    /// waker every time, so it is kept from the first poll (no swap per wake).
    task: OnceLock<Waker>,
    /// Nobody asks: the stream passes bytes through without reading them (a driver
    /// adapter's session, whose pool never cancels a statement).
    unwatched: bool,
}

impl Activity {
    /// The activity of a session nobody watches: its stream reads nothing of what passes.
    pub(crate) fn unwatched() -> Self {
        Activity {
            unwatched: true,
            ..Activity::default()
        }
    }

    /// Whether a statement sent on the session has not been answered yet (start-up over).
    pub(crate) fn in_flight(&self) -> bool {
        // An unwatched session's counts stay at zero, which would read as "in flight".
        debug_assert!(!self.unwatched, "in_flight asked of an unwatched session");
        // The start-up's `ReadyForQuery` answers no frontend message of its own.
        self.ready.load(Ordering::SeqCst) <= self.sent.load(Ordering::SeqCst)
            || self.flags.load(Ordering::SeqCst) & (WRITING | COPYING_IN) != 0
    }

    /// Whether the session met a failover's read-only server: the server refused a write on
    /// it (`25006`) and reports itself read-only. A read-only transaction of the caller's own,
    /// on a server that takes writes, is not one.
    pub(crate) fn refused_write_as_standby(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & (REFUSED_WRITE | SERVER_READ_ONLY)
            == REFUSED_WRITE | SERVER_READ_ONLY
    }

    /// Whether the session's server was a standby and has been promoted since (it reports
    /// `in_hot_standby` off, at the session's next statement after the promotion).
    pub(crate) fn server_promoted(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & PROMOTED != 0
    }

    /// Whether the server reports itself read-only now.
    pub(crate) fn server_read_only(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & SERVER_READ_ONLY != 0
    }

    /// Whether the one statement in flight has had all its results, and only its
    /// `ReadyForQuery` is still on its way (a `prepare`, a `copy_out` or a `copy_in`'s
    /// `finish` end before it; a network may deliver it a moment later): it ends on its own
    /// within a round trip, and nobody gave it up.
    pub(crate) fn only_ready_to_come(&self) -> bool {
        self.flags.load(Ordering::SeqCst) & (WRITING | COPYING_IN | RESULTS_IN) == RESULTS_IN
            && self.in_flight()
    }

    /// Whether the driver was woken since its last poll began: a request queued for it (a
    /// statement whose future was dropped at once) may not be written yet.
    pub(crate) fn driver_behind(&self) -> bool {
        !self.ended.load(Ordering::SeqCst)
            && self.driven.load(Ordering::SeqCst) != self.woken.load(Ordering::SeqCst)
    }

    /// Waits until the driver has done what it was woken for and nothing is in flight, or
    /// the driver ended (the session is closed: nothing more will be answered).
    pub(crate) async fn settled(&self) {
        self.until(|activity| {
            activity.ended.load(Ordering::SeqCst)
                || (!activity.driver_behind() && !activity.in_flight())
        })
        .await;
    }

    /// Waits until the driver has done what it was woken for: whatever was queued before
    /// this call is then written, and counted.
    pub(crate) async fn driver_caught_up(&self) {
        self.until(|activity| !activity.driver_behind()).await;
    }

    async fn until(&self, done: impl Fn(&Self) -> bool) {
        let _waiting = Counted::new(&self.waiting);
        loop {
            // Made before the check: a notification after it is not missed.
            let changed = self.answered.notified();
            if done(self) {
                return;
            }
            changed.await;
        }
    }

    /// Counts a `ReadyForQuery`, waking whoever waits for the session to settle.
    fn answered(&self) {
        let _ = self.ready.fetch_add(1, Ordering::SeqCst);
        self.wake_waiters();
    }

    /// A poll of the driver that began after `seen` wakes has ended (`ended`: for good).
    fn driven(&self, seen: u64, ended: bool) {
        self.driven.store(seen, Ordering::SeqCst);
        if ended {
            self.ended.store(true, Ordering::SeqCst);
        }
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.answered.notify_waiters();
        }
    }
}

/// The waker the driver is polled with: counts the wake, then wakes the driver's task.
impl Wake for Activity {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.woken.fetch_add(1, Ordering::SeqCst);
        if let Some(task) = self.task.get() {
            task.wake_by_ref();
        }
    }
}

/// A session's driver, keeping its [`Activity`] told of the wakes it has done the work of.
pub(crate) struct Driven<F> {
    driver: F,
    activity: Arc<Activity>,
    /// `activity` as a waker, made once.
    waker: Waker,
}

impl<F> Driven<F> {
    /// `driver`, about to be spawned (which counts as a wake: its first poll does the work
    /// queued before it).
    pub(crate) fn new(driver: F, activity: Arc<Activity>) -> Self {
        let _ = activity.woken.fetch_add(1, Ordering::SeqCst);
        Driven {
            driver,
            waker: Waker::from(Arc::clone(&activity)),
            activity,
        }
    }
}

impl<F: Future + Unpin> Future for Driven<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let task = this.activity.task.get_or_init(|| cx.waker().clone());
        if !task.will_wake(cx.waker()) {
            // Polled by another task than the first (never, as spawned by the pool): driven
            // with that task's waker, and no longer followed (never taken as behind).
            this.activity.driven(u64::MAX, true);
            return Pin::new(&mut this.driver).poll(cx);
        }
        // Wakes up to here are done by this poll; a later one polls again.
        let seen = this.activity.woken.load(Ordering::SeqCst);
        let result = Pin::new(&mut this.driver).poll(&mut Context::from_waker(&this.waker));
        this.activity.driven(seen, result.is_ready());
        result
    }
}

impl<F> Drop for Driven<F> {
    fn drop(&mut self) {
        // Aborted or done: no waiter waits for a poll that will not come.
        self.activity
            .driven(self.activity.driven.load(Ordering::SeqCst), true);
    }
}

/// A statement's messages are being written: some sent, its `Sync` not yet (a large one
/// written in parts, the data of a `COPY`). Set and cleared by the frontend side.
const WRITING: u8 = 1;
/// The server takes a `COPY FROM STDIN`'s data (from its `CopyInResponse` until the client's
/// `CopyDone` or `CopyFail`): in flight, whether or not data was written yet.
const COPYING_IN: u8 = 2;
/// The one statement in flight has had all its results; only its `ReadyForQuery` is to come.
const RESULTS_IN: u8 = 4;
/// The server refused a write as read-only (`25006`) since the session opened: sticky.
const REFUSED_WRITE: u8 = 8;
/// The server reports itself read-only (`in_hot_standby` or `default_transaction_read_only`
/// on, in its `ParameterStatus` messages): a standby, or a primary demoted after a failover.
const SERVER_READ_ONLY: u8 = 16;
/// The server was a hot standby and reported `in_hot_standby` off since: it was promoted (a
/// failover made the replica's server the primary). Sticky.
const PROMOTED: u8 = 32;

/// Backend messages after which a statement's results are all in (its `ReadyForQuery` aside):
/// `CommandComplete`, `EmptyQueryResponse`, `ErrorResponse`, `PortalSuspended`, the end of a
/// statement's description (`RowDescription`, `NoData`), and `CopyDone`. (`RowDescription`
/// also comes before a query's rows: such a statement is then given the grace period, and
/// cancelled if it runs on.)
fn ends_results(kind: u8) -> bool {
    matches!(kind, b'C' | b'I' | b'E' | b's' | b'T' | b'n' | b'c')
}

/// Parses message boundaries out of a byte stream, one direction of a session.
#[derive(Debug)]
struct Framing {
    /// Header bytes gathered so far: a type byte (unless untyped) and a 4-byte length.
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message still to skip.
    skip: usize,
    /// The next message has no type byte (the frontend's start-up message).
    untyped: bool,
    /// Message types whose bodies are wanted even when they arrive split across reads:
    /// their callback comes once the body is whole.
    wanted: &'static [u8],
    /// The body of a wanted message being gathered, with its type.
    gathering: Option<(u8, Vec<u8>)>,
}

/// The longest body of a wanted message that is gathered across reads (errors and parameter
/// statuses are far smaller; a larger one is passed on without its body).
const GATHER_LIMIT: usize = 16 * 1024;

impl Framing {
    fn new(untyped_first: bool, wanted: &'static [u8]) -> Self {
        Framing {
            header: [0; 5],
            have: 0,
            skip: 0,
            untyped: untyped_first,
            wanted,
            gathering: None,
        }
    }

    /// Starts gathering the body of a `kind` message of `length` bytes, if it is wanted and
    /// not too long; whether it does.
    fn gather(&mut self, kind: u8, length: usize, first: &[u8]) -> bool {
        if !self.wanted.contains(&kind) || length > GATHER_LIMIT {
            return false;
        }
        let mut body = Vec::with_capacity(length);
        body.extend_from_slice(first);
        self.gathering = Some((kind, body));
        true
    }

    /// Feeds `bytes`, calling `on_message` with each message's type byte once its header is
    /// complete (`0` for the untyped start-up message), and its body when the whole body is
    /// in these bytes (else `None`). A wanted message's callback comes once its whole body
    /// is in, however many reads it took.
    fn feed(&mut self, mut bytes: &[u8], mut on_message: impl FnMut(u8, Option<&[u8]>)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                if let Some((_, body)) = &mut self.gathering {
                    body.extend_from_slice(&bytes[..n]);
                }
                bytes = &bytes[n..];
                if self.skip == 0
                    && let Some((kind, body)) = self.gathering.take()
                {
                    on_message(kind, Some(&body));
                }
                continue;
            }
            // The common case: a whole typed header in the bytes at hand.
            if self.have == 0
                && !self.untyped
                && let Some(&[kind, a, b, c, d]) = bytes.first_chunk::<5>()
            {
                let length = i32::from_be_bytes([a, b, c, d]);
                let body = usize::try_from(length).unwrap_or(4).saturating_sub(4);
                let n = body.min(bytes.len() - 5);
                self.skip = body - n;
                let whole = (n == body).then(|| &bytes[5..5 + n]);
                if whole.is_none() && self.gather(kind, body, &bytes[5..5 + n]) {
                    bytes = &bytes[5 + n..];
                    continue;
                }
                bytes = &bytes[5 + n..];
                on_message(kind, whole);
                continue;
            }
            let header_len = if self.untyped { 4 } else { 5 };
            let n = (header_len - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have < header_len {
                return;
            }
            let (kind, length) = if self.untyped {
                let length = [
                    self.header[0],
                    self.header[1],
                    self.header[2],
                    self.header[3],
                ];
                (0, i32::from_be_bytes(length))
            } else {
                let length = [
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ];
                (self.header[0], i32::from_be_bytes(length))
            };
            // The length counts itself; a malformed one skips nothing more.
            self.skip = usize::try_from(length).unwrap_or(4).saturating_sub(4);
            self.have = 0;
            self.untyped = false;
            if self.skip == 0 {
                on_message(kind, Some(&[]));
            } else if !self.gather(kind, self.skip, &[]) {
                on_message(kind, None);
            }
        }
    }
}

impl Framing {
    /// Whether a message is only partly through (its header or its body).
    fn mid_message(&self) -> bool {
        self.have > 0 || self.skip > 0
    }
}

/// Whether a simple `Query` body is the `ROLLBACK` that tokio-postgres sends, unawaited, for a
/// transaction dropped unfinished (`ROLLBACK`, or `ROLLBACK TO <savepoint>`). Fast, and
/// awaited by nobody: not a statement in flight, so the connection is not taken for one
/// whose caller gave up (the next statement queues behind it, as it must).
fn is_dropped_transactions_rollback(body: &[u8]) -> bool {
    match body.strip_prefix(b"ROLLBACK") {
        Some(b"\0") => true,
        // A savepoint's name, whatever its letters or quotes; a second statement after a `;`
        // makes it someone's statement.
        Some(rest) => rest.strip_prefix(b" TO ").is_some_and(|name| {
            name.split_last()
                .is_some_and(|(&end, name)| end == 0 && !name.is_empty() && !name.contains(&b';'))
        }),
        None => false,
    }
}

/// A `ReadyForQuery` to come.
#[derive(Debug, Clone, Copy)]
struct Expected {
    ends_statement: bool,
    sync: bool,
}

/// A session's stream that keeps its [`Activity`] up to date.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    frontend: Framing,
    backend: Framing,
    /// For each `ReadyForQuery` to come, in order: whether it ends a statement, and whether
    /// it answers a `Sync` (or a simple `Query`). A `Sync` after nothing but `Close` messages
    /// (tokio-postgres closing a dropped statement or portal, whose answer nobody waits for)
    /// ends none.
    expected: VecDeque<Expected>,
    /// Whether a message other than `Close` was sent since the last `Sync`.
    batch_has_work: bool,
    /// Pass bytes through unread (an unwatched session).
    off: bool,
    /// Which of the server's read-only parameters are on ([`ReadOnlyStatus`] bits).
    standby: u8,
    /// The flags as this stream last published them to `activity`.
    flags: u8,
}

impl<S> Watched<S> {
    /// `inner`, before the start-up message is written on it.
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched {
            off: activity.unwatched,
            standby: 0,
            inner,
            activity,
            frontend: Framing::new(true, &[]),
            // Errors (a refused write) and parameter statuses (a read-only server), whole.
            backend: Framing::new(false, b"ES"),
            expected: VecDeque::new(),
            batch_has_work: false,
            flags: 0,
        }
    }
}

impl<S> Watched<S> {
    /// Tells `activity` of the flags when they changed (rarely: an atomic store per message
    /// would cost every statement).
    fn publish(&mut self) {
        if self.activity.flags.load(Ordering::Relaxed) != self.flags {
            self.activity.flags.store(self.flags, Ordering::SeqCst);
        }
    }
}

/// One of the server's parameters that say it takes no writes, as a `ParameterStatus` set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReadOnlyStatus {
    /// `1`: `in_hot_standby`; `2`: `default_transaction_read_only`.
    bit: u8,
    on: bool,
}

impl ReadOnlyStatus {
    fn apply(self, bits: u8) -> u8 {
        if self.on {
            bits | self.bit
        } else {
            bits & !self.bit
        }
    }
}

/// [`ReadOnlyStatus::bit`] of `in_hot_standby`.
const HOT_STANDBY: u8 = 1;

/// The read-only parameter a `ParameterStatus` body (`name\0value\0`) sets, if it is one.
fn read_only_status(body: &[u8]) -> Option<ReadOnlyStatus> {
    let mut parts = body.split(|b| *b == 0);
    let bit = match parts.next()? {
        b"in_hot_standby" => HOT_STANDBY,
        b"default_transaction_read_only" => 2,
        _ => return None,
    };
    Some(ReadOnlyStatus {
        bit,
        on: parts.next()? == b"on",
    })
}

/// Whether an `ErrorResponse` body carries SQLSTATE `25006` (`read_only_sql_transaction`):
/// fields are a type byte and a NUL-terminated value each, `C` the code.
fn is_read_only_refusal(body: &[u8]) -> bool {
    let mut fields = body.split(|b| *b == 0);
    fields.any(|field| field == b"C25006")
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if result.is_ready() && !this.off {
            let (activity, expected, flags, standby_flags) = (
                &this.activity,
                &mut this.expected,
                &mut this.flags,
                &mut this.standby,
            );
            this.backend.feed(&buf.filled()[before..], |kind, body| {
                match kind {
                    // ParameterStatus: whether the server takes writes.
                    b'S' => {
                        if let Some(read_only) = body.and_then(read_only_status) {
                            if read_only.bit == HOT_STANDBY
                                && !read_only.on
                                && *standby_flags & HOT_STANDBY != 0
                            {
                                *flags |= PROMOTED;
                            }
                            *standby_flags = read_only.apply(*standby_flags);
                            if *standby_flags != 0 {
                                *flags |= SERVER_READ_ONLY;
                            } else {
                                *flags &= !SERVER_READ_ONLY;
                            }
                        }
                    }
                    b'Z' => {
                        *flags &= !RESULTS_IN;
                        // The start-up's `ReadyForQuery` was expected by nothing, and counts.
                        let counts = expected.pop_front().is_none_or(|e| e.ends_statement);
                        if counts {
                            activity.answered();
                        }
                    }
                    // CopyInResponse: the server ignores a `Sync` while it takes the copy's data,
                    // so the one sent with the `COPY` statement gets no `ReadyForQuery` (the one
                    // after `CopyDone` does).
                    b'G' => {
                        *flags |= COPYING_IN;
                        if expected.front().is_some_and(|e| e.sync)
                            && let Some(ignored) = expected.pop_front()
                            && ignored.ends_statement
                        {
                            let _ = activity.sent.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    // (The one statement to come: `Close`s of dropped statements, answered by
                    // nobody, may be queued beside it.)
                    kind if ends_results(kind) => {
                        if kind == b'E' && body.is_some_and(is_read_only_refusal) {
                            *flags |= REFUSED_WRITE;
                        }
                        if expected.iter().filter(|e| e.ends_statement).count() == 1 {
                            *flags |= RESULTS_IN;
                        }
                    }
                    _ => {}
                }
            });
            this.publish();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = result
            && !this.off
        {
            let (activity, expected, work, flags) = (
                &this.activity,
                &mut this.expected,
                &mut this.batch_has_work,
                &mut this.flags,
            );
            this.frontend.feed(&buf[..written], |kind, body| {
                let (ends_statement, sync) = match kind {
                    b'Q' => (!body.is_some_and(is_dropped_transactions_rollback), false),
                    b'S' => (std::mem::take(work), true),
                    // Close, Flush, the start-up and the login's password messages, Terminate:
                    // no statement of their own.
                    b'C' | b'H' | 0 | b'p' | b'X' => return,
                    // CopyDone, CopyFail: the copy's data is over (its `Sync` follows).
                    b'c' | b'f' => {
                        *flags &= !COPYING_IN;
                        *work = true;
                        return;
                    }
                    _ => {
                        *work = true;
                        return;
                    }
                };
                *flags &= !RESULTS_IN;
                expected.push_back(Expected {
                    ends_statement,
                    sync,
                });
                if ends_statement {
                    let _ = activity.sent.fetch_add(1, Ordering::AcqRel);
                }
            });
            if this.frontend.mid_message() || this.batch_has_work {
                this.flags |= WRITING;
            } else {
                this.flags &= !WRITING;
            }
            this.publish();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Watched<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wanted_body_split_across_reads_is_delivered_whole_and_once() {
        let status = message(b'S', b"in_hot_standby\0on\0");
        for cut in 1..status.len() {
            let mut framing = Framing::new(false, b"S");
            let mut seen = Vec::new();
            for part in [&status[..cut], &status[cut..]] {
                framing.feed(part, |kind, body| {
                    seen.push((kind, body.map(<[u8]>::to_vec)))
                });
            }
            assert_eq!(seen, [(b'S', Some(status[5..].to_vec()))], "cut at {cut}");
            assert_eq!(
                read_only_status(&status[5..]),
                Some(ReadOnlyStatus { bit: 1, on: true })
            );
        }
        assert_eq!(
            read_only_status(b"default_transaction_read_only\0off\0").map(|s| s.on),
            Some(false)
        );
        assert_eq!(read_only_status(b"TimeZone\0UTC\0"), None);
    }

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    fn kinds(framing: &mut Framing, stream: &[u8], chunk: usize) -> Vec<u8> {
        let mut seen = Vec::new();
        for part in stream.chunks(chunk) {
            framing.feed(part, |kind, _| seen.push(kind));
        }
        seen
    }

    #[test]
    fn message_types_are_found_however_the_bytes_are_split() {
        let mut frontend = Vec::new();
        frontend.extend_from_slice(&12_i32.to_be_bytes()); // start-up: length, then 8 bytes
        frontend.extend_from_slice(&[0, 3, 0, 0, b'u', 0, b'x', 0]);
        frontend.extend(message(b'p', b"secret\0"));
        frontend.extend(message(b'Q', b"SELECT 'Z'\0"));
        frontend.extend(message(b'P', &[b'S'; 300]));
        frontend.extend(message(b'S', b""));
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(
                kinds(&mut Framing::new(true, &[]), &frontend, chunk),
                [0, b'p', b'Q', b'P', b'S'],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn a_statement_is_in_flight_from_its_sync_to_its_ready_for_query() {
        let activity = Activity::default();
        let _ = activity.ready.fetch_add(1, Ordering::AcqRel); // the start-up's
        assert!(!activity.in_flight());
        let _ = activity.sent.fetch_add(1, Ordering::AcqRel);
        assert!(activity.in_flight());
        let _ = activity.ready.fetch_add(1, Ordering::AcqRel);
        assert!(!activity.in_flight());
    }

    /// A request queued for a driver that has not run since is seen as the driver being
    /// behind until its next poll ends; a driver that ended is never behind.
    #[tokio::test]
    async fn a_driver_is_behind_from_a_wake_to_the_end_of_its_next_poll() {
        let activity = Arc::new(Activity::default());
        let (requests, mut queue) = tokio::sync::mpsc::unbounded_channel::<()>();
        let driver = Box::pin(async move { while queue.recv().await.is_some() {} });
        let task = tokio::spawn(Driven::new(driver, Arc::clone(&activity)));
        assert!(activity.driver_behind(), "spawned, not polled yet");
        activity.driver_caught_up().await;
        assert!(!activity.driver_behind());
        requests.send(()).unwrap();
        // A current-thread runtime: the driver cannot run before this task yields.
        assert!(
            activity.driver_behind(),
            "a request queued, the driver not run since"
        );
        activity.driver_caught_up().await;
        assert!(!activity.driver_behind());
        drop(requests);
        task.await.unwrap();
        assert!(!activity.driver_behind(), "ended");
        activity.settled().await;
    }

    /// What tokio-postgres sends, unawaited, for a transaction dropped unfinished is not a
    /// statement in flight; anything else sent with `Query` is, even if it starts the same.
    #[test]
    fn the_rollback_of_a_dropped_transaction_is_not_in_flight_and_nothing_else_is_taken_for_it() {
        for (text, in_flight) in [
            ("ROLLBACK", false),
            ("ROLLBACK TO sp_1", false),
            ("ROLLBACK TO \"my point\"", false),
            ("ROLLBACK TO café", false),
            ("ROLLBACK TO a; SELECT pg_sleep(60)", true),
            ("ROLLBACK; SELECT pg_sleep(60)", true),
            ("ROLLBACK TO ", true),
            ("SELECT 1", true),
        ] {
            let activity = Arc::new(Activity::default());
            let mut stream = Watched::new(Vec::new(), Arc::clone(&activity));
            stream.frontend.untyped = false;
            let mut body = text.as_bytes().to_vec();
            body.push(0);
            let bytes = message(b'Q', &body);
            let waker = Waker::noop();
            let written = Pin::new(&mut stream).poll_write(&mut Context::from_waker(waker), &bytes);
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == bytes.len()));
            let _ = activity.ready.fetch_add(1, Ordering::AcqRel); // the start-up's
            assert_eq!(activity.in_flight(), in_flight, "{text}");
        }
    }

    /// A statement whose messages are only partly written is in flight, and so is one whose
    /// `Sync` has not been written yet.
    #[test]
    fn a_statement_written_in_parts_is_in_flight_before_its_sync() {
        let activity = Arc::new(Activity::default());
        let mut stream = Watched::new(Vec::new(), Arc::clone(&activity));
        stream.frontend.untyped = false;
        let _ = activity.ready.fetch_add(1, Ordering::AcqRel); // the start-up's
        let mut cx = Context::from_waker(Waker::noop());
        let bind = message(b'B', &[7; 1000]);
        let mut write = |bytes: &[u8]| {
            let written = Pin::new(&mut stream).poll_write(&mut cx, bytes);
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == bytes.len()));
        };
        write(&bind[..300]);
        assert!(activity.in_flight(), "half a message");
        write(&bind[300..]);
        assert!(activity.in_flight(), "a Bind without its Sync");
        write(&message(b'S', b""));
        assert!(activity.in_flight(), "synced, not answered");
        let _ = activity.ready.fetch_add(1, Ordering::AcqRel);
        assert!(!activity.in_flight());
    }
}
