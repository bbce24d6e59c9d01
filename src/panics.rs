//! A task's panic, captured in the worker for its caller: the panic hook records the
//! message and location instead of printing them, and the caught payload becomes a
//! [`RemotePanic`].

use std::any::Any;
use std::cell::RefCell;

use crate::error::RemotePanic;

thread_local! {
    /// Set while a task runs on this thread: the panic hook records into it instead of
    /// printing.
    static CAPTURE: RefCell<Option<Option<RemotePanic>>> = const { RefCell::new(None) };
}

/// Turns a caught panic's payload into a [`RemotePanic`], using what the hook recorded.
pub(crate) fn panic_from_payload(payload: Box<dyn Any + Send>) -> RemotePanic {
    let recorded = CAPTURE.with(|c| c.borrow_mut().as_mut().and_then(Option::take));
    recorded.unwrap_or_else(|| RemotePanic::new(payload_message(&*payload), None))
}

/// The text of a panic's payload.
pub(crate) fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// Panics on the task thread are recorded for the caller instead of printed; panics on
/// other threads (ones a task started) go to the previous hook.
///
/// Installed once per process lineage: a `Fork` parent installs it before its first
/// fork (it passes every panic of the parent's own threads on to the previous hook), so
/// that a forked child never takes the hook lock, which another thread of the parent
/// may have held at the fork.
pub(crate) fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(install_capturing_hook);
}

fn install_capturing_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let captured = CAPTURE.with(|c| {
            let mut slot = c.borrow_mut();
            match slot.as_mut() {
                Some(inner) => {
                    let location = info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                    *inner = Some(RemotePanic::new(payload_message(info.payload()), location));
                    true
                }
                None => false,
            }
        });
        if !captured {
            previous(info);
        }
    }));
}

/// From now on, panics on this thread are recorded for the caller, not printed.
pub(crate) fn capture_panics() {
    install_panic_hook();
    CAPTURE.with(|c| *c.borrow_mut() = Some(None));
}
