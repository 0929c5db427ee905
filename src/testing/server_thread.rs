//! A test server's own thread and runtime, stopped and joined on drop.
//!
//! Test servers run apart from the test's runtime so that they keep answering while a test
//! blocks its own thread, and so that a test on a current-thread runtime cannot starve them.

use std::future::Future;

use tokio::sync::oneshot;

/// The thread a test server runs on; dropping it stops the server and waits for the thread.
pub(crate) struct ServerThread {
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
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
