//! The in-process channel: a bounded queue of `Event`s under a mutex,
//! shared by one sending and one receiving subtask of this process.
//!
//! Data batches count against `capacity` (the sender awaits when it is
//! reached); control events never wait. An unaligned barrier is inserted
//! ahead of the queued batches and records how many it overtook. The actor
//! mailboxes (unbounded in ractor) never carry records, only control. See
//! the contract in `super`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::{Barrier, Event, TaskSignals};
use crate::record::AnyBatch;
use crate::{Error, Result};

/// One channel: a queue of events shared by one sender and one receiver.
///
/// Data batches count against `capacity` (the sender waits when it is
/// reached); barriers and end-of-stream never wait. An unaligned barrier is
/// inserted ahead of the queued batches (after any unaligned barriers already
/// at the front, so barriers keep their order) and records how many batches
/// it overtook.
struct Channel {
    state: Mutex<ChannelState>,
    capacity: usize,
    /// Wakes the sender when space frees up.
    space: Notify,
    /// The sending subtask's signals.
    sender: Arc<TaskSignals>,
    /// The receiving subtask's signals.
    receiver: Arc<TaskSignals>,
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

/// A handle to watch a channel's occupancy without keeping it alive.
#[derive(Clone)]
pub(crate) struct WeakChannel {
    ch: Weak<Channel>,
}

impl WeakChannel {
    /// Queued data batches and capacity, while the channel exists.
    pub(crate) fn occupancy(&self) -> Option<(usize, usize)> {
        self.ch.upgrade().map(|c| (lock(&c).batches, c.capacity))
    }

    /// Whether the channel still exists.
    pub(crate) fn is_alive(&self) -> bool {
        self.ch.strong_count() > 0
    }

    /// Output-side conversion (aligned checkpoint timeout): the aligned
    /// barrier `id`, if it is still queued, becomes an unaligned one ahead of
    /// the batches queued before it (after any unaligned barriers already at
    /// the front), recording how many it overtook, exactly as if it had been
    /// sent with [`Tx::send_priority`] at that point. `false` when it is no
    /// longer queued (taken, or the channel is gone).
    pub(crate) fn convert_barrier(&self, id: u64) -> bool {
        let Some(ch) = self.ch.upgrade() else {
            return false;
        };
        let mut st = lock(&ch);
        let Some(pos) = st
            .queue
            .iter()
            .position(|e| matches!(e, Event::Barrier(b) if b.id == id && !b.unaligned))
        else {
            return false;
        };
        let Some(Event::Barrier(b)) = st.queue.remove(pos) else {
            return false;
        };
        // It overtakes the batches that were queued before it.
        ch.insert_priority(st, b, pos, 0);
        true
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

impl Channel {
    /// Inserts `barrier`, unaligned, ahead of the queued batches (after any
    /// unaligned barriers already at the front, so barriers keep their
    /// order), overtaking the batches queued before index `until` (and
    /// `extra` more that precede them elsewhere: a network channel's batches
    /// still in the sender's queue), and tells the receiver. Takes the lock
    /// held by the caller, so nothing moves in between.
    fn insert_priority(
        &self,
        mut st: std::sync::MutexGuard<'_, ChannelState>,
        mut barrier: Barrier,
        until: usize,
        extra: usize,
    ) {
        let at = st
            .queue
            .iter()
            .position(|e| !matches!(e, Event::Barrier(b) if b.unaligned))
            .unwrap_or(st.queue.len())
            .min(until);
        barrier.unaligned = true;
        barrier.overtaken = st
            .queue
            .range(at..until)
            .filter(|e| matches!(e, Event::Batch(_)))
            .count()
            + extra;
        st.queue.insert(at, Event::Barrier(barrier));
        drop(st);
        self.receiver.raise_urgent();
        self.receiver.gate.notify_one();
    }
}

fn disconnected() -> Error {
    Error::Disconnected("downstream subtask stopped".into())
}

impl Tx {
    /// Sends a data batch, waiting while the channel is full.
    pub(crate) async fn send_batch(&self, batch: AnyBatch) -> Result<()> {
        let mut batch = Some(batch);
        // Started at the first wait for space: back-pressured time (metrics).
        let mut _waiting: Option<crate::waits::Waiting<'_>> = None;
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
            // Woken by space, or by `urgent` (the flag, checked above, lets
            // the batch through). A wake-up left from an urgent barrier
            // already taken is only consumed here: storing it again would
            // wake this very wait at once, again and again, spinning the
            // subtask's thread without yielding (its timers, such as the
            // aligned-checkpoint-timeout conversion, and its control would
            // wait for space).
            tokio::select! {
                _ = &mut space => {}
                _ = &mut urgent => {}
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
    pub(crate) fn send_priority(&self, barrier: Barrier) -> Result<()> {
        self.send_priority_beyond(barrier, 0)
    }

    /// Sends an unaligned barrier ahead of the queued batches, which also
    /// overtook `extra` batches not in this queue (the network receiver's
    /// side: the batches still in the sender's queue, shipped serialized
    /// with the barrier). Its `overtaken` is the queued batches plus `extra`.
    pub(crate) fn send_priority_beyond(&self, barrier: Barrier, extra: usize) -> Result<()> {
        let st = lock(&self.ch);
        if !st.receiver_alive {
            return Err(disconnected());
        }
        let until = st.queue.len();
        self.ch.insert_priority(st, barrier, until, extra);
        Ok(())
    }

    /// A checkpoint barrier from a subtask whose input ended: inserted just
    /// before the end of stream it sent, while that is still queued (the
    /// receiver has not reached it); unaligned (`priority`), ahead of the
    /// queued batches, as [`Tx::send_priority`] does. `false` when the end
    /// of stream was taken already: the receiver's input has ended, and
    /// nothing of this sender is in flight.
    pub(crate) fn barrier_before_end(&self, barrier: Barrier, priority: bool) -> Result<bool> {
        let mut st = lock(&self.ch);
        if !st.receiver_alive {
            return Err(disconnected());
        }
        let Some(end) = st
            .queue
            .iter()
            .rposition(|e| matches!(e, Event::EndOfStream))
        else {
            return Ok(false);
        };
        if priority {
            // Under the same lock: the end of stream is still queued.
            let until = st.queue.len();
            self.ch.insert_priority(st, barrier, until, 0);
            return Ok(true);
        }
        st.queue.insert(
            end,
            Event::Barrier(Barrier {
                unaligned: false,
                overtaken: 0,
                ..barrier
            }),
        );
        drop(st);
        self.ch.receiver.gate.notify_one();
        Ok(true)
    }

    /// A watch on this channel that does not keep it alive.
    pub(crate) fn downgrade(&self) -> WeakChannel {
        WeakChannel {
            ch: Arc::downgrade(&self.ch),
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

    /// Like [`Rx::try_recv`], but a data batch at the front stays queued
    /// unless `batches` (a network pump without credit: control events and
    /// unaligned barriers go on, data waits).
    pub(crate) fn try_recv_if(&self, batches: bool) -> Result<Option<Event>> {
        let mut st = lock(&self.ch);
        match st.queue.front() {
            Some(Event::Batch(_)) if !batches => Ok(None),
            Some(_) => {
                let ev = st.queue.pop_front();
                if matches!(ev, Some(Event::Batch(_))) {
                    st.batches -= 1;
                    drop(st);
                    self.ch.space.notify_one();
                }
                Ok(ev)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn batch(v: u64) -> AnyBatch {
        Box::new(vec![v])
    }

    fn values(rx: &Rx) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(ev)) = rx.try_recv() {
            out.push(match ev {
                Event::Batch(b) => crate::record::downcast::<u64>(b)[0].to_string(),
                Event::Barrier(b) => format!("b{}{}", b.id, if b.unaligned { "u" } else { "" }),
                Event::Watermark(w) => format!("w{w}"),
                Event::Idle(i) => format!("idle{i}"),
                Event::EndOfStream => "end".into(),
            });
        }
        out
    }

    /// An aligned barrier still queued moves ahead of the batches queued
    /// before it, with their count; one already taken is not found.
    #[test]
    fn a_queued_aligned_barrier_converts_to_unaligned_ahead_of_its_batches() {
        let (s, r) = (
            Arc::new(TaskSignals::default()),
            Arc::new(TaskSignals::default()),
        );
        let (tx, rx) = channel(8, s, r.clone());
        for v in [1, 2] {
            tx.send_batch_now(batch(v)).unwrap();
        }
        let b = |id| Barrier {
            id,
            timestamp_ms: 0,
            savepoint: false,
            stop_without_drain: false,
            unaligned: false,
            overtaken: 0,
        };
        tx.send_control(Event::Barrier(b(7))).unwrap();
        tx.send_batch_now(batch(3)).unwrap();
        let w = tx.downgrade();
        assert!(!w.convert_barrier(6), "no barrier 6 queued");
        assert!(w.convert_barrier(7));
        assert!(r.take_urgent(), "the receiver is told");
        assert_eq!(
            rx.try_recv_priority().map(|b| (b.id, b.overtaken)),
            Some((7, 2))
        );
        assert_eq!(values(&rx), ["1", "2", "3"]);
        assert!(!w.convert_barrier(7), "taken already");
    }

    /// A send blocked on a full channel waits (yields) even with a wake-up
    /// left from an urgent barrier already taken: it used to store that
    /// wake-up again and spin, so nothing else on its thread ran and the
    /// space freed by a task of that thread never came.
    #[test]
    fn a_stale_urgent_wake_up_does_not_spin_a_blocked_send() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let s = Arc::new(TaskSignals::default());
                let (tx, rx) = channel(1, s.clone(), Arc::new(TaskSignals::default()));
                tx.send_batch(batch(1)).await.unwrap();
                s.raise_urgent();
                assert!(s.take_urgent());
                // Frees the space later, on this same thread.
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = rx.try_recv();
                    std::mem::forget(rx);
                });
                tx.send_batch(batch(2)).await.unwrap();
            });
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the blocked send spins instead of waiting for space");
    }
}
