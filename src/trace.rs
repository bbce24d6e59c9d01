//! Tracing hooks, compiled only with the `tracing` feature.

/// `tracing::event!` with the `tracing` feature; nothing without it (the arguments
/// are not even evaluated).
macro_rules! event {
    ($($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        ::tracing::event!(target: "procpool", $($arg)*);
    };
}

/// With the `tracing` feature, runs a worker's driver inside a `worker` span carrying
/// its pid and slot, so that every event of its jobs says which worker it concerns.
macro_rules! in_worker_span {
    ($pid:expr, $index:expr, $fut:expr) => {{
        #[cfg(feature = "tracing")]
        let fut = ::tracing::Instrument::instrument(
            $fut,
            ::tracing::info_span!(target: "procpool", "worker", pid = $pid, index = $index),
        );
        #[cfg(not(feature = "tracing"))]
        let fut = {
            let _ = (&$pid, &$index);
            $fut
        };
        fut
    }};
}

pub(crate) use {event, in_worker_span};
