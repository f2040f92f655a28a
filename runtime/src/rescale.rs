//! In-flight data at another parallelism: the channel state of an unaligned
//! checkpoint redistributed over the subtasks of a rescaled chain.
//!
//! An unaligned checkpoint stores, per receiving subtask, the batches that
//! were in flight towards it (its channel state), replayed through the
//! chain's head before any new input. When the chain runs at another
//! parallelism, those records must reach the subtask that would have
//! received them, as Flink's rescaling of unaligned checkpoints does:
//!
//! - **by key** (the chain's inputs are hash edges): every record goes to
//!   the new subtask that owns its key group, so it meets its keyed state
//!   there. The records are decoded, routed by the edge's own partitioner
//!   made for the new parallelism (the same key function and key groups as
//!   the keyed state's redistribution), and encoded again. Records of one
//!   key were in flight towards one old subtask, in order; they stay in
//!   that order.
//! - **round robin** (forward and rebalance edges): the in-flight data of
//!   old subtask `j` goes, whole and in order, to new subtask `j mod p`.
//! - **broadcast** edges: each old receiver held its own copy, consumed to
//!   a different point; there is no single right answer, so a rescaled
//!   restore of such data is refused with a clear error.
//!
//! Replay reads every entry of a subtask in order through the head's one
//! input path, so a redistributed entry's `input` (a channel index of the
//! *old* gate) is 0.
//!
//! `crate::restore::assign` gathers a rescaled chain's channel state (every
//! old subtask's, in old subtask order) and `crate::graph::instantiate`,
//! which knows the chain's input edges and record codec, calls
//! [`redistribute`].

use crate::checkpoint::ChannelStateEntry;
use crate::exchange::{PartitionFactory, PartitionSetup};
use crate::record::{DecodeFn, EncodeFn};
use crate::{Error, Result};

/// How a chain's inputs spread records over its subtasks.
pub(crate) enum Spread {
    /// Hash edges: by key group, with the edge's partitioner.
    ByKey(PartitionFactory, PartitionSetup),
    /// Forward and rebalance edges: whole old subtasks, round robin.
    RoundRobin,
    /// Broadcast edges (or a mix): cannot be rescaled.
    Refused(String),
}

/// The channel state for each of `new_p` subtasks, from `old`: every old
/// subtask's entries `(old subtask, entry)`, in old subtask order.
pub(crate) fn redistribute(
    old: Vec<(usize, ChannelStateEntry)>,
    new_p: usize,
    (encode, decode): (EncodeFn, DecodeFn),
    spread: &Spread,
) -> Result<Vec<Vec<ChannelStateEntry>>> {
    let mut out: Vec<Vec<ChannelStateEntry>> = vec![Vec::new(); new_p];
    match spread {
        Spread::Refused(why) => return Err(Error::Restore(why.clone())),
        Spread::RoundRobin => {
            for (j, e) in old {
                out[j % new_p].push(ChannelStateEntry {
                    input: 0,
                    batches: e.batches,
                });
            }
        }
        Spread::ByKey(factory, setup) => {
            let mut part = factory(PartitionSetup {
                targets: new_p,
                ..*setup
            });
            let mut per: Vec<Vec<Vec<u8>>> = vec![Vec::new(); new_p];
            let mut ready = Vec::new();
            let mut take = |ready: &mut Vec<(usize, crate::record::AnyBatch)>| -> Result<()> {
                for (t, b) in ready.drain(..) {
                    per[t].push(encode(&b)?);
                }
                Ok(())
            };
            for (_, e) in old {
                for bytes in &e.batches {
                    part.route(decode(bytes)?, &mut ready)?;
                    take(&mut ready)?;
                }
            }
            part.flush(&mut ready);
            take(&mut ready)?;
            for (t, batches) in per.into_iter().enumerate() {
                if !batches.is_empty() {
                    out[t].push(ChannelStateEntry { input: 0, batches });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::HashPartition;
    use crate::keygroup::{key_group_for, subtask_for_key_group};
    use crate::record::{decode_batch, encode_batch};
    use std::sync::Arc;

    fn entry(records: &[u64]) -> ChannelStateEntry {
        let b: crate::record::AnyBatch = Box::new(records.to_vec());
        ChannelStateEntry {
            input: 3,
            batches: vec![encode_batch::<u64>(&b).unwrap()],
        }
    }

    fn records(entries: &[ChannelStateEntry]) -> Vec<u64> {
        entries
            .iter()
            .flat_map(|e| &e.batches)
            .flat_map(|b| crate::record::downcast::<u64>(decode_batch::<u64>(b).unwrap()))
            .collect()
    }

    const SETUP: PartitionSetup = PartitionSetup {
        targets: 2,
        max_parallelism: 128,
        batch_size: 4,
        segment_bytes: 1 << 20,
    };

    #[test]
    fn by_key_every_record_reaches_the_owner_of_its_key_group_in_order() {
        let factory: PartitionFactory =
            Arc::new(|s| Box::new(HashPartition::<u64, u64, _>::new(Arc::new(|x: &u64| *x), s)));
        let old = vec![
            (0, entry(&[1, 2, 3, 4, 5, 6])),
            (1, entry(&[7, 8, 9, 10])),
            (1, entry(&[11, 1, 2])),
        ];
        for new_p in [1, 3, 5] {
            let out = redistribute(
                old.clone(),
                new_p,
                (encode_batch::<u64>, decode_batch::<u64>),
                &Spread::ByKey(factory.clone(), SETUP),
            )
            .unwrap();
            assert_eq!(out.len(), new_p);
            let mut all = Vec::new();
            for (t, entries) in out.iter().enumerate() {
                assert!(entries.iter().all(|e| e.input == 0));
                let rs = records(entries);
                for r in &rs {
                    let g = key_group_for(r, 128);
                    assert_eq!(subtask_for_key_group(g, 128, new_p), t, "{r} at {new_p}");
                }
                // The order of each key's records is kept.
                let ones: Vec<usize> = rs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| **r == 1 || **r == 2)
                    .map(|(i, _)| i)
                    .collect();
                assert!(ones.windows(2).all(|w| w[0] < w[1]));
                all.extend(rs);
            }
            all.sort();
            assert_eq!(all, vec![1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        }
    }

    #[test]
    fn round_robin_moves_whole_old_subtasks_and_broadcast_is_refused() {
        let old = vec![(0, entry(&[1, 2])), (1, entry(&[3])), (2, entry(&[4, 5]))];
        let out = redistribute(
            old.clone(),
            2,
            (encode_batch::<u64>, decode_batch::<u64>),
            &Spread::RoundRobin,
        )
        .unwrap();
        assert_eq!(records(&out[0]), vec![1, 2, 4, 5]);
        assert_eq!(records(&out[1]), vec![3]);
        let err = redistribute(
            old,
            2,
            (encode_batch::<u64>, decode_batch::<u64>),
            &Spread::Refused("broadcast".into()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("broadcast"), "{err}");
    }
}
