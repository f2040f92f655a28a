//! Which TaskManager slot runs which subtask: a pure decision.
//!
//! As in Flink with one slot-sharing group, a slot holds one **slice** of
//! the job: subtask `i` of every operator chain (so a job of parallelism p
//! needs p slots, and the records of one slice that stay on forward edges
//! never leave their process). Slices fill the TaskManagers in the order
//! they registered, each up to its slot count, so a spare TaskManager
//! registered last gets nothing until one before it is lost.

/// The slots one TaskManager offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    /// Its data-plane address (`host:port`): its name in a placement.
    pub data_address: String,
    pub slots: usize,
}

/// The slice of each subtask, in the job's subtask order (chain by chain,
/// subtask 0..parallelism of each).
pub(crate) fn slices(parallelism: &[usize]) -> Vec<usize> {
    parallelism.iter().flat_map(|&p| 0..p).collect()
}

/// Places `slices` (the job's largest parallelism) on `offers`: the
/// TaskManager (index into `offers`) of each slice, or `None` when there
/// are fewer slots than slices.
pub(crate) fn place_slices(needed: usize, offers: &[Offer]) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(needed);
    for (i, o) in offers.iter().enumerate() {
        for _ in 0..o.slots {
            if out.len() == needed {
                return Some(out);
            }
            out.push(i);
        }
    }
    (out.len() == needed).then_some(out)
}

/// The data address of the TaskManager running each subtask, given each
/// chain's parallelism; `None` when the slots do not suffice.
pub(crate) fn place(parallelism: &[usize], offers: &[Offer]) -> Option<Vec<String>> {
    let needed = parallelism.iter().copied().max().unwrap_or(0);
    let slot_tm = place_slices(needed, offers)?;
    Some(
        slices(parallelism)
            .into_iter()
            .map(|s| offers[slot_tm[s]].data_address.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(a: &str, slots: usize) -> Offer {
        Offer {
            data_address: a.into(),
            slots,
        }
    }

    #[test]
    fn slices_fill_taskmanagers_in_registration_order() {
        // source p4 -> count p4 -> sink p4 on two TaskManagers of two slots.
        let p = [4, 4, 4];
        let placed = place(&p, &[offer("a", 2), offer("b", 2)]).unwrap();
        let expect: Vec<&str> = ["a", "a", "b", "b"].repeat(3);
        assert_eq!(placed, expect);
    }

    #[test]
    fn a_spare_taskmanager_gets_nothing_until_needed() {
        let placed = place(&[2, 2], &[offer("a", 1), offer("b", 1), offer("spare", 1)]).unwrap();
        assert_eq!(placed, ["a", "b", "a", "b"]);
        // "a" lost: the spare takes its slice.
        let placed = place(&[2, 2], &[offer("b", 1), offer("spare", 1)]).unwrap();
        assert_eq!(placed, ["b", "spare", "b", "spare"]);
    }

    #[test]
    fn chains_of_lower_parallelism_use_the_first_slices() {
        let placed = place(&[1, 3], &[offer("a", 1), offer("b", 2)]).unwrap();
        assert_eq!(placed, ["a", "a", "b", "b"]);
    }

    #[test]
    fn too_few_slots_is_none() {
        assert_eq!(place(&[4], &[offer("a", 1), offer("b", 2)]), None);
        assert_eq!(place(&[4], &[]), None);
        assert_eq!(place(&[], &[]), Some(vec![]));
    }
}
