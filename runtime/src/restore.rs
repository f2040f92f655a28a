//! Maps a loaded checkpoint onto the subtasks of a new job.
//!
//! Operators are matched **by name** (names are unique in a job; give
//! stateful operators stable names with `.name(...)`). A checkpoint with
//! state for an operator the job does not have is rejected, as Flink does
//! without `allowNonRestoredState`.
//!
//! - Keyed state: the snapshots of all old subtasks are merged per operator
//!   (they hold disjoint key groups): canonical (heap) snapshots into one,
//!   RocksDB instances listed with the job directory their files are in; each
//!   new subtask keeps the key groups of its own range
//!   ([`crate::state::KeyedStateBackend::restore_from`]). So a different
//!   parallelism works (rescaling), and either backend restores either form.
//! - Operator state: the list elements of all old subtasks are dealt
//!   round-robin to the new subtasks (Flink's even-split redistribution).
//! - Max parallelism: keyed state is partitioned into `pipeline.max-parallelism`
//!   key groups, recorded in each state file; a job with another value is
//!   refused, naming the operator and both values (Flink does the same).
//! - Channel state (unaligned checkpoints): goes back to the same subtask of
//!   the same chain; when the chain's parallelism changed, all of it is
//!   handed to the chain's subtask 0 (`SubtaskRestore::rescaled`) and
//!   spread over the new subtasks by the chain's input edges when the job is
//!   built (`crate::rescale`: by key group for hash edges, round robin for
//!   forward and rebalance edges).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::checkpoint::storage::LoadedCheckpoint;
use crate::checkpoint::{KeyedStateHandle, SubtaskRestore};
use crate::graph::JobPlan;
use crate::snapshot::{OperatorStateStore, RestoredKeyed};
use crate::{Error, Result};

/// Refuses a checkpoint whose keyed state was partitioned into another
/// number of key groups than `max_parallelism` (the new job's
/// `pipeline.max-parallelism`), naming the operator and both values.
/// Files from before the value was recorded are not checked.
pub(crate) fn check_max_parallelism(cp: &LoadedCheckpoint, max_parallelism: usize) -> Result<()> {
    for st in &cp.states {
        let Some(old) = st.max_parallelism else {
            continue;
        };
        if old == max_parallelism {
            continue;
        }
        if let Some(op) = st.operators.iter().find(|o| o.keyed.is_some()) {
            return Err(Error::Restore(format!(
                "checkpoint {}: the keyed state of operator '{}' was written with \
                 pipeline.max-parallelism {old}, and this job has {max_parallelism}: its key groups \
                 would not line up; run with -D pipeline.max-parallelism={old}",
                cp.dir.display(),
                op.name
            )));
        }
    }
    Ok(())
}

/// Per chain and subtask of `plan`, what to restore; `max_parallelism` is
/// the job's (see [`check_max_parallelism`]).
pub(crate) fn assign(
    cp: &LoadedCheckpoint,
    plan: &JobPlan,
    max_parallelism: usize,
) -> Result<Vec<Vec<SubtaskRestore>>> {
    check_max_parallelism(cp, max_parallelism)?;
    let known: BTreeSet<&str> = plan
        .chains
        .iter()
        .flat_map(|c| c.operators.iter().map(String::as_str))
        .collect();
    // Operator name -> (old subtask index, snapshot) in old subtask order.
    let mut by_op: BTreeMap<&str, Vec<(usize, &crate::checkpoint::OperatorSnapshot)>> =
        BTreeMap::new();
    for st in &cp.states {
        for op in &st.operators {
            if !known.contains(op.name.as_str()) {
                return Err(Error::Restore(format!(
                    "checkpoint {} has state for operator '{}', which this job does not have (operators are matched by name)",
                    cp.dir.display(),
                    op.name
                )));
            }
            by_op
                .entry(op.name.as_str())
                .or_default()
                .push((st.subtask, op));
        }
    }
    let mut merged_keyed: HashMap<&str, Arc<RestoredKeyed>> = HashMap::new();
    let mut op_stores: HashMap<&str, Vec<OperatorStateStore>> = HashMap::new();
    // RocksDB file paths are relative to the job directory of the checkpoint.
    let job_dir = cp.dir.parent().unwrap_or(&cp.dir).to_path_buf();
    for (name, mut snaps) in by_op {
        snaps.sort_by_key(|(i, _)| *i);
        if snaps.iter().any(|(_, s)| s.keyed.is_some()) {
            let mut m = RestoredKeyed::default();
            for (_, s) in &snaps {
                match &s.keyed {
                    Some(KeyedStateHandle::Canonical(k)) => {
                        for (state, ss) in &k.states {
                            let e = m.canonical.states.entry(state.clone()).or_insert_with(|| {
                                crate::state::StateSnapshot {
                                    kind: ss.kind,
                                    key_groups: BTreeMap::new(),
                                }
                            });
                            e.key_groups
                                .extend(ss.key_groups.iter().map(|(g, b)| (*g, b.clone())));
                        }
                    }
                    Some(KeyedStateHandle::Rocks(h)) => m.rocks.push((job_dir.clone(), h.clone())),
                    None => {}
                }
            }
            merged_keyed.insert(name, Arc::new(m));
        }
        op_stores.insert(
            name,
            snaps.iter().map(|(_, s)| s.operator.clone()).collect(),
        );
    }
    let mut out = Vec::with_capacity(plan.chains.len());
    for chain in plan.chains.iter() {
        let mut subtasks = Vec::with_capacity(chain.parallelism);
        for i in 0..chain.parallelism {
            let mut r = SubtaskRestore::default();
            for name in &chain.operators {
                let keyed = merged_keyed.get(name.as_str()).cloned();
                let stores = op_stores.get(name.as_str());
                if keyed.is_none() && stores.is_none() {
                    continue;
                }
                let store = stores
                    .map(|s| OperatorStateStore::redistribute(s, chain.parallelism, i))
                    .unwrap_or_default();
                r.operators.insert(name.clone(), (keyed, store));
            }
            subtasks.push(r);
        }
        // Channel state: the same subtask at the same parallelism, else
        // every old subtask's, in order, to be spread (`crate::rescale`).
        let mut old: Vec<&crate::checkpoint::SubtaskState> = cp
            .states
            .iter()
            .filter(|s| !s.channel_state.is_empty() && s.chain == chain.name())
            .collect();
        old.sort_by_key(|s| s.subtask);
        for st in old {
            if st.parallelism == chain.parallelism {
                subtasks[st.subtask].channel_state = st.channel_state.clone();
            } else if let Some(first) = subtasks.first_mut() {
                first
                    .rescaled
                    .extend(st.channel_state.iter().map(|e| (st.subtask, e.clone())));
            }
        }
        out.push(subtasks);
    }
    let placed: usize = out
        .iter()
        .flatten()
        .map(|r| r.channel_state.len() + r.rescaled.len())
        .sum();
    let stored: usize = cp.states.iter().map(|s| s.channel_state.len()).sum();
    if placed != stored {
        return Err(Error::Restore(format!(
            "checkpoint {} holds in-flight data for operator chains this job does not have",
            cp.dir.display()
        )));
    }
    Ok(out)
}
