#![cfg(target_os = "linux")]
//! The wire: frame limits on arguments and results, byte payloads of a few MiB,
//! values that cannot be encoded or decoded, and a task's own stdout.
procpool::enable_test_support!();
mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use procpool::{Payload, Pool, TaskError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use support::{whoami, within};

const LIMIT: usize = 64 * 1024;

fn byte_len(v: Vec<u8>) -> usize {
    v.len()
}

fn string_len(s: String) -> usize {
    s.len()
}

fn make_bytes(n: usize) -> Vec<u8> {
    vec![0xa5; n]
}

fn make_string(n: usize) -> String {
    "x".repeat(n)
}

fn reverse(mut v: Vec<u8>) -> Vec<u8> {
    v.reverse();
    v
}

fn xor_bytes(b: Bytes) -> Bytes {
    b.iter().map(|x| x ^ 0x5a).collect::<Vec<u8>>().into()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn chatty(x: u32) -> u32 {
    println!("procpool test: task {x} prints to stdout");
    eprintln!("procpool test: task {x} prints to stderr");
    x + 1
}

/// Encodes fine, except the value 13, which refuses to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
struct Fussy(u32);

impl Serialize for Fussy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("Fussy(13) refuses to be encoded"));
        }
        s.serialize_u32(self.0)
    }
}

fn fussy_echo(x: Fussy) -> Fussy {
    x
}

fn fussy_from(x: u32) -> Fussy {
    Fussy(x)
}

/// Decodes only even numbers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Even(u32);

impl<'de> Deserialize<'de> for Even {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n % 2 == 0 {
            Ok(Even(n))
        } else {
            Err(serde::de::Error::custom(format!("{n} is odd")))
        }
    }
}

fn even_half(x: Even) -> u32 {
    x.0 / 2
}

fn even_from(x: u32) -> Even {
    Even(x)
}

/// Untagged enums need `deserialize_any`, which postcard does not support.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Number(u32),
    Text(String),
}

fn loose_echo(x: Loose) -> u32 {
    match x {
        Loose::Number(n) => n,
        Loose::Text(s) => s.len() as u32,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle { r: f64 },
    Rect(u32, u32),
    Empty,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Everything {
    small: i8,
    big: u128,
    neg: i64,
    float: f64,
    ch: char,
    text: String,
    maybe: Option<Box<Everything>>,
    list: Vec<Shape>,
    map: BTreeMap<String, (u16, bool)>,
    unit: (),
}

fn echo_everything(x: Everything) -> Everything {
    x
}

async fn limited_pool(processes: usize) -> Pool {
    within(
        "build",
        support::builder()
            .processes(processes)
            .max_frame_len(LIMIT)
            .build(),
    )
    .await
    .expect("build")
}

#[tokio::test]
async fn an_argument_over_the_frame_limit_fails_only_its_task() {
    let pool = limited_pool(1).await;
    let pids = support::worker_pids(&pool);

    let err = within("too large", pool.apply(byte_len, vec![7u8; 100_000]))
        .await
        .expect_err("over the limit");
    match err {
        TaskError::TooLarge {
            what: Payload::Argument,
            size,
            limit,
        } => {
            assert!(size >= 100_000, "size {size}");
            assert_eq!(limit, LIMIT);
        }
        other => panic!("expected TooLarge {{ Argument }}, got {other:?}"),
    }
    assert!(err.to_string().contains("argument"), "{err}");

    let err = within("string", pool.apply(string_len, "y".repeat(100_000))).await;
    assert!(
        matches!(
            err,
            Err(TaskError::TooLarge {
                what: Payload::Argument,
                ..
            })
        ),
        "{err:?}"
    );

    // The next task on the same pool and worker succeeds, and so does one just under.
    assert_eq!(
        within("next", pool.apply(byte_len, vec![1u8; 1000])).await,
        Ok(1000)
    );
    assert_eq!(
        within("under", pool.apply(byte_len, vec![1u8; 60_000])).await,
        Ok(60_000)
    );
    assert_eq!(support::worker_pids(&pool), pids);
    assert_eq!(pool.stats().workers_crashed, 0);
    pool.terminate().await;
}

#[tokio::test]
async fn a_result_over_the_frame_limit_fails_only_its_task() {
    let pool = limited_pool(1).await;
    let pids = support::worker_pids(&pool);

    let err = within("too large", pool.apply(make_bytes, 100_000))
        .await
        .expect_err("over");
    match err {
        TaskError::TooLarge {
            what: Payload::Result,
            size,
            limit,
        } => {
            assert!(size >= 100_000, "size {size}");
            assert_eq!(limit, LIMIT);
        }
        other => panic!("expected TooLarge {{ Result }}, got {other:?}"),
    }
    let err = within("string", pool.apply(make_string, 70_000)).await;
    assert!(
        matches!(
            err,
            Err(TaskError::TooLarge {
                what: Payload::Result,
                ..
            })
        ),
        "{err:?}"
    );

    assert_eq!(
        within("next", pool.apply(make_bytes, 10)).await,
        Ok(vec![0xa5; 10])
    );
    let under = within("under", pool.apply(make_bytes, 60_000))
        .await
        .expect("under the limit");
    assert_eq!(under.len(), 60_000);
    assert_eq!(support::worker_pids(&pool), pids, "the worker kept serving");
    assert_eq!(pool.stats().workers_crashed, 0);
    pool.terminate().await;
}

#[tokio::test]
async fn the_frame_limit_applies_to_a_whole_chunk() {
    let pool = limited_pool(2).await;
    let items = vec![vec![3u8; 20_000]; 8];
    // Eight items of 20 kB in one chunk are over the limit; one per chunk is fine.
    let err = within("big chunk", pool.map(byte_len, items.clone()).chunk_size(8)).await;
    assert!(
        matches!(
            err,
            Err(TaskError::TooLarge {
                what: Payload::Argument,
                ..
            })
        ),
        "{err:?}"
    );
    let ok = within("small chunks", pool.map(byte_len, items).chunk_size(1)).await;
    assert_eq!(ok, Ok(vec![20_000; 8]));

    // Results: a chunk of eight 20 kB results fails as a whole, item by item in imap.
    let got: Vec<_> = within(
        "imap",
        pool.imap(make_bytes, vec![20_000usize; 8])
            .chunk_size(8)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got.len(), 8);
    assert!(got.iter().all(|r| matches!(
        r,
        Err(TaskError::TooLarge {
            what: Payload::Result,
            ..
        })
    )));
    let got: Vec<_> = within(
        "imap",
        pool.imap(make_bytes, vec![20_000usize; 8])
            .chunk_size(1)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(got.iter().all(|r| r.as_ref().map(Vec::len) == Ok(20_000)));
    pool.terminate().await;
}

#[tokio::test]
#[should_panic(expected = "max_frame_len")]
async fn a_frame_limit_below_one_kib_is_refused() {
    let _ = support::builder().max_frame_len(1000);
}

#[tokio::test]
async fn byte_vectors_of_a_few_mib_round_trip_intact() {
    let pool = support::pool(2).await;
    for (n, seed) in [
        (0usize, 0u8),
        (1, 1),
        (255, 2),
        (4 << 20, 3),
        ((3 << 20) + 7, 4),
    ] {
        let data = pattern(n, seed);
        let mut want = data.clone();
        want.reverse();
        let got = within("reverse", pool.apply(reverse, data))
            .await
            .expect("task");
        assert_eq!(got.len(), n);
        assert!(got == want, "{n} bytes came back altered");
    }
    // High bytes only: a byte-per-element encoding would be twice as large.
    let got = within("0xff", pool.apply(byte_len, vec![0xffu8; 4 << 20])).await;
    assert_eq!(got, Ok(4 << 20));
    pool.terminate().await;
}

#[tokio::test]
async fn bytes_payloads_of_a_few_mib_round_trip_intact() {
    let pool = support::pool(2).await;
    let data = Bytes::from(pattern(5 << 20, 9));
    let want: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
    let got = within("xor", pool.apply(xor_bytes, data.clone()))
        .await
        .expect("task");
    assert_eq!(got.len(), 5 << 20);
    assert!(got[..] == want[..], "the bytes came back altered");

    // Several at once, through map.
    let parts: Vec<Bytes> = (0..6u8).map(|i| Bytes::from(pattern(1 << 20, i))).collect();
    let got = within("map", pool.map(xor_bytes, parts.clone()).chunk_size(1))
        .await
        .unwrap();
    for (p, g) in parts.iter().zip(&got) {
        assert!(p.iter().zip(g.iter()).all(|(a, b)| a ^ 0x5a == *b));
        assert_eq!(p.len(), g.len());
    }
    pool.terminate().await;
}

/// A large `Vec<u8>` or `Bytes` argument of `apply` is written from where it is, behind
/// a frame that holds only the header (from 64 KiB on). Around that size, and with many
/// such jobs in flight at once (so that writes stop part-way through them), every
/// argument still arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_byte_arguments_sent_in_place_arrive_whole() {
    let pool = support::pool(2).await;
    let sizes = [
        (64 << 10) - 1,
        64 << 10,
        (64 << 10) + 1,
        200_000,
        1 << 20,
        (3 << 20) + 5,
        // Larger than the socket's buffer: written in several goes.
        (9 << 20) + 3,
    ];
    // All submitted before any is awaited: the pool has many of them in flight.
    let mut vecs = Vec::new();
    let mut bytes = Vec::new();
    for (i, &n) in sizes.iter().cycle().take(28).enumerate() {
        let data = pattern(n, i as u8);
        if i % 2 == 0 {
            let mut want = data.clone();
            want.reverse();
            vecs.push((want, pool.apply_async(reverse, data)));
        } else {
            let want: Vec<u8> = data.iter().map(|b| b ^ 0x5a).collect();
            bytes.push((want, pool.apply_async(xor_bytes, Bytes::from(data))));
        }
    }
    for (i, (want, handle)) in vecs.into_iter().enumerate() {
        let got = within("Vec<u8> in place", handle).await.expect("task");
        assert!(
            got == want,
            "Vec argument {i} ({} bytes) came back altered",
            want.len()
        );
    }
    for (i, (want, handle)) in bytes.into_iter().enumerate() {
        let got = within("Bytes in place", handle).await.expect("task");
        assert!(
            got[..] == want[..],
            "Bytes argument {i} ({} bytes) came back altered",
            want.len()
        );
    }
    let stats = pool.stats();
    assert_eq!(stats.workers_crashed, 0, "{stats:?}");
    pool.terminate().await;
}

#[tokio::test]
async fn structured_values_round_trip_intact() {
    let pool = support::pool(1).await;
    let inner = Everything {
        small: -128,
        big: u128::MAX - 1,
        neg: i64::MIN,
        float: -0.125,
        ch: 'ß',
        text: "日本語 and emoji 🦀".into(),
        maybe: None,
        list: vec![],
        map: BTreeMap::new(),
        unit: (),
    };
    let value = Everything {
        small: 5,
        big: 1 << 100,
        neg: -42,
        float: f64::MAX,
        ch: '\u{10FFFF}',
        text: String::new(),
        maybe: Some(Box::new(inner)),
        list: vec![Shape::Circle { r: 1.5 }, Shape::Rect(2, 3), Shape::Empty],
        map: [
            ("a".to_string(), (1u16, true)),
            ("b".to_string(), (65535, false)),
        ]
        .into_iter()
        .collect(),
        unit: (),
    };
    let got = within("echo", pool.apply(echo_everything, value.clone())).await;
    assert_eq!(got, Ok(value));
    pool.terminate().await;
}

#[tokio::test]
async fn values_that_cannot_be_encoded_or_decoded_fail_only_their_task() {
    let pool = support::pool(1).await;
    let pids = support::worker_pids(&pool);

    // Argument that cannot be encoded (here, in the caller). (postcard reports custom
    // serde errors without their text, so only the kind is checked.)
    let err = within("encode arg", pool.apply(fussy_echo, Fussy(13)))
        .await
        .unwrap_err();
    match &err {
        TaskError::Codec {
            what: Payload::Argument,
            message,
        } => assert!(!message.is_empty()),
        other => panic!("expected Codec {{ Argument }}, got {other:?}"),
    }
    // (A result that cannot be encoded: see the next test.)
    // Argument that the worker cannot decode.
    let err = within("decode arg", pool.apply(even_half, Even(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TaskError::Codec {
                what: Payload::Argument,
                ..
            }
        ),
        "{err:?}"
    );
    // Result that the caller cannot decode.
    let err = within("decode result", pool.apply(even_from, 5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TaskError::Codec {
                what: Payload::Result,
                ..
            }
        ),
        "{err:?}"
    );
    // A type the format cannot decode at all.
    let err = within("untagged", pool.apply(loose_echo, Loose::Number(4)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::Codec {
                what: Payload::Argument,
                ..
            }
        ),
        "{err:?}"
    );

    // Good values still pass, on the same worker.
    assert_eq!(
        within("fussy ok", pool.apply(fussy_echo, Fussy(12))).await,
        Ok(Fussy(12))
    );
    assert_eq!(
        within("even ok", pool.apply(even_half, Even(8))).await,
        Ok(4)
    );
    assert_eq!(support::worker_pids(&pool), pids);

    // In imap with chunks of one, only the bad item fails.
    let got: Vec<_> = within(
        "imap",
        pool.imap(fussy_echo, (10..16).map(Fussy))
            .chunk_size(1)
            .collect::<Vec<_>>(),
    )
    .await;
    for (i, r) in (10..16).zip(&got) {
        if i == 13 {
            assert!(
                matches!(
                    r,
                    Err(TaskError::Codec {
                        what: Payload::Argument,
                        ..
                    })
                ),
                "{r:?}"
            );
        } else {
            assert_eq!(r, &Ok(Fussy(i)));
        }
    }
    // In map, the first error.
    let err = within("map", pool.map(even_from, 0..10u32))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TaskError::Codec {
                what: Payload::Result,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(support::worker_pids(&pool), pids);
    assert_eq!(pool.stats().workers_crashed, 0);
    pool.terminate().await;
}

#[tokio::test]
async fn a_result_that_cannot_be_encoded_fails_only_its_task() {
    let pool = support::pool(1).await;
    let pids = support::worker_pids(&pool);
    let err = within("encode result", pool.apply(fussy_from, 13))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TaskError::Codec {
                what: Payload::Result,
                ..
            }
        ),
        "expected Codec {{ Result }}, got {err:?}"
    );
    assert_eq!(
        within("next", pool.apply(fussy_from, 12)).await,
        Ok(Fussy(12))
    );
    assert_eq!(support::worker_pids(&pool), pids, "the worker kept serving");
    pool.terminate().await;
}

#[tokio::test]
async fn printing_from_a_task_does_not_disturb_the_protocol() {
    // The workers' output is captured into memory, out of the test run's output.
    let (lines, captured) = support::collector();
    let pool = within(
        "build",
        support::builder()
            .processes(2)
            .stdout(captured.clone())
            .stderr(captured)
            .build(),
    )
    .await
    .expect("pool builds");
    let got = within("map", pool.map(chatty, 0..6u32).chunk_size(1))
        .await
        .unwrap();
    assert_eq!(got, (1..7).collect::<Vec<_>>());
    assert_eq!(within("apply", pool.apply(chatty, 100)).await, Ok(101));
    let pids = support::worker_pids(&pool);
    assert!(pids.contains(&within("pid", pool.apply(whoami, ())).await.unwrap()));
    assert_eq!(pool.stats().workers_crashed, 0);
    // What the tasks printed came through the pipes, each on its stream. (Not under
    // `Fork`: a forked worker is a copy of a test thread, whose `println!` the test
    // harness captures in memory.)
    if support::start_method() != procpool::StartMethod::Fork {
        for x in [0, 5, 100] {
            for (stream, name) in [
                (procpool::OutputStream::Stdout, "stdout"),
                (procpool::OutputStream::Stderr, "stderr"),
            ] {
                let want = format!("procpool test: task {x} prints to {name}");
                assert!(
                    support::arrives(&lines, |l| l.1 == stream && l.2 == want).await,
                    "{want}: {}",
                    support::shown(&lines)
                );
            }
        }
    }
    pool.terminate().await;
}
