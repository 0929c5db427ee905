//! A test server's own thread and runtime, stopped and joined on drop.
//!
//! Test servers run apart from the test's runtime so that they keep answering while a test
//! blocks its own thread, and so that a test on a current-thread runtime cannot starve them.

use std::future::Future;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long a test server pauses after a failed `accept`: the connection stays queued, so
/// without a pause the accept loop would spin at full speed (with no file descriptor left,
/// every accept fails at once until one is freed).
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The next connection, or `None` after a failed accept and a short pause.
pub(crate) async fn accept(listener: &TcpListener) -> Option<TcpStream> {
    match listener.accept().await {
        Ok((stream, _)) => Some(stream),
        Err(error) => {
            tracing::debug!(%error, "test server: accept failed; pausing");
            tokio::time::sleep(ACCEPT_PAUSE).await;
            None
        }
    }
}

/// The thread a test server runs on; dropping it stops the server and waits for the thread.
pub(crate) struct ServerThread {
    name: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve(stop)` on a new thread with a current-thread runtime; `serve` must return
    /// once `stop` resolves.
    pub(crate) fn spawn<F, Fut>(name: &str, serve: F) -> std::io::Result<Self>
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || runtime.block_on(serve(stopped)))?;
        Ok(ServerThread {
            name: name.to_owned(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
        {
            // A test server that panicked served the test wrongly: the test must fail, not
            // pass on what the server did before. (Not while already unwinding: that aborts.)
            if !std::thread::panicking() {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                panic!("the test server `{}` panicked: {message}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_of_the_server_thread_fails_whoever_drops_it() {
        let server = ServerThread::spawn("doomed", |_stop| async {
            panic!("the server broke");
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(server)));
        let panic = dropped.expect_err("dropping it panics");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.contains("`doomed` panicked: the server broke"),
            "{message}"
        );
    }

    #[test]
    fn a_server_that_stops_cleanly_drops_quietly() {
        let server = ServerThread::spawn("calm", |stop| async {
            let _ = stop.await;
        })
        .unwrap();
        drop(server);
    }
}
