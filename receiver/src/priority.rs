//! Work after the 200 yields the CPU to the request handlers.
//!
//! A 200 needs only verification and the intake's group commit; normalization and delivery
//! are a pure function of what was stored and can wait. Under a burst (a broadcast's status
//! webhooks, Meta's retries) the handlers should get the CPU first, so the normalization
//! stage and every sink consumer run on threads [`NICE`] nice steps below them: a weight
//! about a tenth of the handlers', so they never starve, and they take the whole CPU
//! as soon as the handlers leave it. The intake's bound (`spool.max_bytes`) is what stops a
//! burst that outlasts the catching up.

use std::future::Future;
use std::io;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// How many nice steps the threads doing work after the 200 sit below the request
/// handlers (which keep the process's own nice value).
pub const NICE: i32 = 10;
/// The largest nice value Linux has.
const LOWEST: i32 = 19;

/// Lowers the calling thread's priority [`NICE`] steps below the process's main thread
/// (Linux: `setpriority` on a thread id applies to that thread only; a thread inherits its
/// creator's, so the main thread is the reference, not the caller). Failing only costs
/// priority, so it is logged and ignored.
pub fn lower_this_thread() {
    let thread = rustix::thread::gettid();
    let main_thread = rustix::process::getpid();
    let lowered = rustix::process::getpriority_process(Some(main_thread))
        .map(|handlers| (handlers + NICE).min(LOWEST))
        .and_then(|nice| rustix::process::setpriority_process(Some(thread), nice));
    if let Err(err) = lowered {
        tracing::debug!(error = %err, "cannot lower this thread's CPU priority");
    }
}

/// The async runtime of the sink consumers: its workers and blocking threads run [`NICE`]
/// steps below the runtime that answers requests.
///
/// Dropping it never blocks (the consumers were awaited or gave up by then), so it may be
/// dropped anywhere, an async context included.
#[derive(Debug)]
pub struct DeliveryRuntime {
    handle: Handle,
    /// Taken only by `drop`.
    runtime: Option<Runtime>,
}

impl DeliveryRuntime {
    /// Starts the runtime with as many workers as the CPUs this process may use.
    pub fn start() -> io::Result<DeliveryRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("delivery")
            .on_thread_start(lower_this_thread)
            .enable_all()
            .build()?;
        Ok(DeliveryRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Runs `task` on the delivery runtime; the handle can be awaited from any runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }
}

impl Drop for DeliveryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        let thread = rustix::thread::gettid();
        rustix::process::getpriority_process(Some(thread)).expect("getpriority")
    }

    #[tokio::test]
    async fn consumers_run_at_the_lower_priority_and_the_runtime_drops_in_async_code() {
        let caller = nice_of_this_thread();
        let handlers = rustix::process::getpriority_process(Some(rustix::process::getpid()))
            .expect("the main thread's nice");
        let lowered = (handlers + NICE).min(LOWEST);
        let delivery = DeliveryRuntime::start().expect("runtime");
        let nice = delivery
            .spawn(async { nice_of_this_thread() })
            .await
            .expect("task");
        assert_eq!(nice, lowered);
        let blocking = delivery
            .spawn(async {
                tokio::task::spawn_blocking(nice_of_this_thread)
                    .await
                    .expect("blocking task")
            })
            .await
            .expect("task");
        assert_eq!(
            blocking, lowered,
            "blocking threads too (file writes, fsyncs)"
        );
        assert_eq!(
            nice_of_this_thread(),
            caller,
            "the caller's thread is left alone"
        );
        // Dropped here, inside the test's runtime: must not panic.
        drop(delivery);
    }
}
