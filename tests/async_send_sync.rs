#![cfg(target_os = "linux")]
//! Compile-time checks of the auto traits a Tokio user relies on: the pool is a cheap,
//! shareable handle, and every future and stream it returns can go to `tokio::spawn`.
//! Nothing here builds a pool: if this file compiles, its checks pass.

use std::future::{Future, IntoFuture};

use futures::Stream;
use procpool::{
    Apply, BuildError, Imap, ImapUnordered, Map, MapHandle, Pool, PoolBuilder, PoolStats,
    ProcessInfo, TaskError, TaskHandle,
};

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}
fn assert_clone<T: Clone>() {}
fn assert_static<T: 'static>() {}
fn assert_unpin<T: Unpin>() {}
fn assert_future<T: Future<Output = O>, O>() {}
fn assert_stream<T: Stream<Item = I>, I>() {}
fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}

/// Checks a borrowed future without running it.
fn assert_send_val<T: Send>(_: &T) {}

#[test]
fn the_pool_is_a_cheap_shareable_handle() {
    assert_send::<Pool>();
    assert_sync::<Pool>();
    assert_clone::<Pool>();
    assert_static::<Pool>();
    assert_send::<PoolBuilder>();
    assert_send::<PoolStats>();
    assert_sync::<PoolStats>();
    assert_send::<ProcessInfo>();
}

#[test]
fn task_handles_are_send_unpin_futures() {
    assert_send::<TaskHandle<u64>>();
    assert_static::<TaskHandle<u64>>();
    assert_unpin::<TaskHandle<u64>>();
    assert_future::<TaskHandle<u64>, Result<u64, TaskError>>();
    // Also for a result type that is Send but not Sync.
    assert_send::<TaskHandle<std::cell::Cell<u8>>>();
}

#[test]
fn the_futures_of_apply_and_map_are_send() {
    assert_send::<Apply<u64>>();
    assert_send::<Map<u64>>();
    assert_send::<<Apply<u64> as IntoFuture>::IntoFuture>();
    assert_static::<<Apply<u64> as IntoFuture>::IntoFuture>();
    assert_future::<<Apply<u64> as IntoFuture>::IntoFuture, Result<u64, TaskError>>();
    assert_send::<<Map<u64> as IntoFuture>::IntoFuture>();
    assert_static::<<Map<u64> as IntoFuture>::IntoFuture>();
    assert_unpin::<<Map<u64> as IntoFuture>::IntoFuture>();
    assert_future::<<Map<u64> as IntoFuture>::IntoFuture, Result<Vec<u64>, TaskError>>();
    assert_send::<<Map<Vec<u8>> as IntoFuture>::IntoFuture>();
    assert_send::<MapHandle<u64>>();
    assert_static::<MapHandle<u64>>();
    assert_unpin::<MapHandle<u64>>();
    assert_future::<MapHandle<u64>, Result<Vec<u64>, TaskError>>();
}

#[test]
fn the_streams_are_send_unpin_streams() {
    assert_send::<Imap<u64>>();
    assert_static::<Imap<u64>>();
    assert_unpin::<Imap<u64>>();
    assert_stream::<Imap<u64>, Result<u64, TaskError>>();
    assert_send::<ImapUnordered<u64>>();
    assert_static::<ImapUnordered<u64>>();
    assert_unpin::<ImapUnordered<u64>>();
    assert_stream::<ImapUnordered<u64>, Result<u64, TaskError>>();
}

#[test]
fn errors_fit_in_a_boxed_error() {
    assert_error::<TaskError>();
    assert_error::<BuildError>();
    assert_clone::<TaskError>();
}

/// The shutdown futures borrow the pool; they are Send too (checked, never run).
#[allow(dead_code)]
fn shutdown_futures_are_send(pool: &Pool) {
    assert_send_val(&pool.join());
    assert_send_val(&pool.terminate());
    assert_send_val(&PoolBuilder::new().build());
}
