//! Where a channel is made when its two subtasks may run in different
//! processes (cluster mode): an in-process queue when both run here, a
//! network channel (`super::net`) when one end runs on another
//! TaskManager, and a throw-away queue when neither end runs here (the
//! TaskManager instantiates the whole plan and keeps only its subtasks).

use std::sync::Arc;

use super::net::{ChannelKey, NetworkEnv};
use super::{connect, ChannelReceiver, ChannelSender, ChannelWatch, TaskSignals, WatchLink};
use crate::record::{DecodeFn, EncodeFn};

/// Cluster mode: where each subtask runs, and this TaskManager's network.
pub(crate) struct ClusterWiring<'a> {
    /// This TaskManager's data address.
    pub here: &'a str,
    /// The data address of the TaskManager of each subtask.
    pub placement: &'a [String],
    pub net: &'a NetworkEnv,
    /// The attempt the channels belong to.
    pub generation: u64,
}

/// Channel number `channel` of the plan from subtask `from` to subtask
/// `to`: see the module doc. `codec` is the edge's record codec (only a
/// network channel uses it).
pub(crate) fn connect_placed(
    wiring: Option<&ClusterWiring<'_>>,
    channel: usize,
    capacity: usize,
    (from, sender): (usize, &Arc<TaskSignals>),
    (to, receiver): (usize, &Arc<TaskSignals>),
    codec: Option<(EncodeFn, DecodeFn)>,
) -> crate::Result<(ChannelSender, ChannelReceiver, ChannelWatch)> {
    let Some(w) = wiring else {
        return Ok(connect(capacity, (from, sender), (to, receiver)));
    };
    let at = |t: usize| {
        w.placement.get(t).map(String::as_str).ok_or_else(|| {
            crate::Error::Internal(format!("subtask {t} has no place in the deployment"))
        })
    };
    let (src, dst) = (at(from)?, at(to)?);
    let (here_src, here_dst) = (src == w.here, dst == w.here);
    if here_src == here_dst {
        // Both here (a real queue), or neither (a queue dropped unused).
        return Ok(connect(capacity, (from, sender), (to, receiver)));
    }
    let (encode, decode) = codec.ok_or_else(|| {
        crate::Error::Internal(format!(
            "channel {channel} ({from} -> {to}) crosses processes but its records have no codec"
        ))
    })?;
    let key = ChannelKey {
        generation: w.generation,
        channel,
        from,
        to,
    };
    // The end that is not here is a queue nobody uses (its spec is dropped).
    let (dummy_tx, dummy_rx, _) = connect(capacity, (from, sender), (to, receiver));
    if here_src {
        let (tx, weak) = w.net.sender(key, capacity, sender.clone(), encode);
        let watch = ChannelWatch {
            link: WatchLink::Local(weak),
            from,
            to,
        };
        Ok((tx, dummy_rx, watch))
    } else {
        let peer: std::net::SocketAddr = src.parse().map_err(|e| {
            crate::Error::Cluster(format!("bad TaskManager data address '{src}': {e}"))
        })?;
        let (rx, weak) = w
            .net
            .receiver(key, peer, capacity, receiver.clone(), decode);
        let watch = ChannelWatch {
            link: WatchLink::Local(weak),
            from,
            to,
        };
        Ok((dummy_tx, rx, watch))
    }
}
