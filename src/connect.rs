//! The handshake that turns a started child into a [`Worker`].

use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::chan;
use crate::driver::Worker;
use crate::fdpass::send_with_fds;
use crate::image::build_id;
use crate::protocol::codec::{decode_frame, encode_frame, frame_codec, ReplyCodec};
use crate::protocol::FnRef;
use crate::protocol::{
    FromWorker, InitFailure, ToWorker, HANDSHAKE_FRAME_LIMIT, MAGIC, PROTOCOL_VERSION,
};
use crate::remote::RemoteLink;
use crate::ring::PoolRing;
use crate::start::child::{ChildProc, REAP_BOUND};
use crate::transport::local::Local;
use crate::transport::stream::Stream;
use crate::transport::Link;

/// What a new worker is told about itself.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) index: Option<usize>,
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) max_frame_len: usize,
    pub(crate) initializer: Option<(FnRef, Bytes)>,
    pub(crate) startup_timeout: Duration,
    /// How long the worker polls for its next job after a reply.
    pub(crate) worker_spin: Duration,
    /// Whether replies come through a reply ring ([`crate::ring`]).
    pub(crate) ring: bool,
    /// Results from this size on go back in shared memory, with `ring` (0: never).
    pub(crate) shared_min: usize,
    /// `Some(keys)`: the environment variables the worker keeps.
    pub(crate) env: Option<Vec<String>>,
    /// The sandbox the worker shuts itself in before its first job.
    pub(crate) sandbox: Option<crate::sandbox::SandboxSpec>,
}

/// A started worker's channel: a socket (a local worker) or the link of a worker on
/// another machine.
#[derive(Debug)]
pub(crate) enum Channel {
    Socket(std::os::unix::net::UnixStream),
    Remote(RemoteLink),
}

/// Checks a worker's hello: a procpool worker of our protocol and build.
fn check_hello(frame: &[u8]) -> Result<(), String> {
    let hello = match decode_frame::<FromWorker>(frame) {
        Ok((FromWorker::Hello(hello), _)) => hello,
        _ => return Err("its first message was not a procpool hello".to_string()),
    };
    if hello.magic != MAGIC || hello.protocol != PROTOCOL_VERSION {
        return Err(format!(
            "it speaks protocol {}, the pool {PROTOCOL_VERSION}",
            hello.protocol
        ));
    }
    if hello.build_id != build_id() {
        let hex = |id: &[u8]| id.iter().map(|b| format!("{b:02x}")).collect::<String>();
        return Err(format!(
            "it runs another build of the program: build {}, the pool's {}",
            hex(&hello.build_id),
            hex(build_id())
        ));
    }
    Ok(())
}

/// The setup message for `setup`, encoded.
fn setup_message(setup: &Setup) -> Result<Vec<u8>, String> {
    let (initializer, init_args) = match &setup.initializer {
        Some((f, args)) => (Some(*f), args.clone()),
        None => (None, bytes::Bytes::new()),
    };
    let message = ToWorker::Setup {
        protocol: PROTOCOL_VERSION,
        build_id: build_id().to_vec(),
        index: setup.index,
        name: setup.name.clone(),
        daemon: setup.daemon,
        max_frame_len: setup.max_frame_len,
        spin_us: setup.worker_spin.as_micros().min(u32::MAX as u128) as u32,
        ring: setup.ring,
        shared_min: if setup.ring {
            setup.shared_min as u64
        } else {
            0
        },
        initializer,
        env: setup.env.clone(),
        sandbox: setup.sandbox.clone(),
    };
    let message = encode_frame(&message, |out| {
        out.extend_from_slice(&init_args);
        Ok(())
    })?;
    if message.len() > setup.max_frame_len {
        return Err(format!(
            "the initializer's argument is {} bytes encoded, over the frame limit of {} bytes",
            message.len(),
            setup.max_frame_len
        ));
    }
    Ok(message)
}

/// Checks the worker's answer to the setup.
fn check_ready(frame: Option<std::io::Result<bytes::BytesMut>>) -> Result<(), String> {
    let frame = frame
        .ok_or("it exited during start-up (does main call procpool::init() first?)")?
        .map_err(|e| format!("bad handshake frame: {e}"))?;
    match decode_frame::<FromWorker>(&frame) {
        Ok((FromWorker::Ready, _)) => Ok(()),
        Ok((FromWorker::InitFailed(InitFailure::Panicked(p)), _)) => {
            Err(format!("its initializer {p}"))
        }
        Ok((FromWorker::InitFailed(InitFailure::Refused(why)), _)) => {
            Err(format!("it refused the setup: {why}"))
        }
        _ => Err("unexpected message during start-up".to_string()),
    }
}

/// The handshake over a remote worker's link (always the stream transport).
async fn remote_handshake(remote: RemoteLink, setup: &Setup) -> Result<Link, String> {
    let mut reader = FramedRead::new(remote.read, frame_codec(HANDSHAKE_FRAME_LIMIT));
    let mut writer = FramedWrite::new(remote.write, frame_codec(setup.max_frame_len));
    let frame = reader
        .next()
        .await
        .ok_or_else(|| format!("its link ({}) closed before the handshake", remote.launcher))?
        .map_err(|e| format!("bad handshake frame: {e}"))?;
    check_hello(&frame)?;
    writer
        .send(bytes::Bytes::from(setup_message(setup)?))
        .await
        .map_err(|e| format!("could not send setup: {e}"))?;
    check_ready(reader.next().await)?;
    let parts = reader.into_parts();
    let mut reader = FramedRead::new(parts.io, ReplyCodec::new(setup.max_frame_len));
    reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
    Ok(Link::Stream(Stream::new(reader, writer.into_inner())))
}

/// Takes a freshly started worker through the handshake: its hello, our setup, its
/// initializer, its ready. Bounded by `setup.startup_timeout`; on failure the child is
/// killed and reaped, and the error says how it ended.
pub(crate) async fn connect(
    mut child: ChildProc,
    channel: Channel,
    setup: Setup,
) -> Result<Worker, String> {
    let mut pid = child.pid();
    let remote = match &channel {
        Channel::Remote(link) => Some(link.info.clone()),
        Channel::Socket(_) => None,
    };
    let handshake = async {
        let sock = match channel {
            Channel::Socket(sock) => sock,
            Channel::Remote(link) => return remote_handshake(link, &setup).await,
        };
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let sock = tokio::net::UnixStream::from_std(sock).map_err(|e| e.to_string())?;
        let (rd, wr) = sock.into_split();
        let mut reader = FramedRead::new(rd, frame_codec(HANDSHAKE_FRAME_LIMIT));
        let mut writer = FramedWrite::new(wr, frame_codec(setup.max_frame_len));
        let frame = reader
            .next()
            .await
            .ok_or("it closed its channel before the handshake")?
            .map_err(|e| format!("bad handshake frame: {e}"))?;
        check_hello(&frame)?;
        let message = setup_message(&setup)?;
        let ring = match setup.ring {
            true => {
                let (ring, fd) = PoolRing::create()
                    .map_err(|e| format!("could not make its reply ring: {e}"))?;
                let mut wire = (message.len() as u32).to_be_bytes().to_vec();
                wire.extend_from_slice(&message);
                send_with_fds(writer.get_ref().as_ref(), &wire, &[fd.as_raw_fd()])
                    .await
                    .map_err(|e| format!("could not send setup: {e}"))?;
                Some(ring)
            }
            false => {
                writer
                    .send(bytes::Bytes::from(message))
                    .await
                    .map_err(|e| format!("could not send setup: {e}"))?;
                None
            }
        };
        check_ready(reader.next().await)?;
        // From here on the channel is registered for reading only (see `chan`).
        let parts = reader.into_parts();
        let sock = parts
            .io
            .reunite(writer.into_inner())
            .map_err(|e| e.to_string())?
            .into_std()
            .map_err(|e| e.to_string())?;
        let (rd, wr) = chan::split(sock.into()).map_err(|e| e.to_string())?;
        let codec = ReplyCodec::new(setup.max_frame_len);
        let link = match ring {
            Some(ring) => {
                let mut reader = FramedRead::new(rd, codec);
                reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
                Link::Local(Local::new(reader, wr, ring))
            }
            None => {
                let mut reader = FramedRead::new(Box::new(rd) as _, codec);
                reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
                Link::Stream(Stream::new(reader, Box::new(wr)))
            }
        };
        Ok(link)
    };
    let result = tokio::time::timeout(setup.startup_timeout, handshake).await;
    if let Some(remote_pid) = remote.as_ref().and_then(|r| r.pid()) {
        // A remote worker is known by its pid on its host.
        pid = remote_pid;
    }
    let failure = match result {
        Ok(Ok(link)) => {
            return Ok(Worker {
                pid,
                child,
                link,
                remote,
            })
        }
        Ok(Err(why)) => why,
        Err(_) => format!(
            "it did not finish its handshake within {:?}",
            setup.startup_timeout
        ),
    };
    let exit = match child.exit() {
        Some(exit) => Some(exit),
        None => match tokio::time::timeout(Duration::from_millis(200), child.wait()).await {
            Ok(exit) => Some(exit),
            Err(_) => child.kill_and_reap(REAP_BOUND).await,
        },
    };
    Err(match exit {
        Some(exit) => format!("worker {pid} failed to start ({exit}): {failure}"),
        None => format!("worker {pid} failed to start: {failure}"),
    })
}
