//! Tracing hooks, compiled only with the `tracing` feature.

/// `tracing::event!` with the `tracing` feature; nothing without it (the arguments
/// are not even evaluated).
macro_rules! event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        ::tracing::event!(target: "procpool", $($arg)*);
    };
}

pub(crate) use event;
