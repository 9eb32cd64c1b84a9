//! Typed queues: serde values through the bincode codec, wrong payloads, custom codecs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf::{Codec, DeadReason, Error, PushOptions, TypedDelivery, TypedQueue, Wharf};

use crate::small;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Size {
    Thumb,
    Fit { width: u32, height: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Resize {
    photo: u64,
    owner: String,
    sizes: Vec<Size>,
    note: Option<String>,
    bytes: Vec<u8>,
}

fn resize(i: u64) -> Resize {
    Resize {
        photo: i,
        owner: format!("user-{i}"),
        sizes: vec![Size::Thumb, Size::Fit { width: 640, height: u32::MAX }],
        note: i.is_multiple_of(2).then(|| "ünïcödé".to_owned()),
        bytes: (0..=255).collect(),
    }
}

#[test]
fn typed_values_are_send_and_sync_whatever_the_type() {
    fn check<T: Send + Sync>() {}
    check::<TypedQueue<Resize>>();
    check::<TypedDelivery<Resize>>();
    // `Rc` is neither Send nor Sync, but no value is ever held by the queue or the delivery.
    check::<TypedQueue<std::rc::Rc<u8>>>();
    check::<TypedDelivery<std::rc::Rc<u8>>>();
}

#[test]
fn a_serde_struct_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q: TypedQueue<Resize> = TypedQueue::new(w.queue("resize").unwrap());
    let id = q.push(&resize(1)).unwrap();
    q.push_with(&resize(2), PushOptions::new().priority(9)).unwrap();
    q.push_batch(&[resize(3), resize(4)]).unwrap();

    let first = q.pop().unwrap();
    assert_eq!(first.value().unwrap(), resize(2), "priority 9 first");
    assert_eq!(first.value().unwrap(), resize(2), "value() decodes again");
    assert_eq!(first.attempt(), 1);
    first.ack().unwrap();
    let next = q.try_pop().unwrap().unwrap();
    assert_eq!((next.id(), next.value().unwrap()), (id, resize(1)));
    // The untyped view sees the codec's bytes.
    assert_eq!(wharf::Bincode.decode(next.payload()).ok(), Some(resize(1)));
    next.ack().unwrap();
    let rest = q.pop_batch(10, Duration::ZERO).unwrap();
    let values: Vec<Resize> = rest.iter().map(|d| d.value().unwrap()).collect();
    assert_eq!(values, [resize(3), resize(4)]);
    for d in rest {
        d.ack().unwrap();
    }
    assert!(q.pop_timeout(Duration::from_millis(1)).unwrap().is_none());
    assert_eq!(q.queue().stats().unwrap().processed, 4);
}

#[test]
fn a_payload_of_another_type_is_a_codec_error_and_can_be_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let raw = w.queue("resize").unwrap();
    let q: TypedQueue<Resize> = TypedQueue::new(raw.clone());
    raw.push(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").unwrap(); // not bincode
    TypedQueue::<String>::new(raw.clone()).push(&"a string".to_owned()).unwrap();
    raw.push(b"").unwrap();
    q.push(&resize(7)).unwrap();

    for _ in 0..3 {
        let job = q.pop().unwrap();
        let err = job.value().unwrap_err();
        assert!(matches!(err, Error::Codec(_)), "{err:?}");
        assert!(err.to_string().contains("Resize"), "names the type: {err}");
        job.dead_letter(&err.to_string()).unwrap();
    }
    // A good message behind the bad ones is untouched.
    let good = q.pop().unwrap();
    assert_eq!(good.value().unwrap(), resize(7));
    good.ack().unwrap();

    let dlq = raw.dead_letter_queue().unwrap().unwrap();
    let dead = dlq.peek(10).unwrap();
    assert_eq!(dead.len(), 3);
    for d in &dead {
        assert_eq!(d.dead_lettered_from, Some(("resize".to_owned(), DeadReason::Explicit)));
        assert!(d.last_error.as_deref().unwrap().starts_with("payload codec: decoding a "));
    }
    assert_eq!(dead[0].payload, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff");
}

#[test]
fn bytes_left_over_after_a_value_are_refused() {
    // A `u8` decodes from the first byte of almost anything: the rest gives it away.
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q: TypedQueue<Resize> = TypedQueue::new(w.queue("q").unwrap());
    q.push(&resize(1)).unwrap();
    let as_u8: TypedQueue<u8> = TypedQueue::new(q.queue().clone());
    let job = as_u8.pop().unwrap();
    let err = job.value().unwrap_err();
    assert!(err.to_string().contains("left over"), "{err}");
    // Releasing it keeps it for a consumer of the right type.
    job.release().unwrap();
    assert_eq!(q.pop().unwrap().value().unwrap(), resize(1));
}

#[test]
fn typed_messages_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let w = small().open(dir.path()).unwrap();
        let q: TypedQueue<Resize> = TypedQueue::new(w.queue("resize").unwrap());
        q.push_batch(&[resize(1), resize(2)]).unwrap();
        let held = q.pop().unwrap(); // in flight at the close
        assert_eq!(held.value().unwrap(), resize(1));
        w.close().unwrap();
    }
    let w = Wharf::open(dir.path()).unwrap();
    let q: TypedQueue<Resize> = TypedQueue::new(w.queue("resize").unwrap());
    let again = q.pop().unwrap();
    assert_eq!((again.value().unwrap(), again.attempt()), (resize(1), 2));
    again.ack().unwrap();
    let second = q.pop().unwrap();
    assert_eq!((second.value().unwrap(), second.attempt()), (resize(2), 1));
    second.ack().unwrap();
}

/// Upper-case ASCII text, refusing anything else.
struct Shouting;

impl Codec<String> for Shouting {
    fn encode(&self, value: &String) -> wharf::Result<Vec<u8>> {
        if value.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(Error::Codec(format!("{value:?} is not shouted")));
        }
        Ok(value.as_bytes().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> wharf::Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::Codec(e.to_string()))
    }
}

#[test]
fn a_custom_codec_is_used_both_ways_and_an_encode_error_pushes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let w = small().open(dir.path()).unwrap();
    let q = TypedQueue::with_codec(w.queue("q").unwrap(), Shouting);
    q.push(&"HELLO".to_owned()).unwrap();
    let err = q.push_batch(&["OK".to_owned(), "quiet".to_owned()]).unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err:?}");
    assert_eq!(q.queue().depth().unwrap().ready, 1, "a failed batch pushes nothing");
    let job = q.pop().unwrap();
    assert_eq!((job.payload(), job.value().unwrap()), (&b"HELLO"[..], "HELLO".to_owned()));
    job.into_delivery().ack().unwrap();
}
