//! `TypedQueue<T>`: a [`Queue`] of values of one type, encoded by a [`Codec`] (bincode by
//! default).
//!
//! Invariant: a payload that does not decode is an [`Error::Codec`] on that one delivery, never
//! a panic, and the message stays where it is until the holder settles it. This is the only
//! module that uses bincode, always with one pinned config (`standard()`).

use std::any::type_name;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::options::Durability;
use crate::queue::{Delivery, NackOptions};
use crate::queue::{MessageId, PushOptions, Queue};

/// How a [`TypedQueue`] turns values into payload bytes and back.
///
/// Implement it to store values in another format (JSON, protobuf, a versioned envelope).
/// Both directions report failure as [`Error::Codec`].
///
/// ```
/// use wharf::{Codec, Error, TypedQueue};
///
/// /// Plain UTF-8 text.
/// struct Text;
///
/// impl Codec<String> for Text {
///     fn encode(&self, value: &String) -> wharf::Result<Vec<u8>> {
///         Ok(value.as_bytes().to_vec())
///     }
///     fn decode(&self, bytes: &[u8]) -> wharf::Result<String> {
///         String::from_utf8(bytes.to_vec()).map_err(|e| Error::Codec(e.to_string()))
///     }
/// }
///
/// # let dir = tempfile::tempdir()?;
/// # let wharf = wharf::Wharf::open(dir.path())?;
/// let notes = TypedQueue::with_codec(wharf.queue("notes")?, Text);
/// notes.push(&"buy milk".to_string())?;
/// assert_eq!(notes.queue().pop()?.payload(), b"buy milk"); // readable by untyped consumers
/// # Ok::<(), wharf::Error>(())
/// ```
pub trait Codec<T>: Send + Sync {
    /// The payload bytes of `value`.
    ///
    /// # Errors
    /// [`Error::Codec`] if `value` cannot be encoded.
    fn encode(&self, value: &T) -> Result<Vec<u8>>;

    /// The value `bytes` encode.
    ///
    /// # Errors
    /// [`Error::Codec`] if `bytes` are not an encoding of a `T`.
    fn decode(&self, bytes: &[u8]) -> Result<T>;
}

/// The default [`Codec`]: serde through bincode 2 with its `standard()` config (little-endian,
/// variable-length integers), the same for every wharf version of this format.
///
/// The encoding carries no type tag or schema: bytes of another type are refused when they do
/// not parse as a `T` or leave bytes over, but may decode into a wrong value if they happen to
/// parse. Serde features that need a self-describing format (`#[serde(flatten)]`, internally
/// tagged or untagged enums) fail with [`Error::Codec`]. Adding, removing or reordering fields
/// changes the encoding: give messages that outlive a deploy a version field, or use your own
/// codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bincode;

impl<T: Serialize + DeserializeOwned> Codec<T> for Bincode {
    fn encode(&self, value: &T) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|e| Error::Codec(format!("encoding a {}: {e}", type_name::<T>())))
    }

    fn decode(&self, bytes: &[u8]) -> Result<T> {
        let (value, read) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|e| Error::Codec(format!("decoding a {}: {e}", type_name::<T>())))?;
        if read != bytes.len() {
            return Err(Error::Codec(format!(
                "decoding a {}: {} bytes left over after {read}",
                type_name::<T>(),
                bytes.len() - read
            )));
        }
        Ok(value)
    }
}

/// A [`Queue`] of `T` values: pushes encode them with the codec `C`, pops hand out
/// [`TypedDelivery`]s that decode them on request.
///
/// It is a thin view: the bytes in the queue are the codec's output, and the same queue can be
/// used untyped through [`TypedQueue::queue`] (to read its [`stats`](Queue::stats), configure
/// it, or peek at it). Cheap to clone, `Send + Sync` whatever `T` is.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use wharf::TypedQueue;
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// struct Resize {
///     photo: u64,
///     width: u32,
/// }
///
/// # let dir = tempfile::tempdir()?;
/// let wharf = wharf::Wharf::open(dir.path())?;
/// let resizes: TypedQueue<Resize> = TypedQueue::new(wharf.queue("resize")?);
/// resizes.push(&Resize { photo: 17, width: 640 })?;
///
/// let job = resizes.pop()?;
/// assert_eq!(job.value()?, Resize { photo: 17, width: 640 });
/// job.ack()?;
/// # Ok::<(), wharf::Error>(())
/// ```
pub struct TypedQueue<T, C = Bincode> {
    queue: Queue,
    codec: Arc<C>,
    // No `T` is stored: the queue is Send + Sync whatever `T` is.
    _type: PhantomData<fn(T) -> T>,
}

impl<T, C> Clone for TypedQueue<T, C> {
    fn clone(&self) -> Self {
        TypedQueue { queue: self.queue.clone(), codec: Arc::clone(&self.codec), _type: PhantomData }
    }
}

impl<T, C> fmt::Debug for TypedQueue<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedQueue")
            .field("name", &self.queue.name())
            .field("type", &type_name::<T>())
            .field("codec", &type_name::<C>())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> TypedQueue<T, Bincode> {
    /// A typed view of `queue` with the default [`Bincode`] codec.
    pub fn new(queue: Queue) -> Self {
        TypedQueue::with_codec(queue, Bincode)
    }
}

impl<T, C: Codec<T>> TypedQueue<T, C> {
    /// A typed view of `queue` with the codec `codec`.
    pub fn with_codec(queue: Queue, codec: C) -> Self {
        TypedQueue { queue, codec: Arc::new(codec), _type: PhantomData }
    }

    /// The untyped queue underneath.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    pub(crate) fn shared_codec(&self) -> Arc<C> {
        Arc::clone(&self.codec)
    }

    /// Encodes `value` and pushes it, as [`Queue::push`].
    ///
    /// # Errors
    /// [`Error::Codec`] if `value` cannot be encoded (nothing was pushed); otherwise as
    /// [`Queue::push`].
    pub fn push(&self, value: &T) -> Result<MessageId> {
        self.queue.push(self.codec.encode(value)?)
    }

    /// Encodes `value` and pushes it with options, as [`Queue::push_with`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use wharf::{PushOptions, TypedQueue};
    /// # let dir = tempfile::tempdir()?;
    /// # let wharf = wharf::Wharf::open(dir.path())?;
    /// let reminders: TypedQueue<String> = TypedQueue::new(wharf.queue("reminders")?);
    /// reminders.push_with(&"stand up".into(), PushOptions::new().delay(Duration::from_secs(60)))?;
    /// assert!(reminders.try_pop()?.is_none()); // not due yet
    /// # Ok::<(), wharf::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`TypedQueue::push`] and [`Queue::push_with`].
    pub fn push_with(&self, value: &T, opts: PushOptions) -> Result<MessageId> {
        self.queue.push_with(self.codec.encode(value)?, opts)
    }

    /// Encodes every value, then pushes them all with one group commit, as
    /// [`Queue::push_batch`].
    ///
    /// # Errors
    /// [`Error::Codec`] if a value cannot be encoded (nothing was pushed); otherwise as
    /// [`Queue::push_batch`].
    pub fn push_batch<'a, I>(&self, values: I) -> Result<Vec<MessageId>>
    where
        I: IntoIterator<Item = &'a T>,
        T: 'a,
    {
        let payloads =
            values.into_iter().map(|v| self.codec.encode(v)).collect::<Result<Vec<_>>>()?;
        self.queue.push_batch(payloads)
    }

    /// Pops the next ready message if there is one, without waiting, as [`Queue::try_pop`].
    ///
    /// # Errors
    /// As [`Queue::try_pop`]. Decoding happens later, in [`TypedDelivery::value`].
    pub fn try_pop(&self) -> Result<Option<TypedDelivery<T, C>>> {
        Ok(self.queue.try_pop()?.map(|d| self.wrap(d)))
    }

    /// Pops the next ready message, waiting as long as it takes, as [`Queue::pop`].
    ///
    /// # Errors
    /// As [`Queue::pop`].
    pub fn pop(&self) -> Result<TypedDelivery<T, C>> {
        Ok(self.wrap(self.queue.pop()?))
    }

    /// Pops the next ready message, waiting at most `timeout`, as [`Queue::pop_timeout`].
    ///
    /// # Errors
    /// As [`Queue::pop_timeout`].
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<TypedDelivery<T, C>>> {
        Ok(self.queue.pop_timeout(timeout)?.map(|d| self.wrap(d)))
    }

    /// Pops up to `max` messages, waiting at most `timeout` for the first, as
    /// [`Queue::pop_batch`].
    ///
    /// # Errors
    /// As [`Queue::pop_batch`].
    pub fn pop_batch(&self, max: usize, timeout: Duration) -> Result<Vec<TypedDelivery<T, C>>> {
        Ok(self.queue.pop_batch(max, timeout)?.into_iter().map(|d| self.wrap(d)).collect())
    }

    fn wrap(&self, delivery: Delivery) -> TypedDelivery<T, C> {
        TypedDelivery { delivery, codec: Arc::clone(&self.codec), _type: PhantomData }
    }
}

/// A [`Delivery`] from a [`TypedQueue`]: the same lease, settled the same way, whose payload
/// decodes into a `T` with [`TypedDelivery::value`].
///
/// A payload that does not decode (pushed untyped, by another type or by an older schema) is
/// an [`Error::Codec`] from `value`, not a panic; the message stays leased, so it can be
/// [dead-lettered](TypedDelivery::dead_letter) for inspection:
///
/// ```
/// use wharf::{Error, TypedQueue};
/// # let dir = tempfile::tempdir()?;
/// # let wharf = wharf::Wharf::open(dir.path())?;
/// let counts: TypedQueue<u32> = TypedQueue::new(wharf.queue("counts")?);
/// counts.queue().push(b"not a number")?; // an untyped producer
///
/// let job = counts.pop()?;
/// match job.value() {
///     Ok(n) => { println!("{n}"); job.ack()? }
///     Err(e @ Error::Codec(_)) => job.dead_letter(&e.to_string())?,
///     Err(e) => return Err(e),
/// }
/// assert_eq!(counts.queue().dead_letter_queue()?.unwrap().depth()?.ready, 1);
/// # Ok::<(), wharf::Error>(())
/// ```
///
/// Dropping it unsettled lets its lease lapse, as dropping a [`Delivery`] does.
pub struct TypedDelivery<T, C = Bincode> {
    delivery: Delivery,
    codec: Arc<C>,
    _type: PhantomData<fn() -> T>,
}

impl<T, C> fmt::Debug for TypedDelivery<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedDelivery")
            .field("type", &type_name::<T>())
            .field("delivery", &self.delivery)
            .finish()
    }
}

impl<T, C: Codec<T>> TypedDelivery<T, C> {
    /// Decodes the payload. Each call decodes it anew.
    ///
    /// # Errors
    /// [`Error::Codec`] if the payload is not an encoding of a `T`; the delivery is unchanged.
    pub fn value(&self) -> Result<T> {
        self.codec.decode(self.delivery.payload())
    }
}

impl<T, C> TypedDelivery<T, C> {
    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.delivery.id()
    }

    /// Which delivery of this message this is: 1 the first time, counted across restarts.
    pub fn attempt(&self) -> u32 {
        self.delivery.attempt()
    }

    /// The encoded payload, as stored.
    pub fn payload(&self) -> &[u8] {
        self.delivery.payload()
    }

    /// The untyped delivery, for what this type does not forward.
    pub fn into_delivery(self) -> Delivery {
        self.delivery
    }

    /// Settles the message for good, as [`Delivery::ack`].
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn ack(self) -> Result<()> {
        self.delivery.ack()
    }

    /// [`TypedDelivery::ack`] with the given durability, as [`Delivery::ack_with`].
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn ack_with(self, d: Durability) -> Result<()> {
        self.delivery.ack_with(d)
    }

    /// Marks this attempt failed, as [`Delivery::nack`]: retried after the queue's backoff, or
    /// dead-lettered after its last attempt.
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn nack(self) -> Result<()> {
        self.delivery.nack()
    }

    /// [`TypedDelivery::nack`] with an explicit delay and/or error text, as
    /// [`Delivery::nack_with`].
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn nack_with(self, opts: NackOptions) -> Result<()> {
        self.delivery.nack_with(opts)
    }

    /// Moves the message to the queue's dead-letter queue now, as [`Delivery::dead_letter`].
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn dead_letter(self, reason: &str) -> Result<()> {
        self.delivery.dead_letter(reason)
    }

    /// Gives the message back, ready again at once, as [`Delivery::release`].
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub fn release(self) -> Result<()> {
        self.delivery.release()
    }

    /// Extends the lease to `by` from now, as [`Delivery::extend`].
    ///
    /// # Errors
    /// As [`Delivery::extend`].
    pub fn extend(&self, by: Duration) -> Result<()> {
        self.delivery.extend(by)
    }
}
