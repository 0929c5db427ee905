//! A long-lived connection that receives `LISTEN`/`NOTIFY` notifications across reconnects.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use postgres_protocol::escape::escape_identifier;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Notification};
use tracing::Instrument;

use crate::backoff::millis;
use crate::connect::{Connector, Driver, Opened};
use crate::error::error_chain;
use crate::retry::ErrorClass;
use crate::{BoxError, Error, Pool, StatementTimedOut};

/// How many events wait for the consumer before the listener stops reading from the server
/// (which then buffers further notifications itself).
const EVENT_BUFFER: usize = 1024;

/// Postgres truncates identifiers longer than this many bytes.
const MAX_CHANNEL_LEN: usize = 63;

/// What a [`Listener`] reports: a notification, or a change in its connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenerEvent {
    /// A notification on one of the channels.
    Notification(Notification),
    /// The connection was lost (server restart, compute suspended, session terminated,
    /// network failure). The listener reconnects by itself; notifications sent until
    /// [`Reconnected`](Self::Reconnected) are not received.
    Disconnected(Error),
    /// A round of reconnect attempts (one [`RetryPolicy`](crate::RetryPolicy) deadline)
    /// failed; the listener waits a little and tries again, for as long as it exists.
    ReconnectFailed(Error),
    /// The listener is connected again and listening on every channel. Notifications sent
    /// while it was disconnected were lost: re-read whatever state they signal.
    Reconnected {
        /// Time from noticing the loss to listening again.
        downtime: Duration,
    },
}

/// A dedicated connection that `LISTEN`s on a set of channels and hands out the
/// notifications, reconnecting whenever the connection is lost.
///
/// Created by [`Pool::listener`]. It opens its own connection (outside the pool, with a
/// fresh token and the pool's TLS, resolver and cold-start retry), so it never ties up a
/// pooled connection and is not retired by the pool's max lifetime. When the connection is
/// lost it reports [`ListenerEvent::Disconnected`], reconnects with the pool's retry policy
/// (again and again, reporting [`ListenerEvent::ReconnectFailed`] after each failed round),
/// issues `LISTEN` for every channel again and reports [`ListenerEvent::Reconnected`].
///
/// **Notifications sent while the listener is disconnected are lost**: Postgres delivers a
/// notification only to sessions listening at the time. Treat `Reconnected` as "something
/// may have happened": re-read the state the notifications are about.
///
/// Events are read with [`recv`](Self::recv), or through the [`Stream`](futures_core::Stream)
/// implementation. When the consumer falls 1,024 events behind, the listener stops reading
/// from the server until it catches up. Dropping the listener closes its connection. It
/// shares the pool's connection settings and token cache but does not keep the pool itself
/// alive, and [`Pool::shutdown`] does not end it.
///
/// ```no_run
/// use lakebase_pool::ListenerEvent;
///
/// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
/// let mut listener = pool.listener(["jobs"]).await?;
/// while let Some(event) = listener.recv().await {
///     match event {
///         ListenerEvent::Notification(n) => println!("{}: {}", n.channel(), n.payload()),
///         ListenerEvent::Reconnected { .. } => println!("reconnected; re-reading the job table"),
///         other => println!("{other:?}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
pub struct Listener {
    events: mpsc::Receiver<ListenerEvent>,
    channels: Vec<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// The next event; `None` only if the listener's background task has ended, which it
    /// does not do while the listener exists.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no event is lost.
    ///
    /// ```no_run
    /// # async fn demo(mut listener: lakebase_pool::Listener) {
    /// if let Some(lakebase_pool::ListenerEvent::Notification(n)) = listener.recv().await {
    ///     println!("{}", n.payload());
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<ListenerEvent> {
        self.events.recv().await
    }

    /// The channels it listens on.
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let listener = pool.listener(["jobs", "events"]).await?;
    /// assert_eq!(listener.channels(), ["jobs", "events"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn channels(&self) -> &[String] {
        &self.channels
    }
}

impl futures_core::Stream for Listener {
    type Item = ListenerEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ListenerEvent>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Opens a [`Listener`] on `channels`: connects (retrying cold starts like a checkout),
    /// runs `LISTEN` for each channel, and keeps doing so across reconnects.
    ///
    /// Channel names are used as given, case included (they are quoted identifiers).
    ///
    /// # Errors
    ///
    /// * [`Error::InvalidConfig`]: no channel, or a name that is empty, longer than 63 bytes
    ///   or contains a NUL byte.
    /// * [`Error::PoolClosed`] after [`Pool::close`].
    /// * Any error of opening a connection ([`Pool::get`]'s list), or [`Error::Listen`].
    ///
    /// ```no_run
    /// # async fn demo(pool: lakebase_pool::Pool) -> Result<(), lakebase_pool::Error> {
    /// let listener = pool.listener(["jobs"]).await?;
    /// # let _ = listener;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn listener<I>(&self, channels: I) -> Result<Listener, Error>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let channels: Vec<String> = channels.into_iter().map(Into::into).collect();
        check_channels(&channels)?;
        // A closed pool opens no session, for a listener either.
        if self.is_closed() {
            return Err(Error::PoolClosed);
        }
        let span = tracing::info_span!("lakebase.listener", channels = ?channels);
        let (events, receiver) = mpsc::channel(EVENT_BUFFER);
        let worker = Worker {
            connector: Arc::clone(self.connect_path()),
            listen: listen_statement(&channels),
            events,
        };
        let session = worker.open().instrument(span.clone()).await?;
        // `close` may have run while the session opened: it is dropped, which closes it.
        if self.is_closed() {
            return Err(Error::PoolClosed);
        }
        let task = tokio::spawn(worker.run(session).instrument(span));
        Ok(Listener {
            events: receiver,
            channels,
            task,
        })
    }
}

fn check_channels(channels: &[String]) -> Result<(), Error> {
    if channels.is_empty() {
        return Err(Error::invalid("channels", "name at least one channel"));
    }
    for channel in channels {
        let problem = if channel.is_empty() {
            "a channel name is empty"
        } else if channel.len() > MAX_CHANNEL_LEN {
            "a channel name is longer than 63 bytes (Postgres would truncate it)"
        } else if channel.contains('\0') {
            "a channel name contains a NUL byte"
        } else {
            continue;
        };
        return Err(Error::invalid("channels", problem));
    }
    Ok(())
}

/// `LISTEN "a"; LISTEN "b"` with each name quoted as an identifier.
fn listen_statement(channels: &[String]) -> String {
    channels
        .iter()
        .map(|channel| format!("LISTEN {};", escape_identifier(channel)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the connection's driver task tells the listener's task.
enum Message {
    Notification(Notification),
    /// The connection ended, with its error if it had one.
    Ended(Option<tokio_postgres::Error>),
}

/// One connection, listening.
struct Session {
    /// Kept alive: dropping the client ends the connection.
    _client: tokio_postgres::Client,
    messages: mpsc::Receiver<Message>,
    _driver: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The listener's background task.
struct Worker {
    /// Opens its sessions; not the pool itself, so a listener does not keep the pool alive.
    connector: Arc<Connector>,
    listen: String,
    events: mpsc::Sender<ListenerEvent>,
}

impl Worker {
    /// Connects and listens on every channel.
    async fn open(&self) -> Result<Session, Error> {
        let connector = &self.connector;
        let Opened { client, driver, .. } = connector.connect().await?;
        let (sender, messages) = mpsc::channel(EVENT_BUFFER);
        let driver = AbortOnDrop(tokio::spawn(drive(driver, sender).in_current_span()));
        let timeout = connector.retry_policy().command_timeout_value();
        let listened = tokio::time::timeout(timeout, client.batch_execute(&self.listen))
            .await
            .map_err(|_| BoxError::from(StatementTimedOut::new("LISTEN", timeout)))
            .and_then(|result| result.map_err(BoxError::from));
        // On error the session is dropped here, which closes it (its driver is aborted).
        listened.map_err(|source| Error::Listen {
            target: connector.target().to_owned(),
            source,
        })?;
        tracing::debug!("listening");
        Ok(Session {
            _client: client,
            messages,
            _driver: driver,
        })
    }

    /// Forwards notifications; on a loss, reconnects. Ends when the [`Listener`] is dropped.
    async fn run(self, mut session: Session) {
        loop {
            let lost = tokio::select! {
                lost = self.forward(&mut session) => lost,
                () = self.events.closed() => return,
            };
            drop(session);
            self.connector.counters().session_lost();
            let target = self.connector.target().to_owned();
            tracing::warn!(cause = %lost.as_ref().map_or_else(|| "closed by the server".into(), |e| error_chain(e)), "listener connection lost; reconnecting");
            let noticed = Instant::now();
            if !self
                .emit(ListenerEvent::Disconnected(Error::ConnectionLost {
                    target,
                    source: lost,
                }))
                .await
            {
                return;
            }
            session = match self.reconnect(noticed).await {
                Some(session) => session,
                None => return,
            };
        }
    }

    /// Passes notifications on until the connection ends; returns its error.
    async fn forward(&self, session: &mut Session) -> Option<tokio_postgres::Error> {
        loop {
            match session.messages.recv().await {
                Some(Message::Notification(notification)) => {
                    if !self.emit(ListenerEvent::Notification(notification)).await {
                        // The listener is gone; `run` notices through `closed()`.
                        std::future::pending::<()>().await;
                    }
                }
                Some(Message::Ended(error)) => return error,
                // The driver was aborted or panicked.
                None => return None,
            }
        }
    }

    /// Reconnects until it succeeds; `None` when the listener is dropped meanwhile.
    async fn reconnect(&self, noticed: Instant) -> Option<Session> {
        let policy = self.connector.retry_policy();
        let mut round: u32 = 0;
        loop {
            round += 1;
            match self.open().await {
                Ok(session) => {
                    let downtime = noticed.elapsed();
                    tracing::info!(downtime_ms = millis(downtime), "listener reconnected");
                    return self
                        .emit(ListenerEvent::Reconnected { downtime })
                        .await
                        .then_some(session);
                }
                Err(error) => {
                    let delay = policy.delay(round, ErrorClass::Transient, fastrand::f64());
                    tracing::warn!(
                        round,
                        delay_ms = millis(delay),
                        cause = %error_chain(&error),
                        "listener could not reconnect; trying again"
                    );
                    if !self.emit(ListenerEvent::ReconnectFailed(error)).await {
                        return None;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends an event; `false` when the listener is gone.
    async fn emit(&self, event: ListenerEvent) -> bool {
        self.events.send(event).await.is_ok()
    }
}

/// Polls the connection, passing notifications on, until it ends.
async fn drive(mut connection: Driver, messages: mpsc::Sender<Message>) {
    let ended = loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(notification))) => {
                if messages
                    .send(Message::Notification(notification))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Some(Ok(AsyncMessage::Notice(notice))) => {
                tracing::debug!(message = notice.message(), "server notice");
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => break Some(error),
            None => break None,
        }
    };
    let _ = messages.send(Message::Ended(ended)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_statement_quotes_every_channel() {
        let channels = vec![
            "jobs".to_owned(),
            "Mixed Case".to_owned(),
            "a\"b".to_owned(),
        ];
        assert_eq!(
            listen_statement(&channels),
            r#"LISTEN "jobs"; LISTEN "Mixed Case"; LISTEN "a""b";"#
        );
    }

    #[test]
    fn bad_channel_names_are_config_errors() {
        for channels in [
            vec![],
            vec![String::new()],
            vec!["x".repeat(64)],
            vec!["a\0b".to_owned()],
        ] {
            let err = check_channels(&channels).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        setting: "channels",
                        ..
                    }
                ),
                "{channels:?}: {err}"
            );
        }
        assert!(check_channels(&["x".repeat(63), "jobs".to_owned()]).is_ok());
    }
}
