//! One output edge of a subtask: its partitioner and one sender per
//! downstream channel. Records are routed into batches and sent with
//! backpressure; barriers, watermarks and end of stream go out on every
//! channel after everything routed before them.

use super::{Barrier, ChannelSender, Event, Partition};
use crate::record::AnyBatch;
use crate::Result;

/// One output edge of a subtask: a partitioner and one sender per channel.
pub(crate) struct OutputEdge {
    pub partition: Box<dyn Partition>,
    pub senders: Vec<ChannelSender>,
    pub ready: Vec<(usize, AnyBatch)>,
    /// The side output this edge carries (`None`: the main output).
    pub side: Option<std::sync::Arc<str>>,
    /// Copies a batch of the side output's type (several consumers of one tag).
    pub side_clone: Option<crate::record::CloneFn>,
}

impl OutputEdge {
    pub(crate) fn new(partition: Box<dyn Partition>, senders: Vec<ChannelSender>) -> Self {
        OutputEdge {
            partition,
            senders,
            ready: Vec::new(),
            side: None,
            side_clone: None,
        }
    }

    /// The same edge carrying side output `tag` instead of the main output.
    pub(crate) fn for_side(
        mut self,
        tag: Option<std::sync::Arc<str>>,
        clone: Option<crate::record::CloneFn>,
    ) -> Self {
        self.side = tag;
        self.side_clone = clone;
        self
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
    /// batches queued in the channels. With `convertible` (an aligned
    /// barrier that may be converted to an unaligned one later, see
    /// `BarrierConverter`) the partial buffers go out without waiting for
    /// space too, so the barrier is queued at once, where the conversion can
    /// find it, instead of after the queue drained.
    pub(crate) async fn barrier(&mut self, barrier: Barrier, convertible: bool) -> Result<()> {
        if barrier.unaligned || convertible {
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

    /// Emits a watermark status (idle or active again) on every channel
    /// after every record routed so far.
    pub(crate) async fn idle(&mut self, idle: bool) -> Result<()> {
        self.flush().await?;
        for s in &self.senders {
            s.send_control(Event::Idle(idle))?;
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
