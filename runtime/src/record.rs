//! What can travel through a job: [`Data`] records in batches, grouped by [`Key`]s.

use std::any::Any;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A record type: anything serde can write and read that can move between threads.
///
/// `Sync` because keyed state values are shared, frozen, with the asynchronous
/// part of a snapshot (copy-on-write heap snapshots) while processing goes on.
///
/// Records are serialized only where they must leave memory (checkpointed
/// channel state, savepoints, fan-out to several consumers); on the hot path
/// they are moved, in batches, never serialized.
pub trait Data: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Data for T {}

/// A key for `key_by`: a record type that can be hashed (with
/// [`crate::keygroup::StableHasher`] for key groups), compared and cloned.
pub trait Key: Data + Hash + Eq + Clone {}
impl<T: Data + Hash + Eq + Clone> Key for T {}

/// A type-erased batch on the data plane: always a `Vec<T>` of the edge's record type.
pub(crate) type AnyBatch = Box<dyn Any + Send>;

/// Unwraps a type-erased batch. The graph builder pairs every producer with a
/// consumer of the same type, so a mismatch is a bug in weir.
pub(crate) fn downcast<T: 'static>(batch: AnyBatch) -> Vec<T> {
    match batch.downcast::<Vec<T>>() {
        Ok(b) => *b,
        Err(_) => panic!(
            "weir bug: batch of the wrong type reached an operator expecting {}",
            std::any::type_name::<T>()
        ),
    }
}

/// Number of records in a type-erased batch, through a function pointer made
/// where the type was known.
pub(crate) type LenFn = fn(&AnyBatch) -> usize;

pub(crate) fn batch_len<T: 'static>(b: &AnyBatch) -> usize {
    b.downcast_ref::<Vec<T>>().map_or(0, Vec::len)
}

/// Deep-copies a batch through serde (postcard), for fan-out and broadcast: no
/// `Clone` bound is needed on records.
pub(crate) type CloneFn = fn(&AnyBatch) -> crate::Result<AnyBatch>;

pub(crate) fn serde_clone<T: Data>(b: &AnyBatch) -> crate::Result<AnyBatch> {
    let v = b
        .downcast_ref::<Vec<T>>()
        .ok_or_else(|| crate::Error::Internal("fan-out of a batch of the wrong type".into()))?;
    let bytes = postcard::to_allocvec(v)?;
    let copy: Vec<T> = postcard::from_bytes(&bytes)?;
    Ok(Box::new(copy))
}

/// Serializes a type-erased batch (channel state of unaligned checkpoints).
pub(crate) type EncodeFn = fn(&AnyBatch) -> crate::Result<Vec<u8>>;
/// Deserializes a batch written by the matching [`EncodeFn`].
pub(crate) type DecodeFn = fn(&[u8]) -> crate::Result<AnyBatch>;

pub(crate) fn encode_batch<T: Data>(b: &AnyBatch) -> crate::Result<Vec<u8>> {
    let v = b
        .downcast_ref::<Vec<T>>()
        .ok_or_else(|| crate::Error::Internal("encoding a batch of the wrong type".into()))?;
    Ok(postcard::to_allocvec(v)?)
}

pub(crate) fn decode_batch<T: Data>(bytes: &[u8]) -> crate::Result<AnyBatch> {
    let v: Vec<T> = postcard::from_bytes(bytes)?;
    Ok(Box::new(v))
}

/// Splits a batch into batches of at most `n` records, in order.
pub(crate) type ChunkFn = fn(AnyBatch, usize) -> Vec<AnyBatch>;

pub(crate) fn chunk_batch<T: Data>(b: AnyBatch, n: usize) -> Vec<AnyBatch> {
    let v = downcast::<T>(b);
    if v.len() <= n {
        return vec![Box::new(v)];
    }
    let mut out = Vec::with_capacity(v.len().div_ceil(n));
    let mut it = v.into_iter();
    loop {
        let c: Vec<T> = it.by_ref().take(n).collect();
        if c.is_empty() {
            return out;
        }
        out.push(Box::new(c) as AnyBatch);
    }
}
