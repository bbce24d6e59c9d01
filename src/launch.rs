//! [`Starter`]: a pool's way of starting workers by its [`StartMethod`], with the state
//! it needs (the fork server). What runs in a child forked from this process is the
//! worker's loop, [`crate::worker::serve`].

use std::io;
use std::os::unix::net::UnixStream;

use crate::output::{ChildStdio, WorkerOutput};
use crate::start::child::ChildProc;
use crate::start::{fds, fork, forkserver, spawn, ChildOptions, StartMethod};

/// A pool's way of starting workers, with the state it needs.
#[derive(Debug)]
pub(crate) enum Starter {
    /// With the environment variables the workers keep (`None`: all).
    Spawn(Option<Vec<String>>),
    Fork,
    ForkServer(Box<forkserver::ForkServer>),
}

impl Starter {
    /// `output` says where a fork server's own stdout and stderr go.
    pub(crate) fn new(
        method: StartMethod,
        preload: Option<(crate::protocol::FnRef, bytes::Bytes)>,
        startup_timeout: std::time::Duration,
        env: Option<Vec<String>>,
        output: (WorkerOutput, WorkerOutput),
    ) -> Self {
        fds::read_test_switch();
        match method {
            StartMethod::Spawn => Starter::Spawn(env),
            StartMethod::Fork => Starter::Fork,
            StartMethod::ForkServer => Starter::ForkServer(Box::new(forkserver::ForkServer::new(
                preload,
                startup_timeout,
                output,
            ))),
        }
    }

    /// Starts one worker with `stdio` as its standard descriptors; returns the child
    /// and our end of its channel.
    pub(crate) async fn start(
        &self,
        opts: ChildOptions,
        stdio: ChildStdio,
    ) -> io::Result<(ChildProc, UnixStream)> {
        match self {
            Starter::Spawn(env) => spawn::spawn_worker(opts, stdio, env.clone()).await,
            Starter::Fork => fork::fork_worker(opts, stdio, crate::worker::serve).await,
            Starter::ForkServer(server) => server.fork_worker(opts, stdio).await,
        }
    }

    /// Releases what the starter holds (the fork server).
    pub(crate) async fn shutdown(&self) {
        if let Starter::ForkServer(server) = self {
            server.shutdown().await;
        }
    }
}
