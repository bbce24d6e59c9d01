//! What a worker's reply to a job means for its caller: the one mapping from a
//! worker's [`Outcome`] to results or a [`TaskError`], for pools and `Process` alike.

use crate::error::{Payload, TaskError};
use crate::protocol::codec::ReplyFrame;
use crate::protocol::results::Results;
use crate::protocol::Outcome;

/// The caller's reply to a job whose reply `frame` says `outcome`, its payload the
/// frame's last `payload_len` bytes; `max_frame_len` is the limit a result went over.
#[inline]
pub(crate) fn reply_of(
    outcome: Outcome,
    frame: ReplyFrame,
    payload_len: usize,
    max_frame_len: usize,
) -> Result<Results, TaskError> {
    match outcome {
        // The typed side turns each task's panic into `TaskError::Panicked`.
        Outcome::Ok { .. } => Ok(frame.into_results(payload_len)),
        failure => Err(error_of(failure, max_frame_len)),
    }
}

/// The error a failed job's callers get; see [`reply_of`].
fn error_of(failure: Outcome, max_frame_len: usize) -> TaskError {
    match failure {
        Outcome::BadArguments(message) => TaskError::Codec {
            what: Payload::Argument,
            message,
        },
        Outcome::BadResult(message) => TaskError::Codec {
            what: Payload::Result,
            message,
        },
        Outcome::ResultTooLarge { size } => TaskError::TooLarge {
            what: Payload::Result,
            size,
            limit: max_frame_len,
        },
        Outcome::Unresolvable(why) => TaskError::Unsupported(why),
        Outcome::Ok { .. } => TaskError::Protocol("a job that succeeded reported as failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure a worker can report maps to the error a caller expects, the same
    /// for a pool's task and a `Process`'s function (which once differed: an
    /// unresolvable function was `Codec` from a `Process`).
    #[test]
    fn each_failure_has_its_error() {
        let frame = || ReplyFrame::from(bytes::BytesMut::new());
        type Is = fn(&TaskError) -> bool;
        let cases: Vec<(Outcome, Is)> = vec![
            (
                Outcome::Unresolvable("gone".into()),
                |e| matches!(e, TaskError::Unsupported(why) if why == "gone"),
            ),
            (Outcome::BadArguments("a".into()), |e| {
                matches!(
                    e,
                    TaskError::Codec {
                        what: Payload::Argument,
                        ..
                    }
                )
            }),
            (Outcome::BadResult("r".into()), |e| {
                matches!(
                    e,
                    TaskError::Codec {
                        what: Payload::Result,
                        ..
                    }
                )
            }),
            (Outcome::ResultTooLarge { size: 9 }, |e| {
                matches!(
                    e,
                    TaskError::TooLarge {
                        what: Payload::Result,
                        size: 9,
                        limit: 8
                    }
                )
            }),
        ];
        for (outcome, is) in cases {
            let shown = format!("{outcome:?}");
            let error = reply_of(outcome, frame(), 0, 8).expect_err(&shown);
            assert!(is(&error), "{shown} became {error:?}");
        }
    }
}
