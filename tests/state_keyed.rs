//! Keyed state: isolated per key, kept in the subtask that owns the key's key
//! group, with key groups assigned to subtasks as documented in
//! `weir_runtime::keygroup` (contiguous ranges, Flink's formula).

use std::collections::BTreeMap;

use weir::prelude::*;
use weir::runtime::keygroup::{key_group_for, subtask_for_key_group, KeyGroupRange};

/// Per key: a running sum (ValueState), the last three values (ListState) and
/// a histogram of value % 4 (MapState); emits what it sees plus where it ran.
#[derive(Clone, Default)]
struct Stats {
    sum: Option<ValueState<u64>>,
    recent: Option<ListState<u64>>,
    buckets: Option<MapState<u8, u32>>,
    subtask: usize,
    range: Option<KeyGroupRange>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Seen {
    key: u32,
    subtask: usize,
    key_group: u16,
    in_range: bool,
    sum: u64,
    recent: Vec<u64>,
    buckets: Vec<(u8, u32)>,
}

impl KeyedProcessFunction<u32, (u32, u64), Seen> for Stats {
    fn open(&mut self, ctx: &mut KeyedOpenContext<'_, u32>) -> Result<()> {
        self.sum = Some(ctx.value_state(&ValueStateDescriptor::new("sum"))?);
        self.recent = Some(ctx.list_state(&ListStateDescriptor::new("recent"))?);
        self.buckets = Some(ctx.map_state(&MapStateDescriptor::new("buckets"))?);
        self.subtask = ctx.runtime.subtask;
        self.range = Some(ctx.runtime.key_group_range());
        Ok(())
    }

    fn process_element(
        &mut self,
        (key, v): (u32, u64),
        ctx: &mut KeyedContext<'_, u32>,
        out: &mut Collector<'_, Seen>,
    ) -> Result<()> {
        assert_eq!(*ctx.key(), key);
        let (sum, recent, buckets) = (
            self.sum.unwrap(),
            self.recent.unwrap(),
            self.buckets.unwrap(),
        );
        let s = sum.value(ctx)?.unwrap_or(0) + v;
        sum.update(ctx, s)?;
        let mut r = recent.get(ctx)?;
        r.push(v);
        if r.len() > 3 {
            r.remove(0);
        }
        recent.update(ctx, r.clone())?;
        let b = (v % 4) as u8;
        let n = buckets.get(ctx, &b)?.unwrap_or(0);
        buckets.put(ctx, b, n + 1)?;
        let mut hist = buckets.entries(ctx)?;
        hist.sort();
        out.collect(Seen {
            key,
            subtask: self.subtask,
            key_group: ctx.key_group(),
            in_range: self.range.unwrap().contains(ctx.key_group()),
            sum: s,
            recent: r,
            buckets: hist,
        });
        Ok(())
    }
}

#[test]
fn state_is_per_key_and_keys_live_in_their_key_groups_subtask() {
    let max = 128;
    let records: Vec<(u32, u64)> = (0..20_000u64)
        .map(|i| (((i * 7919) % 500) as u32, i))
        .collect();
    for p in [1usize, 3, 4] {
        let env = Env::local().unwrap();
        let sink = CollectSink::new();
        let seen = sink.handle();
        // One source subtask keeps each key's records in input order.
        env.add_source(CollectionSource::new(records.clone()))
            .set_parallelism(1)
            .key_by(|r: &(u32, u64)| r.0)
            .process(Stats::default())
            .set_parallelism(p)
            .add_sink(sink);
        env.execute("keyed-state").unwrap();
        let seen = seen.take();
        assert_eq!(seen.len(), records.len());

        // The reference, per key, in input order.
        let mut expected: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for (k, v) in &records {
            expected.entry(*k).or_default().push(*v);
        }
        let mut got: BTreeMap<u32, Vec<&Seen>> = BTreeMap::new();
        for s in &seen {
            got.entry(s.key).or_default().push(s);
        }
        for (key, values) in &expected {
            let outs = &got[key];
            assert_eq!(outs.len(), values.len());
            let kg = key_group_for(key, max);
            let owner = subtask_for_key_group(kg, max, p);
            let mut sum = 0;
            let mut hist = BTreeMap::new();
            for (i, (o, v)) in outs.iter().zip(values).enumerate() {
                sum += v;
                *hist.entry((v % 4) as u8).or_insert(0u32) += 1;
                assert_eq!(o.sum, sum, "key {key}: value state is the key's own");
                let lo = i.saturating_sub(2);
                assert_eq!(o.recent, values[lo..=i].to_vec(), "key {key}: list state");
                assert_eq!(
                    o.buckets,
                    hist.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
                    "key {key}: map state"
                );
                assert_eq!(o.key_group, kg);
                assert_eq!(
                    o.subtask, owner,
                    "key {key} (group {kg}) must run in subtask {owner} of {p}"
                );
                assert!(o.in_range);
                assert!(KeyGroupRange::for_subtask(max, p, owner).contains(kg));
            }
        }
    }
}

#[test]
fn key_group_ranges_are_flinks() {
    // Flink's KeyGroupRangeAssignment for max 128, parallelism 3: [0-42], [43-85], [86-127].
    let r: Vec<(u16, u16)> = (0..3)
        .map(|i| KeyGroupRange::for_subtask(128, 3, i))
        .map(|r| (r.start, r.end))
        .collect();
    assert_eq!(r, [(0, 42), (43, 85), (86, 127)]);
    assert_eq!(subtask_for_key_group(42, 128, 3), 0);
    assert_eq!(subtask_for_key_group(43, 128, 3), 1);
    assert_eq!(subtask_for_key_group(127, 128, 3), 2);
}

#[test]
fn aggregations_reduce_sum_min_max() {
    let data: Vec<(String, i64)> = (0..3000i64)
        .map(|i| (format!("k{}", i % 7), (i * 37) % 101 - 50))
        .collect();
    let env = Env::local().unwrap();
    let (sums, mins, maxs, reds) = (
        CollectSink::new(),
        CollectSink::new(),
        CollectSink::new(),
        CollectSink::new(),
    );
    let (hs, hmin, hmax, hred) = (sums.handle(), mins.handle(), maxs.handle(), reds.handle());
    let s = env
        .add_source(CollectionSource::new(data.clone()))
        .set_parallelism(1);
    let keyed = s.key_by(|r: &(String, i64)| r.0.clone());
    keyed
        .sum(|r: &(String, i64)| r.1)
        .set_parallelism(2)
        .add_sink(sums);
    keyed
        .min(|r: &(String, i64)| r.1)
        .set_parallelism(2)
        .add_sink(mins);
    keyed
        .max(|r: &(String, i64)| r.1)
        .set_parallelism(2)
        .add_sink(maxs);
    keyed
        .reduce(|a, b| (a.0, b.1.max(a.1)))
        .set_parallelism(2)
        .add_sink(reds);
    env.execute("aggregations").unwrap();
    let last = |v: Vec<(String, i64)>| -> BTreeMap<String, i64> { v.into_iter().collect() };
    let mut want_sum = BTreeMap::new();
    let mut want_min = BTreeMap::new();
    let mut want_max = BTreeMap::new();
    for (k, v) in &data {
        *want_sum.entry(k.clone()).or_insert(0) += v;
        let m = want_min.entry(k.clone()).or_insert(i64::MAX);
        *m = (*m).min(*v);
        let m = want_max.entry(k.clone()).or_insert(i64::MIN);
        *m = (*m).max(*v);
    }
    assert_eq!(hs.len(), data.len(), "one running update per record");
    assert_eq!(last(hs.take()), want_sum);
    assert_eq!(last(hmin.take()), want_min);
    assert_eq!(last(hmax.take()), want_max);
    assert_eq!(last(hred.take()), want_max, "reduce with max");
}
