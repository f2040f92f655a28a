//! Late records: within the allowed lateness they fire their window again
//! with the updated result; later ones go to the late-data side output
//! (or are dropped without one). Side outputs of process functions reach
//! their own stream. The order of records and watermarks is fixed: one
//! record per poll, and watermarks come from marker records
//! (a punctuated generator), so the operator sees exactly this sequence.

use std::time::Duration;

use weir::prelude::*;

/// A click (key, ts), or a marker that moves the watermark to `ts`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Ev {
    Click(u32, i64),
    Mark(i64),
}

impl Ev {
    fn ts(&self) -> i64 {
        match self {
            Ev::Click(_, t) | Ev::Mark(t) => *t,
        }
    }
}

/// Emits its events one per poll, in order.
#[derive(Clone)]
struct Script(Vec<Ev>, usize);

impl SourceFunction<Ev> for Script {
    fn poll_next(&mut self, out: &mut Vec<Ev>, _: usize) -> Result<SourceStatus> {
        if let Some(e) = self.0.get(self.1) {
            out.push(e.clone());
            self.1 += 1;
        }
        Ok(if self.1 >= self.0.len() {
            SourceStatus::Finished
        } else {
            SourceStatus::More
        })
    }
}

/// The watermark is the last marker's time (Flink's punctuated generator).
struct Markers;
impl WatermarkGenerator<Ev> for Markers {
    fn on_event(&mut self, e: &Ev, _: i64, out: &mut WatermarkOutput) {
        if let Ev::Mark(t) = e {
            out.emit_watermark(*t);
        }
    }
    fn on_periodic_emit(&mut self, _: &mut WatermarkOutput) {}
}

fn clicks(env: &Env, script: Vec<Ev>) -> DataStream<Ev> {
    env.add_source(Script(script, 0))
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_generator(|| Markers).with_timestamp_assigner(Ev::ts),
        )
        .filter(|e: &Ev| matches!(e, Ev::Click(..)))
}

#[derive(Clone)]
struct Count;
impl AggregateFunction<Ev> for Count {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: &Ev, acc: &mut u64) {
        *acc += 1
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

type Row = (i64, i64, u64);

fn run(script: Vec<Ev>, lateness: Duration, with_side_output: bool) -> (Vec<Row>, Vec<Ev>) {
    let env = Env::local().unwrap();
    let late = OutputTag::<Ev>::new("late");
    let rows = CollectSink::<Row>::new();
    let late_sink = CollectSink::<Ev>::new();
    let (r, l) = (rows.handle(), late_sink.handle());
    let mut windowed = clicks(&env, script)
        .key_by(|e: &Ev| match e {
            Ev::Click(k, _) => *k,
            Ev::Mark(_) => u32::MAX,
        })
        .window(TumblingEventTimeWindows::of(Duration::from_secs(10)))
        .allowed_lateness(lateness);
    if with_side_output {
        windowed = windowed.side_output_late_data(&late);
    }
    let counts = windowed.aggregate_with(
        Count,
        |_: &u32, w: &WindowContext, n: Vec<u64>, out: &mut Collector<'_, Row>| {
            out.collect((w.window.start, w.window.end, n[0]));
            Ok(())
        },
    );
    counts.add_sink(rows);
    counts.get_side_output(&late).add_sink(late_sink);
    env.execute("lateness").unwrap();
    (r.take(), l.take())
}

fn script() -> Vec<Ev> {
    vec![
        Ev::Click(1, 1_000),
        Ev::Click(1, 2_000),
        Ev::Mark(10_000), // fires [0, 10000) with 2
        Ev::Click(1, 3_000),
        Ev::Mark(12_000), // late within the lateness: fired again with 3
        Ev::Click(1, 12_000),
        Ev::Mark(15_000),    // [0, 10000) is cleaned up (max 9999 + 5000 <= 15000)
        Ev::Click(1, 4_000), // too late: side output
        Ev::Click(1, 13_000),
    ]
}

#[test]
fn late_records_within_the_lateness_fire_the_window_again() {
    let (rows, late) = run(script(), Duration::from_secs(5), true);
    assert_eq!(
        rows,
        vec![(0, 10_000, 2), (0, 10_000, 3), (10_000, 20_000, 2)],
        "a second firing with the late record, then the next window at the end"
    );
    assert_eq!(late, vec![Ev::Click(1, 4_000)]);
}

#[test]
fn without_lateness_late_records_go_to_the_side_output_only() {
    let (rows, late) = run(script(), Duration::ZERO, true);
    assert_eq!(rows, vec![(0, 10_000, 2), (10_000, 20_000, 2)]);
    assert_eq!(late, vec![Ev::Click(1, 3_000), Ev::Click(1, 4_000)]);
}

#[test]
fn without_a_side_output_late_records_are_dropped() {
    let (rows, late) = run(script(), Duration::ZERO, false);
    assert_eq!(rows, vec![(0, 10_000, 2), (10_000, 20_000, 2)]);
    assert!(late.is_empty());
}

/// A process function's side output is its own stream; the main output
/// goes on without its records.
#[derive(Clone)]
struct Split(OutputTag<String>);

impl KeyedProcessFunction<u64, u64, u64> for Split {
    fn open(&mut self, _: &mut KeyedOpenContext<'_, u64>) -> Result<()> {
        Ok(())
    }
    fn process_element(
        &mut self,
        v: u64,
        ctx: &mut KeyedContext<'_, u64>,
        out: &mut Collector<'_, u64>,
    ) -> Result<()> {
        if v % 3 == 0 {
            ctx.output(&self.0, format!("three:{v}"));
        } else {
            out.collect(v);
        }
        Ok(())
    }
}

#[test]
fn process_functions_emit_to_side_outputs() {
    for p in [1, 2] {
        let mut env = Env::local().unwrap();
        env.set_parallelism(p).unwrap();
        let tag = OutputTag::<String>::new("threes");
        let (main, side) = (CollectSink::<u64>::new(), CollectSink::<String>::new());
        let (m, s) = (main.handle(), side.handle());
        let out = env
            .add_source(GeneratorSource::new(1, Some(3_000), |i, _| i))
            .key_by(|v: &u64| v % 17)
            .process(Split(tag.clone()));
        out.add_sink(main);
        out.get_side_output(&tag).add_sink(side);
        env.execute("side outputs").unwrap();
        let mut m = m.take();
        m.sort();
        let mut s = s.take();
        s.sort();
        assert_eq!(m, (0..3_000).filter(|v| v % 3 != 0).collect::<Vec<_>>());
        let mut want: Vec<String> = (0..3_000)
            .filter(|v| v % 3 == 0)
            .map(|v| format!("three:{v}"))
            .collect();
        want.sort();
        assert_eq!(s, want, "p{p}");
    }
}
