//! Partitioners: which downstream subtask gets which records of an output
//! edge. Forward (subtask i to subtask i), rebalance (whole batches
//! round-robin), broadcast (a copy to everyone) and hash (per record, by key
//! group, see [`crate::keygroup`]). A hash partitioner fills a batch up to
//! `pipeline.batch-size` records or `taskmanager.memory.segment-size` bytes
//! of records (`size_of` each; 4096 and 32kb by default), whichever comes
//! first, so a batch of large records stays small.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::keygroup::{key_group_for, subtask_for_key_group};
use crate::record::{downcast, AnyBatch, CloneFn, Data};
use crate::Result;

/// Routes the batches of one output edge to its channels.
pub(crate) trait Partition: Send {
    /// Routes `batch`, pushing `(channel index, batch)` pairs ready to send.
    fn route(&mut self, batch: AnyBatch, ready: &mut Vec<(usize, AnyBatch)>) -> Result<()>;
    /// Pushes partially filled buffers, if the partitioner keeps any.
    fn flush(&mut self, ready: &mut Vec<(usize, AnyBatch)>);
}

/// Makes a partitioner for `targets` downstream subtasks.
pub(crate) type PartitionFactory = Arc<dyn Fn(PartitionSetup) -> Box<dyn Partition> + Send + Sync>;

/// What a partitioner needs to know about its edge.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PartitionSetup {
    pub targets: usize,
    pub max_parallelism: usize,
    /// Records per batch, at most (`pipeline.batch-size`).
    pub batch_size: usize,
    /// Bytes of records per batch, at most (`taskmanager.memory.segment-size`).
    pub segment_bytes: usize,
}

impl PartitionSetup {
    /// Records per batch of `T`: `batch_size`, fewer if that many `T` take
    /// more than `segment_bytes` (their in-memory size), at least one.
    pub(crate) fn records_per_batch<T>(&self) -> usize {
        let per_segment = self.segment_bytes / std::mem::size_of::<T>().max(1);
        self.batch_size.min(per_segment).max(1)
    }
}

/// One subtask to one subtask.
pub(crate) struct Forward;

impl Partition for Forward {
    fn route(&mut self, batch: AnyBatch, ready: &mut Vec<(usize, AnyBatch)>) -> Result<()> {
        ready.push((0, batch));
        Ok(())
    }
    fn flush(&mut self, _: &mut Vec<(usize, AnyBatch)>) {}
}

/// Whole batches, round-robin.
pub(crate) struct Rebalance {
    pub next: usize,
    pub targets: usize,
}

impl Partition for Rebalance {
    fn route(&mut self, batch: AnyBatch, ready: &mut Vec<(usize, AnyBatch)>) -> Result<()> {
        ready.push((self.next, batch));
        self.next = (self.next + 1) % self.targets;
        Ok(())
    }
    fn flush(&mut self, _: &mut Vec<(usize, AnyBatch)>) {}
}

/// A copy of every batch to every downstream subtask.
pub(crate) struct Broadcast {
    pub targets: usize,
    pub clone: CloneFn,
}

impl Partition for Broadcast {
    fn route(&mut self, batch: AnyBatch, ready: &mut Vec<(usize, AnyBatch)>) -> Result<()> {
        for t in 0..self.targets - 1 {
            ready.push((t, (self.clone)(&batch)?));
        }
        ready.push((self.targets - 1, batch));
        Ok(())
    }
    fn flush(&mut self, _: &mut Vec<(usize, AnyBatch)>) {}
}

/// Per record, by the key group of the record's key.
pub(crate) struct HashPartition<T, K, F> {
    pub selector: Arc<F>,
    pub setup: PartitionSetup,
    /// Key group -> target subtask, computed once.
    pub targets: Vec<u16>,
    pub buffers: Vec<Vec<T>>,
    pub _k: PhantomData<fn() -> K>,
}

impl<T, K, F> HashPartition<T, K, F> {
    pub(crate) fn new(selector: Arc<F>, mut setup: PartitionSetup) -> Self {
        setup.batch_size = setup.records_per_batch::<T>();
        HashPartition {
            selector,
            setup,
            targets: (0..setup.max_parallelism)
                .map(|g| {
                    subtask_for_key_group(g as u16, setup.max_parallelism, setup.targets) as u16
                })
                .collect(),
            buffers: (0..setup.targets)
                .map(|_| fresh_buffer(setup.batch_size))
                .collect(),
            _k: PhantomData,
        }
    }
}

impl<T: Data, K: std::hash::Hash + 'static, F: Fn(&T) -> K + Send + Sync + 'static> Partition
    for HashPartition<T, K, F>
{
    fn route(&mut self, batch: AnyBatch, ready: &mut Vec<(usize, AnyBatch)>) -> Result<()> {
        let PartitionSetup {
            max_parallelism,
            batch_size,
            ..
        } = self.setup;
        for r in downcast::<T>(batch) {
            let kg = key_group_for(&(self.selector)(&r), max_parallelism);
            let t = self.targets[kg as usize] as usize;
            let buf = &mut self.buffers[t];
            buf.push(r);
            if buf.len() >= batch_size {
                let full = std::mem::replace(buf, fresh_buffer(batch_size));
                ready.push((t, Box::new(full)));
            }
        }
        Ok(())
    }
    fn flush(&mut self, ready: &mut Vec<(usize, AnyBatch)>) {
        for (t, buf) in self.buffers.iter_mut().enumerate() {
            if !buf.is_empty() {
                let part = std::mem::replace(buf, fresh_buffer(self.setup.batch_size));
                ready.push((t, Box::new(part)));
            }
        }
    }
}

/// An empty buffer for `cap` records whose memory has been written once per
/// cache line. The allocator hands out memory the receiving subtask has just
/// read (the batches it freed), so the first write to each line must take it
/// back from the other core's cache. Filling a batch record by record makes
/// those transfers one after another, behind the records written to each
/// line; one store per line, in a tight loop, lets the CPU have many in
/// flight at once. On this 2-core VM, while the host places the two vCPUs
/// far apart (a cross-core round trip of about 350-500 ns instead of about
/// 100 ns), that wait was most of the partitioner's time: wordcount at
/// parallelism 2 ran at 29 M words/s then, and at 33 M with this.
fn fresh_buffer<T>(cap: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(cap);
    if std::mem::size_of::<T>() == 0 {
        // No memory to touch (and `usize::MAX` spare slots to step over).
        return v;
    }
    let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
    for slot in v.spare_capacity_mut().iter_mut().step_by(step) {
        *slot = std::mem::MaybeUninit::zeroed();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(batch_size: usize, segment_bytes: usize) -> PartitionSetup {
        PartitionSetup {
            targets: 2,
            max_parallelism: 128,
            batch_size,
            segment_bytes,
        }
    }

    /// A batch holds `pipeline.batch-size` records or
    /// `taskmanager.memory.segment-size` bytes of them, whichever is fewer,
    /// and at least one record.
    #[test]
    fn records_per_batch_is_bounded_by_count_and_bytes() {
        let s = setup(4096, 32 * 1024);
        assert_eq!(s.records_per_batch::<u64>(), 4096);
        assert_eq!(s.records_per_batch::<[u64; 2]>(), 2048);
        assert_eq!(s.records_per_batch::<[u8; 1024]>(), 32);
        assert_eq!(s.records_per_batch::<[u8; 100_000]>(), 1);
        assert_eq!(s.records_per_batch::<()>(), 4096);
        assert_eq!(setup(64, 32 * 1024).records_per_batch::<u64>(), 64);
    }

    /// A fresh buffer is empty, holds `cap` records without growing, and
    /// takes records of any size (also zero-sized and larger than a line).
    #[test]
    fn fresh_buffers_are_empty_with_their_capacity() {
        let mut v: Vec<u64> = fresh_buffer(1000);
        assert!(v.is_empty() && v.capacity() >= 1000);
        v.extend(0..1000);
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        let big: Vec<[u64; 32]> = fresh_buffer(10);
        assert!(big.is_empty() && big.capacity() >= 10);
        let unit: Vec<()> = fresh_buffer(5);
        assert!(unit.is_empty());
        let none: Vec<u8> = fresh_buffer(0);
        assert!(none.is_empty());
    }

    /// The hash partitioner emits full batches of that many records.
    #[test]
    fn hash_partition_cuts_batches_at_the_byte_bound() {
        // 1 KiB records (serde serializes arrays of up to 32 elements).
        type Kib = [[u64; 32]; 4];
        let mut p =
            HashPartition::<Kib, u64, _>::new(Arc::new(|r: &Kib| r[0][0]), setup(4096, 32 * 1024));
        let records: Vec<Kib> = (0..200u64).map(|i| [[i % 7; 32]; 4]).collect();
        let mut ready = Vec::new();
        p.route(Box::new(records), &mut ready).unwrap();
        p.flush(&mut ready);
        let sizes: Vec<usize> = ready
            .iter()
            .map(|(_, b)| b.downcast_ref::<Vec<Kib>>().unwrap().len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|&n| n <= 32), "{sizes:?}");
        assert!(sizes.iter().filter(|&&n| n == 32).count() >= 4, "{sizes:?}");
    }
}
