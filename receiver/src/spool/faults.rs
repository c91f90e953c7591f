//! Faults tests inject into a log's writer: a panic, or a stall (an fsync that hangs).
//! Compiled into tests only, so no setting can trip them in production.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// What the writer does before its next commit.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Panics with this message.
    Panic(&'static str),
    /// Blocks until the sender is used or dropped (the group gathered so far waits with it).
    Stall(mpsc::Receiver<()>),
}

/// The fault armed for the next commit, if any.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    next: Mutex<Option<Fault>>,
    /// The writer stops without its clean stop (a killed process), see
    /// [`Faults::crash`].
    crashed: AtomicBool,
}

impl Faults {
    /// Arms `fault` for the next commit.
    pub(crate) fn set(&self, fault: Fault) {
        if let Ok(mut next) = self.next.lock() {
            *next = Some(fault);
        }
    }

    /// Makes the writer's stop a crash: no cut of a recycled segment's tail, no final sync.
    pub(crate) fn crash(&self) {
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// Whether the writer stops as a killed process would.
    pub(crate) fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Called by the writer before each commit.
    pub(crate) fn before_commit(&self) {
        let fault = self.next.lock().ok().and_then(|mut next| next.take());
        match fault {
            Some(Fault::Panic(message)) => panic!("{message}"),
            Some(Fault::Stall(until)) => {
                let _ = until.recv();
            }
            None => {}
        }
    }
}
