//! The data plane: bounded per-channel queues of batches, partitioners, and
//! the input gate a subtask reads from.
//!
//! A **channel** links one upstream subtask to one downstream subtask. It is a
//! queue of events (batches, watermarks, barriers, end of stream) under a
//! mutex, whose capacity is counted in batches
//! (`taskmanager.network.memory.buffers-per-channel`). A sender awaits when the
//! queue is full, so a slow consumer slows its producers all the way back to
//! the sources and memory stays bounded: the queued records are at most
//! `channels x capacity x batch size`. Control events never wait for space.
//! An unaligned checkpoint barrier is inserted ahead of the queued batches and
//! records how many it overtook (the receiver stores exactly those as channel
//! state). The actor mailboxes (unbounded in ractor) never carry records, only
//! control.
//!
//! Records travel in batches. A hash partitioner fills a batch up to
//! `pipeline.batch-size` records or `taskmanager.memory.segment-size` bytes
//! of records (`size_of` each; 4096 and 32kb by default), whichever comes
//! first, so a batch of large records stays small; control
//! events (watermarks, aligned checkpoint barriers, end of stream) travel on
//! the same queue, in order with the data, and never wait for space.
//!
//! A `Partition` decides which downstream subtask gets which records:
//! forward (subtask i to subtask i), rebalance (whole batches round-robin),
//! broadcast (a copy to everyone) and hash (per record, by key group, see
//! [`crate::keygroup`]).

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::keygroup::{key_group_for, subtask_for_key_group};
use crate::record::{downcast, AnyBatch, CloneFn, Data};
use crate::{Error, Result};

/// A checkpoint barrier as it travels on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint id `n`.
    pub id: u64,
    /// When the coordinator triggered it (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Whether it is a savepoint.
    pub savepoint: bool,
    /// Unaligned: it overtook queued batches (a priority event) and the
    /// receiver snapshots on the first barrier `n` it sees.
    pub unaligned: bool,
    /// For an unaligned barrier: how many data batches were queued behind it
    /// on this channel when it was inserted (they precede it logically: the
    /// receiver captures them as channel state).
    pub overtaken: usize,
}

/// What travels on a channel.
pub(crate) enum Event {
    /// A batch of records (a `Vec<T>` of the edge's record type).
    Batch(AnyBatch),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// Event time: no record with a timestamp at or below this follows on this channel (Flink's watermark).
    Watermark(i64),
    /// The sender has no more records.
    EndOfStream,
}

/// One channel: a queue of events shared by one sender and one receiver.
///
/// Data batches count against `capacity` (the sender waits when it is
/// reached); barriers and end-of-stream never wait. An unaligned barrier is
/// inserted ahead of the queued batches (after any unaligned barriers already
/// at the front, so barriers keep their order) and records how many batches
/// it overtook.
pub(crate) struct Channel {
    state: Mutex<ChannelState>,
    capacity: usize,
    /// Wakes the sender when space frees up.
    space: Notify,
    /// The sending subtask's signals.
    sender: Arc<TaskSignals>,
    /// The receiving subtask's signals.
    receiver: Arc<TaskSignals>,
}

/// Wake-ups of one subtask, shared with the channels around it.
///
/// `urgent` is raised when an unaligned barrier waits for the subtask (a
/// trigger at a source, a priority barrier at an input). While it is up the
/// subtask's sends do not wait for space: the batch in hand goes out at once
/// (a bounded overshoot of one push), so the subtask gets back to its loop and
/// takes the barrier instead of sitting behind backpressure.
#[derive(Default)]
pub(crate) struct TaskSignals {
    /// Data or a barrier arrived on an input.
    pub gate: Notify,
    /// An unaligned barrier is waiting for this subtask.
    pub urgent: std::sync::atomic::AtomicBool,
    /// Wakes a send blocked on a full channel when `urgent` is raised.
    pub urgent_wake: Notify,
    /// Time this subtask spent back-pressured (waiting for space on an
    /// output) and idle (waiting for input): the job's metrics read it.
    pub io: Arc<crate::metrics::io::SubtaskIo>,
}

impl TaskSignals {
    /// Signals of a subtask whose time is accounted in `io`.
    pub(crate) fn with_io(io: Arc<crate::metrics::io::SubtaskIo>) -> Self {
        TaskSignals {
            io,
            ..TaskSignals::default()
        }
    }

    pub(crate) fn raise_urgent(&self) {
        self.urgent.store(true, std::sync::atomic::Ordering::SeqCst);
        self.urgent_wake.notify_one();
    }

    pub(crate) fn take_urgent(&self) -> bool {
        self.urgent.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    fn is_urgent(&self) -> bool {
        self.urgent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct ChannelState {
    queue: VecDeque<Event>,
    batches: usize,
    sender_alive: bool,
    receiver_alive: bool,
}

/// The sending end of a channel.
pub(crate) struct Tx {
    ch: Arc<Channel>,
}

/// The receiving end of a channel.
pub(crate) struct Rx {
    ch: Arc<Channel>,
}

/// A handle to watch a channel's occupancy without keeping it alive, with
/// the subtasks (indices among all of the job's subtasks) it links.
#[derive(Clone)]
pub(crate) struct WeakTx {
    ch: Weak<Channel>,
    /// The sending subtask.
    pub from: usize,
    /// The receiving subtask.
    pub to: usize,
}

impl WeakTx {
    /// Queued data batches and capacity, while the channel exists.
    pub(crate) fn occupancy(&self) -> Option<(usize, usize)> {
        self.ch.upgrade().map(|c| (lock(&c).batches, c.capacity))
    }

    /// Whether the channel still exists.
    pub(crate) fn is_alive(&self) -> bool {
        self.ch.strong_count() > 0
    }
}

/// A new channel holding at most `capacity` data batches from `sender` to `receiver`.
pub(crate) fn channel(
    capacity: usize,
    sender: Arc<TaskSignals>,
    receiver: Arc<TaskSignals>,
) -> (Tx, Rx) {
    let ch = Arc::new(Channel {
        state: Mutex::new(ChannelState {
            queue: VecDeque::with_capacity(capacity + 4),
            batches: 0,
            sender_alive: true,
            receiver_alive: true,
        }),
        capacity,
        space: Notify::new(),
        sender,
        receiver,
    });
    (Tx { ch: ch.clone() }, Rx { ch })
}

fn lock(ch: &Channel) -> std::sync::MutexGuard<'_, ChannelState> {
    ch.state.lock().unwrap_or_else(|p| p.into_inner())
}

fn disconnected() -> Error {
    Error::Disconnected("downstream subtask stopped".into())
}

impl Tx {
    /// Sends a data batch, waiting while the channel is full.
    pub(crate) async fn send_batch(&self, batch: AnyBatch) -> Result<()> {
        let mut batch = Some(batch);
        // Started at the first wait for space: back-pressured time (metrics).
        let mut _waiting: Option<crate::metrics::io::Waiting<'_>> = None;
        loop {
            let space = self.ch.space.notified();
            let urgent = self.ch.sender.urgent_wake.notified();
            tokio::pin!(space);
            tokio::pin!(urgent);
            space.as_mut().enable();
            urgent.as_mut().enable();
            {
                let mut st = lock(&self.ch);
                if !st.receiver_alive {
                    return Err(disconnected());
                }
                if st.batches < self.ch.capacity || self.ch.sender.is_urgent() {
                    st.queue
                        .push_back(Event::Batch(batch.take().unwrap_or_else(|| Box::new(()))));
                    st.batches += 1;
                    drop(st);
                    self.ch.receiver.gate.notify_one();
                    return Ok(());
                }
            }
            if _waiting.is_none() {
                _waiting = Some(self.ch.sender.io.back_pressured());
            }
            tokio::select! {
                _ = &mut space => {}
                _ = &mut urgent => {
                    // Keep the wake-up for a later wait of this subtask.
                    self.ch.sender.urgent_wake.notify_one();
                }
            }
        }
    }

    /// Sends a data batch without waiting for space (batches that must
    /// precede an unaligned barrier).
    pub(crate) fn send_batch_now(&self, batch: AnyBatch) -> Result<()> {
        let mut st = lock(&self.ch);
        if !st.receiver_alive {
            return Err(disconnected());
        }
        st.queue.push_back(Event::Batch(batch));
        st.batches += 1;
        drop(st);
        self.ch.receiver.gate.notify_one();
        Ok(())
    }

    /// Sends a control event (aligned barrier, end of stream) behind the data, without waiting.
    pub(crate) fn send_control(&self, ev: Event) -> Result<()> {
        let mut st = lock(&self.ch);
        if !st.receiver_alive {
            return Err(disconnected());
        }
        st.queue.push_back(ev);
        drop(st);
        self.ch.receiver.gate.notify_one();
        Ok(())
    }

    /// Sends an unaligned barrier ahead of the queued batches.
    pub(crate) fn send_priority(&self, mut barrier: Barrier) -> Result<()> {
        let mut st = lock(&self.ch);
        if !st.receiver_alive {
            return Err(disconnected());
        }
        let at = st
            .queue
            .iter()
            .position(|e| !matches!(e, Event::Barrier(b) if b.unaligned))
            .unwrap_or(st.queue.len());
        barrier.unaligned = true;
        barrier.overtaken = st
            .queue
            .iter()
            .skip(at)
            .filter(|e| matches!(e, Event::Batch(_)))
            .count();
        st.queue.insert(at, Event::Barrier(barrier));
        drop(st);
        self.ch.receiver.raise_urgent();
        self.ch.receiver.gate.notify_one();
        Ok(())
    }

    /// A watch on this channel, which links subtask `from` to subtask `to`.
    pub(crate) fn watch(&self, from: usize, to: usize) -> WeakTx {
        WeakTx {
            ch: Arc::downgrade(&self.ch),
            from,
            to,
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        lock(&self.ch).sender_alive = false;
        self.ch.receiver.gate.notify_one();
    }
}

impl Rx {
    /// Serializes the first `k` data batches queued now, without taking them:
    /// the batches an unaligned barrier overtook become channel state at once.
    pub(crate) fn peek_encode(
        &self,
        k: usize,
        encode: crate::record::EncodeFn,
    ) -> Result<Vec<Vec<u8>>> {
        let st = lock(&self.ch);
        st.queue
            .iter()
            .filter_map(|e| match e {
                Event::Batch(b) => Some(b),
                _ => None,
            })
            .take(k)
            .map(encode)
            .collect()
    }

    /// An unaligned barrier at the front of the queue, if there is one.
    pub(crate) fn try_recv_priority(&self) -> Option<Barrier> {
        let mut st = lock(&self.ch);
        match st.queue.front() {
            Some(Event::Barrier(b)) if b.unaligned => {
                let b = *b;
                st.queue.pop_front();
                Some(b)
            }
            _ => None,
        }
    }

    /// The next event if one is queued; `Err` if the sender is gone and nothing is left.
    pub(crate) fn try_recv(&self) -> Result<Option<Event>> {
        let mut st = lock(&self.ch);
        match st.queue.pop_front() {
            Some(ev) => {
                if matches!(ev, Event::Batch(_)) {
                    st.batches -= 1;
                    drop(st);
                    self.ch.space.notify_one();
                }
                Ok(Some(ev))
            }
            None if !st.sender_alive => Err(Error::Disconnected("upstream subtask stopped".into())),
            None => Ok(None),
        }
    }
}

impl Drop for Rx {
    fn drop(&mut self) {
        lock(&self.ch).receiver_alive = false;
        self.ch.space.notify_one();
    }
}

/// Data batches queued right now over the given channels: the channel
/// occupancy that backpressure keeps bounded.
pub(crate) fn queued(channels: &[WeakTx]) -> usize {
    channels
        .iter()
        .filter_map(|w| w.occupancy())
        .map(|(queued, _)| queued)
        .sum()
}

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
    let step = (64 / std::mem::size_of::<T>().max(1)).max(1);
    for slot in v.spare_capacity_mut().iter_mut().step_by(step) {
        *slot = std::mem::MaybeUninit::zeroed();
    }
    v
}

/// One output edge of a subtask: a partitioner and one sender per channel.
pub(crate) struct OutputEdge {
    pub partition: Box<dyn Partition>,
    pub senders: Vec<Tx>,
    pub ready: Vec<(usize, AnyBatch)>,
}

impl OutputEdge {
    pub(crate) fn new(partition: Box<dyn Partition>, senders: Vec<Tx>) -> Self {
        OutputEdge {
            partition,
            senders,
            ready: Vec::new(),
        }
    }

    pub(crate) async fn write(&mut self, batch: AnyBatch) -> Result<()> {
        self.partition.route(batch, &mut self.ready)?;
        self.send_ready().await
    }

    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.partition.flush(&mut self.ready);
        self.send_ready().await
    }

    async fn send_ready(&mut self) -> Result<()> {
        for (ch, b) in self.ready.drain(..) {
            self.senders[ch].send_batch(b).await?;
        }
        Ok(())
    }

    /// Emits a barrier on every channel after every record routed so far:
    /// partial buffers are flushed first. Unaligned barriers overtake the
    /// batches queued in the channels.
    pub(crate) async fn barrier(&mut self, barrier: Barrier) -> Result<()> {
        if barrier.unaligned {
            // Records routed before the snapshot precede the barrier: they go
            // out now, whatever the channel's occupancy, then the barrier
            // overtakes everything queued.
            self.partition.flush(&mut self.ready);
            for (ch, b) in self.ready.drain(..) {
                self.senders[ch].send_batch_now(b)?;
            }
        } else {
            self.flush().await?;
        }
        for s in &self.senders {
            if barrier.unaligned {
                s.send_priority(barrier)?;
            } else {
                s.send_control(Event::Barrier(barrier))?;
            }
        }
        Ok(())
    }

    /// Emits a watermark on every channel after every record routed so far.
    pub(crate) async fn watermark(&mut self, wm: i64) -> Result<()> {
        self.flush().await?;
        for s in &self.senders {
            s.send_control(Event::Watermark(wm))?;
        }
        Ok(())
    }

    pub(crate) async fn end_of_stream(&mut self) -> Result<()> {
        self.flush().await?;
        for s in &self.senders {
            s.send_control(Event::EndOfStream)?;
        }
        Ok(())
    }
}

/// All input channels of a subtask, read fairly (round-robin). An input can
/// be blocked (aligned checkpoints stop reading an input that delivered its
/// barrier until all inputs have).
pub(crate) struct InputGate {
    inputs: Vec<Rx>,
    signals: Arc<TaskSignals>,
    finished: Vec<bool>,
    blocked: Vec<bool>,
    open: usize,
    next: usize,
}

impl InputGate {
    pub(crate) fn new(inputs: Vec<Rx>, signals: Arc<TaskSignals>) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            signals,
            finished: vec![false; n],
            blocked: vec![false; n],
            open: n,
            next: 0,
        }
    }

    /// Number of inputs.
    pub(crate) fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether every input has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.open == 0
    }

    /// Stops or resumes reading input `i`.
    pub(crate) fn set_blocked(&mut self, i: usize, blocked: bool) {
        self.blocked[i] = blocked;
    }

    /// Resumes every input.
    pub(crate) fn unblock_all(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }

    /// The first `k` data batches queued on input `i`, serialized, left in place.
    pub(crate) fn peek_encode(
        &self,
        i: usize,
        k: usize,
        encode: crate::record::EncodeFn,
    ) -> Result<Vec<Vec<u8>>> {
        self.inputs[i].peek_encode(k, encode)
    }

    /// An unaligned barrier waiting at the front of any unfinished input
    /// (blocked or not): these are taken before anything else.
    pub(crate) fn take_priority(&mut self) -> Option<(usize, Barrier)> {
        (0..self.inputs.len())
            .filter(|&i| !self.finished[i])
            .find_map(|i| self.inputs[i].try_recv_priority().map(|b| (i, b)))
    }

    /// The next event of an unblocked, unfinished input, if one is queued.
    pub(crate) fn try_next(&mut self) -> Result<Option<(usize, Event)>> {
        let n = self.inputs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.finished[i] || self.blocked[i] {
                continue;
            }
            if let Some(ev) = self.inputs[i].try_recv()? {
                self.next = (i + 1) % n;
                if matches!(ev, Event::EndOfStream) {
                    self.finished[i] = true;
                    self.open -= 1;
                }
                return Ok(Some((i, ev)));
            }
        }
        Ok(None)
    }

    /// Waits for the next event of an unblocked, unfinished input. With every
    /// open input blocked this waits until `wake` (a timer) fires: returns `None` then.
    pub(crate) async fn next_or(
        &mut self,
        wake: impl std::future::Future<Output = ()>,
    ) -> Result<Option<(usize, Event)>> {
        tokio::pin!(wake);
        let signals = self.signals.clone();
        // Started at the first wait for input: idle time (metrics).
        let mut _waiting: Option<crate::metrics::io::Waiting<'_>> = None;
        loop {
            let notified = signals.gate.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(ev) = self.try_next()? {
                return Ok(Some(ev));
            }
            if _waiting.is_none() {
                _waiting = Some(signals.io.idle());
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut wake => return Ok(None),
            }
        }
    }
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
