//! The exchange: what a subtask reads from and writes to.
//!
//! A **channel** links one upstream subtask to one downstream subtask and
//! carries `Event`s in order: data batches, watermarks and watermark
//! statuses (idle / active), checkpoint barriers, end of stream. A subtask writes through one `OutputEdge` per
//! downstream edge (a partitioner and one `ChannelSender` per channel) and
//! reads through its `InputGate` (one `ChannelReceiver` per input
//! channel, read round-robin, any of them blockable for alignment).
//!
//! | module      | concept                                                                  |
//! |-------------|--------------------------------------------------------------------------|
//! | this one    | the seam: `Event`, [`Barrier`], `ChannelSender` / `ChannelReceiver` / `ChannelWatch`, `connect` |
//! | `local`     | the in-process channel: a bounded queue of batches under a mutex         |
//! | `signals`   | a subtask's wake-ups (input arrived, urgent barrier) and wait accounting  |
//! | `partition` | which downstream subtask gets which records (forward, rebalance, broadcast, hash) |
//! | `output`    | `OutputEdge`: partition, send, flush; barriers, watermarks, end of stream on every channel |
//! | `gate`      | `InputGate`: fair reads over the inputs, blocking, priority barriers   |
//!
//! # Contract of a channel (what every implementation keeps)
//!
//! This is invariant 3's data-plane half and the bounded-memory rule of
//! `docs/design.md` ("Data plane"):
//!
//! - **Order.** Batches, watermarks, aligned barriers and end of stream
//!   arrive in the order they were sent.
//! - **Backpressure.** Data batches count against a capacity (in batches,
//!   `taskmanager.network.memory.buffers-per-channel`): `send_batch` waits
//!   while it is used up, so a slow consumer slows its producers back to the
//!   sources. While the sending subtask is *urgent* (an unaligned barrier
//!   waits for it) the batch in hand goes out at once (one batch of
//!   overshoot), so the subtask gets back to its barrier.
//! - **Control never waits** for space: barriers, watermarks and end of
//!   stream are sent at once.
//! - **Priority barriers.** An unaligned barrier overtakes the batches
//!   queued on the channel and carries how many it overtook
//!   (`Barrier::overtaken`); the receiver reads it before anything else and
//!   can serialize exactly those overtaken batches, still queued, as channel
//!   state (`ChannelReceiver::peek_encode`).
//! - **Conversion.** An aligned barrier still queued can be turned into an
//!   unaligned one later (`BarrierConverter`: the aligned checkpoint
//!   timeout at the output side): it moves ahead of the batches queued
//!   before it and carries their count, as if it had been sent unaligned
//!   then.
//! - **Wake-ups.** A send wakes the receiving subtask's gate
//!   (`TaskSignals`); a receive wakes a sender waiting for space.
//! - **Ends.** A dropped sender ends the channel once it is drained
//!   (`Disconnected` after the last event); a dropped receiver fails the
//!   sender's next send.
//!
//! # The network channel
//!
//! The sender, the receiver and the watch are enums: a match on them costs
//! nothing on the hot path (a batch of thousands of records per call). A
//! channel between two processes (cluster mode, `net`) keeps the contract
//! above with an in-process queue at each end:
//!
//! - the upstream subtask writes into a `local` queue (`ChannelSender::Local`,
//!   so backpressure, conversion and `barrier_before_end` are unchanged)
//!   that a pump moves onto the TaskManagers' TCP connection; the
//!   receiving subtask reads a `local` queue the connection's reader fills
//!   (`ChannelReceiver::Remote`);
//! - batches are serialized only there, with the edge's record codec
//!   (`crate::record::EncodeFn` / `DecodeFn`, the same functions that write
//!   channel state), so `InputGate` and the barrier handler see the same
//!   events as today;
//! - the capacity becomes credits (Flink's credit-based flow control): the
//!   receiver grants one per free slot of its queue, the sender sends a
//!   batch only against one;
//! - control events travel in order on the connection without credits; an
//!   unaligned barrier overtakes the sender's queue, carries the batches it
//!   overtook there serialized, and overtakes the receiver's queue too: its
//!   `overtaken` counts both, and `peek_encode` returns both (see `net`);
//! - the watch reports the occupancy of the queue at this end (`placed`:
//!   the outbound queue on the sender's TaskManager, the inbound one on the
//!   receiver's) for the metrics.
//!
//! The only code that knows which variant it holds is the enums' own
//! methods below, `connect` and the graph wiring; the subtask loop, the
//! barrier handler and the partitioners do not.

mod gate;
pub(crate) mod local;
pub(crate) mod net;
mod output;
mod partition;
mod placed;
mod signals;

pub(crate) use gate::InputGate;
pub(crate) use output::OutputEdge;
pub(crate) use partition::{
    Broadcast, Forward, HashPartition, Partition, PartitionFactory, PartitionSetup, Rebalance,
};
pub(crate) use placed::{connect_placed, ClusterWiring};
pub(crate) use signals::TaskSignals;

use std::sync::Arc;

use crate::record::AnyBatch;
use crate::Result;

/// A checkpoint barrier as it travels on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Barrier {
    /// The checkpoint id `n`.
    pub id: u64,
    /// When the coordinator triggered it (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Whether it is a savepoint.
    pub savepoint: bool,
    /// A stop-with-savepoint without drain: the savepoint is the job's last
    /// state, so a subtask that snapshotted for it fires nothing more
    /// (carried by the barrier so every subtask knows it when it
    /// snapshots, whatever the order of control messages).
    pub stop_without_drain: bool,
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
    /// The sender's watermark status (Flink's `WatermarkStatus`): idle
    /// (`true`: leave this channel out of the watermark minimum) or active again.
    Idle(bool),
    /// The sender has no more records.
    EndOfStream,
}

/// The sending end of a channel, wherever its receiver runs.
pub(crate) enum ChannelSender {
    /// The receiver is a subtask of this process.
    Local(local::Tx),
}

/// The receiving end of a channel, wherever its sender runs.
pub(crate) enum ChannelReceiver {
    /// The sender is a subtask of this process.
    Local(local::Rx),
    /// The sender runs on another TaskManager (`net`).
    Remote(net::NetRx),
}

/// Watches a channel's occupancy without keeping it alive (metrics, the
/// backpressure gauge), with the subtasks it links (indices among all of
/// the job's subtasks).
#[derive(Clone)]
pub(crate) struct ChannelWatch {
    link: WatchLink,
    /// The sending subtask.
    pub from: usize,
    /// The receiving subtask.
    pub to: usize,
}

#[derive(Clone)]
enum WatchLink {
    Local(local::WeakChannel),
}

/// A new channel from the subtask with `sender` signals (index `from`) to the
/// one with `receiver` signals (index `to`), holding at most `capacity` data
/// batches. Both subtasks run in this process today; this is where a
/// channel between processes will be chosen.
pub(crate) fn connect(
    capacity: usize,
    (from, sender): (usize, &Arc<TaskSignals>),
    (to, receiver): (usize, &Arc<TaskSignals>),
) -> (ChannelSender, ChannelReceiver, ChannelWatch) {
    let (tx, rx) = local::channel(capacity, sender.clone(), receiver.clone());
    let watch = ChannelWatch {
        link: WatchLink::Local(tx.downgrade()),
        from,
        to,
    };
    (ChannelSender::Local(tx), ChannelReceiver::Local(rx), watch)
}

impl ChannelSender {
    /// Sends a data batch, waiting while the channel is full (unless the
    /// sending subtask is urgent).
    #[inline]
    pub(crate) async fn send_batch(&self, batch: AnyBatch) -> Result<()> {
        match self {
            ChannelSender::Local(tx) => tx.send_batch(batch).await,
        }
    }

    /// Sends a data batch without waiting for space (batches that must
    /// precede an unaligned barrier).
    pub(crate) fn send_batch_now(&self, batch: AnyBatch) -> Result<()> {
        match self {
            ChannelSender::Local(tx) => tx.send_batch_now(batch),
        }
    }

    /// Sends a control event (aligned barrier, watermark, end of stream)
    /// behind the data, without waiting.
    pub(crate) fn send_control(&self, ev: Event) -> Result<()> {
        match self {
            ChannelSender::Local(tx) => tx.send_control(ev),
        }
    }

    /// Sends an unaligned barrier ahead of the queued batches; it records
    /// how many it overtook.
    pub(crate) fn send_priority(&self, barrier: Barrier) -> Result<()> {
        match self {
            ChannelSender::Local(tx) => tx.send_priority(barrier),
        }
    }

    /// A barrier from a subtask whose input ended, before the end of stream
    /// it sent while that is still queued (see `local::Tx::barrier_before_end`);
    /// `false` when the receiver took the end of stream already.
    pub(crate) fn barrier_before_end(&self, barrier: Barrier, priority: bool) -> Result<bool> {
        match self {
            ChannelSender::Local(tx) => tx.barrier_before_end(barrier, priority),
        }
    }

    /// A handle that converts a queued aligned barrier into an unaligned one
    /// later (output-side conversion), without keeping the channel alive.
    pub(crate) fn barrier_converter(&self) -> BarrierConverter {
        match self {
            ChannelSender::Local(tx) => BarrierConverter::Local(tx.downgrade()),
        }
    }
}

/// Converts an aligned barrier still queued on one channel into an unaligned
/// one (`execution.checkpointing.aligned-checkpoint-timeout` at the output
/// side): a network channel does the same in its send queue.
pub(crate) enum BarrierConverter {
    /// An in-process channel.
    Local(local::WeakChannel),
}

impl BarrierConverter {
    /// Converts barrier `id` if it is still queued aligned; whether it was.
    pub(crate) fn convert(&self, id: u64) -> bool {
        match self {
            BarrierConverter::Local(w) => w.convert_barrier(id),
        }
    }
}

impl ChannelReceiver {
    /// Serializes the first `k` data batches queued now, without taking them
    /// (the batches an unaligned barrier overtook become channel state).
    pub(crate) fn peek_encode(
        &self,
        k: usize,
        encode: crate::record::EncodeFn,
    ) -> Result<Vec<Vec<u8>>> {
        match self {
            ChannelReceiver::Local(rx) => rx.peek_encode(k, encode),
            ChannelReceiver::Remote(rx) => rx.peek_encode(k, encode),
        }
    }

    /// An unaligned barrier at the front of the channel, taken, if there is one.
    pub(crate) fn try_recv_priority(&self) -> Option<Barrier> {
        match self {
            ChannelReceiver::Local(rx) => rx.try_recv_priority(),
            ChannelReceiver::Remote(rx) => rx.try_recv_priority(),
        }
    }

    /// The next event if one is queued; `Err` if the sender is gone and
    /// nothing is left.
    #[inline]
    pub(crate) fn try_recv(&self) -> Result<Option<Event>> {
        match self {
            ChannelReceiver::Local(rx) => rx.try_recv(),
            ChannelReceiver::Remote(rx) => rx.try_recv(),
        }
    }
}

impl ChannelWatch {
    /// Queued data batches and capacity, while the channel exists.
    pub(crate) fn occupancy(&self) -> Option<(usize, usize)> {
        match &self.link {
            WatchLink::Local(w) => w.occupancy(),
        }
    }

    /// Whether the channel still exists.
    pub(crate) fn is_alive(&self) -> bool {
        match &self.link {
            WatchLink::Local(w) => w.is_alive(),
        }
    }
}

/// Data batches queued right now over the given channels: the channel
/// occupancy that backpressure keeps bounded.
pub(crate) fn queued(channels: &[ChannelWatch]) -> usize {
    channels
        .iter()
        .filter_map(|w| w.occupancy())
        .map(|(queued, _)| queued)
        .sum()
}
