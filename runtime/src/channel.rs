//! The data plane: bounded per-channel queues of batches, partitioners, and
//! the input gate a subtask reads from.
//!
//! A **channel** links one upstream subtask to one downstream subtask. It is a
//! bounded tokio mpsc queue of [`Event`]s whose capacity is counted in batches
//! (`taskmanager.network.memory.buffers-per-channel`). A sender awaits when the
//! queue is full, so a slow consumer slows its producers all the way back to
//! the sources and memory stays bounded: the queued records are at most
//! `channels x capacity x batch size`. The actor mailboxes (unbounded in
//! ractor) never carry records, only control.
//!
//! Records travel in batches (`pipeline.batch-size`, default 1024); control
//! events (end of stream, and checkpoint barriers later) travel on the same
//! queue, in order with the data.
//!
//! A [`Partition`] decides which downstream subtask gets which records:
//! forward (subtask i to subtask i), rebalance (whole batches round-robin),
//! broadcast (a copy to everyone) and hash (per record, by key group, see
//! [`crate::keygroup`]).

use std::future::poll_fn;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::mpsc;

use crate::keygroup::{key_group_for, subtask_for_key_group};
use crate::record::{downcast, AnyBatch, CloneFn, Data};
use crate::{Error, Result};

/// What travels on a channel.
pub(crate) enum Event {
    /// A batch of records (a `Vec<T>` of the edge's type).
    Batch(AnyBatch),
    /// The sender has no more records.
    EndOfStream,
}

pub(crate) type Tx = mpsc::Sender<Event>;
pub(crate) type WeakTx = mpsc::WeakSender<Event>;
pub(crate) type Rx = mpsc::Receiver<Event>;

/// A new channel holding at most `capacity` events.
pub(crate) fn channel(capacity: usize) -> (Tx, Rx) {
    mpsc::channel(capacity)
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
    pub batch_size: usize,
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
    pub(crate) fn new(selector: Arc<F>, setup: PartitionSetup) -> Self {
        HashPartition {
            selector,
            setup,
            targets: (0..setup.max_parallelism)
                .map(|g| {
                    subtask_for_key_group(g as u16, setup.max_parallelism, setup.targets) as u16
                })
                .collect(),
            buffers: (0..setup.targets)
                .map(|_| Vec::with_capacity(setup.batch_size))
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
                let full = std::mem::replace(buf, Vec::with_capacity(batch_size));
                ready.push((t, Box::new(full)));
            }
        }
        Ok(())
    }
    fn flush(&mut self, ready: &mut Vec<(usize, AnyBatch)>) {
        for (t, buf) in self.buffers.iter_mut().enumerate() {
            if !buf.is_empty() {
                let part = std::mem::replace(buf, Vec::with_capacity(self.setup.batch_size));
                ready.push((t, Box::new(part)));
            }
        }
    }
}

/// One output edge of a subtask: a partitioner and one sender per channel.
pub(crate) struct OutputEdge {
    pub partition: Box<dyn Partition>,
    pub senders: Vec<Tx>,
    pub ready: Vec<(usize, AnyBatch)>,
    /// Batches sent so far (for tests and metrics).
    pub sent: u64,
}

impl OutputEdge {
    pub(crate) fn new(partition: Box<dyn Partition>, senders: Vec<Tx>) -> Self {
        OutputEdge {
            partition,
            senders,
            ready: Vec::new(),
            sent: 0,
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
            self.senders[ch]
                .send(Event::Batch(b))
                .await
                .map_err(|_| Error::Disconnected("downstream subtask stopped".into()))?;
            self.sent += 1;
        }
        Ok(())
    }

    pub(crate) async fn end_of_stream(&mut self) -> Result<()> {
        self.flush().await?;
        for s in &self.senders {
            s.send(Event::EndOfStream)
                .await
                .map_err(|_| Error::Disconnected("downstream subtask stopped".into()))?;
        }
        Ok(())
    }
}

/// All input channels of a subtask, read fairly (round-robin).
pub(crate) struct InputGate {
    inputs: Vec<Rx>,
    finished: Vec<bool>,
    open: usize,
    next: usize,
}

impl InputGate {
    pub(crate) fn new(inputs: Vec<Rx>) -> Self {
        let n = inputs.len();
        InputGate {
            inputs,
            finished: vec![false; n],
            open: n,
            next: 0,
        }
    }

    /// Whether every input has ended.
    pub(crate) fn is_finished(&self) -> bool {
        self.open == 0
    }

    fn take(&mut self, i: usize, ev: Option<Event>) -> Result<(usize, Event)> {
        self.next = (i + 1) % self.inputs.len();
        match ev {
            Some(Event::EndOfStream) => {
                self.finished[i] = true;
                self.open -= 1;
                Ok((i, Event::EndOfStream))
            }
            Some(ev) => Ok((i, ev)),
            None => Err(Error::Disconnected("upstream subtask stopped".into())),
        }
    }

    /// The next event if one is queued, without waiting.
    pub(crate) fn try_next(&mut self) -> Result<Option<(usize, Event)>> {
        let n = self.inputs.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if self.finished[i] {
                continue;
            }
            match self.inputs[i].try_recv() {
                Ok(ev) => return self.take(i, Some(ev)).map(Some),
                Err(mpsc::error::TryRecvError::Empty) => {}
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return self.take(i, None).map(Some)
                }
            }
        }
        Ok(None)
    }

    /// Waits for the next event of any unfinished input.
    pub(crate) async fn next(&mut self) -> Result<(usize, Event)> {
        let (i, ev) = poll_fn(|cx| {
            let n = self.inputs.len();
            for k in 0..n {
                let i = (self.next + k) % n;
                if self.finished[i] {
                    continue;
                }
                if let Poll::Ready(ev) = self.inputs[i].poll_recv(cx) {
                    return Poll::Ready((i, ev));
                }
            }
            Poll::Pending
        })
        .await;
        self.take(i, ev)
    }
}

/// Batches (and control events) queued right now over the given channels:
/// the channel occupancy that backpressure keeps bounded.
pub(crate) fn queued(channels: &[WeakTx]) -> usize {
    channels
        .iter()
        .filter_map(|w| w.upgrade())
        .map(|tx| tx.max_capacity() - tx.capacity())
        .sum()
}
