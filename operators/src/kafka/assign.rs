//! Which source subtask reads which partition: a pure function of the topic,
//! the partition and the parallelism, the same one Flink's
//! `KafkaSourceEnumerator` uses, so a partition lands on the same subtask
//! index in weir as in Flink.
//!
//! Every subtask computes it on its own (no coordinator): each one lists the
//! topic's partitions and keeps those it owns. The partitions of one topic
//! go round-robin over the subtasks from a start index derived from the
//! topic's name, so several topics with few partitions still spread.

/// The subtask, in `0..parallelism`, that reads `partition` of `topic`.
pub fn owner(topic: &str, partition: i32, parallelism: usize) -> usize {
    let n = parallelism.max(1) as i64;
    // Java's String.hashCode over UTF-16 code units, wrapping.
    let hash = topic
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    let start = (hash.wrapping_mul(31) & 0x7FFF_FFFF) as i64 % n;
    ((start + partition as i64) % n) as usize
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn java_string_hash_code_start_index() {
        // "test".hashCode() = 3556498 in Java; * 31 = 110251438; & 0x7FFFFFFF
        // = 110251438; % 4 = 2 (Flink's start index for 4 readers).
        assert_eq!(owner("test", 0, 4), 2);
        assert_eq!(owner("test", 1, 4), 3);
        assert_eq!(owner("test", 2, 4), 0);
        // a hash that overflows i32 and turns negative
        let long = "a-topic-name-long-enough-to-overflow";
        for p in 0..8 {
            assert!(owner(long, p, 3) < 3);
        }
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_load_is_even() {
        for parallelism in 1..6 {
            for partitions in 1..20 {
                let mut load = vec![0; parallelism];
                for p in 0..partitions {
                    load[owner("visits", p, parallelism)] += 1;
                }
                assert_eq!(load.iter().sum::<i32>(), partitions);
                let (lo, hi) = (load.iter().min().unwrap(), load.iter().max().unwrap());
                assert!(
                    hi - lo <= 1,
                    "{parallelism} subtasks, {partitions} partitions: {load:?}"
                );
            }
        }
    }
}
