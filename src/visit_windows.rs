//! The page-visit job on event time, shared by the `visit_windows` example
//! and its tests: a click stream `(user, page, event_time_ms)` that arrives
//! out of order -> timestamps and watermarks (bounded out-of-orderness
//! [`OUT_OF_ORDERNESS`]) -> `key_by(page)` -> tumbling event-time windows of
//! [`WINDOW`] -> visits per page and window, with clicks too late for their
//! window sent to the side output `late-clicks`.
//!
//! The clicks are either generated ([`ClickSpec`], [`generated_clicks`]:
//! deterministic from a seed, every record a function of its index, so a
//! test computes the reference from the same records) or read from a CSV
//! file of lines `user,page,event_time_ms` ([`csv_clicks`]).
//!
//! Generated click `i` happens at [`START_MS`]` + i * `[`SPACING_MS`] minus a
//! random delay of up to [`DISORDER_MS`] (within the watermark's bound, so
//! never late), and a fraction of the clicks ([`ClickSpec::late_fraction`])
//! arrive a further [`VERY_LATE_MS`] late: their windows have fired by then,
//! so they end up in the late side output (except the few that arrive before
//! the first watermark passed their window).
//!
//! With an output directory, the windows' results are written exactly once
//! (the two-phase-commit [`FileSink`]) as lines
//! `window_start<TAB>window_end<TAB>page<TAB>visits` (times in ms since the
//! epoch) into `DIR/visits`, and the late clicks as CSV lines into
//! `DIR/late`. Both sinks keep their totals in operator state, so a job
//! restored from a checkpoint reports the totals of the whole input.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_operators::rng::SplitMix64;
use weir_runtime::watermarks::BoundedOutOfOrderness;
use weir_runtime::Result;

use crate::prelude::*;

/// Event time of the first generated click: 2024-01-01T00:00:00Z, in ms.
pub const START_MS: i64 = 1_704_067_200_000;
/// Event time between generated clicks `i` and `i + 1` (before their delays).
pub const SPACING_MS: i64 = 1;
/// A generated click's ordinary delay is up to this (uniform): within the
/// watermark's bound, so no ordinary click is late.
pub const DISORDER_MS: i64 = 3_000;
/// The watermark's bound: watermark = largest timestamp seen - bound - 1 ms.
pub const OUT_OF_ORDERNESS: Duration = Duration::from_secs(5);
/// The tumbling window size.
pub const WINDOW: Duration = Duration::from_secs(10);
/// How much later than its neighbours a very late click arrives: far more
/// than the watermark lags behind at full speed, so its windows have fired.
pub const VERY_LATE_MS: i64 = 60 * 60 * 1000;

/// Name of the source of clicks.
pub const SOURCE: &str = "Clicks";
/// Name of the window operator (`records_in`: clicks, `records_out`: windows).
pub const VISITS: &str = "Visits";
/// Name of the sink of the window results.
pub const VISITS_SINK: &str = "Visits sink";
/// Name of the sink of the late clicks.
pub const LATE_SINK: &str = "Late clicks sink";
/// The side output of the clicks too late for their window.
pub const LATE_TAG: &str = "late-clicks";

/// One click.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Click {
    /// Who clicked.
    pub user: u32,
    /// The page visited.
    pub page: String,
    /// When (event time, ms since the epoch).
    pub ts: i64,
}

/// One window's visits of one page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitRow {
    /// The window's start (inclusive, ms since the epoch).
    pub start: i64,
    /// The window's end (exclusive).
    pub end: i64,
    /// The page.
    pub page: String,
    /// Clicks on the page in the window.
    pub visits: u64,
}

/// What the generated click stream looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClickSpec {
    /// Distinct pages (`/page/0` ... ; low numbers are visited more).
    pub pages: u64,
    /// Distinct users.
    pub users: u32,
    /// Fraction of the clicks that arrive [`VERY_LATE_MS`] late (0 to 1).
    pub late_fraction: f64,
    /// The seed.
    pub seed: u64,
}

impl Default for ClickSpec {
    fn default() -> Self {
        ClickSpec {
            pages: 100,
            users: 10_000,
            late_fraction: 0.005,
            seed: 2,
        }
    }
}

impl ClickSpec {
    /// Refuses specs that generate nothing sensible.
    pub fn validate(&self) -> Result<()> {
        if self.pages == 0 {
            return Err(Error::user("--pages must be at least 1"));
        }
        if self.users == 0 {
            return Err(Error::user("--users must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.late_fraction) {
            return Err(Error::user(format!(
                "--late-fraction must be between 0 and 1, not {}",
                self.late_fraction
            )));
        }
        Ok(())
    }

    /// Click `i` (from the generator `rng` seeded for it) and whether it is
    /// one of the very late ones. The same random draws are made whatever the
    /// late fraction, so the clicks differ only in their lateness.
    pub fn click(&self, i: u64, rng: &mut SplitMix64) -> (Click, bool) {
        let user = rng.below(self.users as u64) as u32;
        // Skewed: page k is visited about as often as 1/sqrt(k).
        let u = rng.unit_f64();
        let page = ((u * u * self.pages as f64) as u64).min(self.pages - 1);
        let delay = rng.below(DISORDER_MS as u64 + 1) as i64;
        let very_late = rng.unit_f64() < self.late_fraction;
        let mut ts = START_MS + i as i64 * SPACING_MS - delay;
        if very_late {
            ts -= VERY_LATE_MS;
        }
        (
            Click {
                user,
                page: format!("/page/{page}"),
                ts,
            },
            very_late,
        )
    }

    /// Click `i` of the stream, as the generator source makes it.
    pub fn click_at(&self, i: u64) -> (Click, bool) {
        self.click(i, &mut SplitMix64::for_index(self.seed, i))
    }
}

/// The generated click stream: `count` clicks (`None`: without end), paced
/// to about `rate` clicks per second over all source subtasks if given.
pub fn generated_clicks(
    env: &Env,
    spec: ClickSpec,
    count: Option<u64>,
    rate: Option<f64>,
) -> Result<DataStream<Click>> {
    spec.validate()?;
    let mut source = GeneratorSource::new(spec.seed, count, move |i, rng: &mut SplitMix64| {
        spec.click(i, rng).0
    });
    if let Some(r) = rate {
        source = source.with_rate(r);
    }
    Ok(env.add_source(source).name(SOURCE))
}

/// The clicks of a CSV file (or of every file under a directory), one
/// `user,page,event_time_ms` per line; blank lines, lines starting with `#`
/// and the header line `user,page,event_time_ms` are skipped. The input is
/// checked first: a malformed line fails here with its file and line number.
/// Returns the stream and the number of clicks.
pub fn csv_clicks(env: &Env, path: &Path) -> Result<(DataStream<Click>, u64)> {
    let lines = FileSource::new(path)?;
    let mut clicks = 0;
    for (file, _) in lines.files() {
        clicks += check_csv(file)?;
    }
    let source = CsvClicks {
        lines,
        buf: Vec::new(),
    };
    Ok((env.add_source(source).name(SOURCE), clicks))
}

/// Checks every line of a CSV file; returns its number of clicks.
fn check_csv(file: &Path) -> Result<u64> {
    let text = std::fs::read(file).map_err(|e| Error::io("cannot read input", file, e))?;
    let text = String::from_utf8_lossy(&text);
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        match parse_click(line) {
            Ok(Some(_)) => n += 1,
            Ok(None) => {}
            Err(why) => {
                return Err(Error::user(format!(
                    "{}, line {}: malformed click {line:?}: {why}",
                    file.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(n)
}

/// Parses a CSV line `user,page,event_time_ms`; `Ok(None)` for a line to
/// skip (blank, a `#` comment, the header).
pub fn parse_click(line: &str) -> std::result::Result<Option<Click>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') || line == "user,page,event_time_ms" {
        return Ok(None);
    }
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [user, page, ts] = fields[..] else {
        return Err(format!(
            "expected 3 fields user,page,event_time_ms, found {}",
            fields.len()
        ));
    };
    let user = user
        .parse()
        .map_err(|_| format!("user {user:?} is not a number (0 to {})", u32::MAX))?;
    if page.is_empty() || page.contains('\t') {
        return Err(format!("page {page:?} is empty or contains a tab"));
    }
    let ts = ts
        .parse()
        .map_err(|_| format!("event_time_ms {ts:?} is not an integer (ms since the epoch)"))?;
    Ok(Some(Click {
        user,
        page: page.to_string(),
        ts,
    }))
}

/// A click as a CSV line (what [`parse_click`] reads).
pub fn format_click(c: &Click, line: &mut String) {
    use std::fmt::Write;
    let _ = write!(line, "{},{},{}", c.user, c.page, c.ts);
}

/// A window result as an output line.
pub fn format_visits(r: &VisitRow, line: &mut String) {
    use std::fmt::Write;
    let _ = write!(line, "{}\t{}\t{}\t{}", r.start, r.end, r.page, r.visits);
}

/// The lines of a [`FileSource`], parsed as clicks. A malformed line fails
/// the job naming it ([`csv_clicks`] checks the input before, so this only
/// happens when a file changes while the job runs).
#[derive(Clone)]
struct CsvClicks {
    lines: FileSource,
    buf: Vec<String>,
}

impl SourceFunction<Click> for CsvClicks {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        self.lines.open(ctx)
    }
    fn poll_next(&mut self, out: &mut Vec<Click>, max: usize) -> Result<SourceStatus> {
        self.buf.clear();
        let status = self.lines.poll_next(&mut self.buf, max)?;
        for line in &self.buf {
            match parse_click(line) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(why) => {
                    return Err(Error::user(format!("malformed click {line:?}: {why}")));
                }
            }
        }
        Ok(status)
    }
    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        self.lines.snapshot_state(checkpoint_id, state)
    }
    fn close(&mut self) -> Result<()> {
        SourceFunction::<String>::close(&mut self.lines)
    }
}

/// Counts a page's clicks in a window.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountVisits;

impl AggregateFunction<Click> for CountVisits {
    type Acc = u64;
    type Out = u64;
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, _: &Click, acc: &mut u64) {
        *acc += 1;
    }
    fn get_result(&self, acc: &u64) -> u64 {
        *acc
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// Progress of a visit-windows job, read while it runs and after it ended.
#[derive(Clone)]
pub struct VisitWindows {
    /// The largest watermark a window fired at (`i64::MIN`: none yet).
    watermark: Arc<AtomicI64>,
    /// Per visits-sink subtask: (windows, visits).
    visits: Board,
    /// Per late-sink subtask: (late clicks, late clicks).
    late: Board,
}

impl VisitWindows {
    /// The event time the job reached: the watermark at which its latest
    /// window fired (`None` before the first window).
    pub fn watermark(&self) -> Option<i64> {
        match self.watermark.load(Ordering::Relaxed) {
            i64::MIN => None,
            w => Some(w),
        }
    }
    /// Windows emitted (page and window results), including those of the
    /// checkpoint the job was restored from.
    pub fn windows(&self) -> u64 {
        self.visits.total().0
    }
    /// Visits counted in the windows emitted.
    pub fn visits(&self) -> u64 {
        self.visits.total().1
    }
    /// Clicks too late for their window.
    pub fn late(&self) -> u64 {
        self.late.total().0
    }
}

/// Per-subtask counters of a sink, published for the progress lines.
#[derive(Clone, Default)]
struct Board(Arc<Mutex<Vec<(u64, u64)>>>);

impl Board {
    fn set(&self, subtask: usize, v: (u64, u64)) {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() <= subtask {
            b.resize(subtask + 1, (0, 0));
        }
        b[subtask] = v;
    }
    fn total(&self) -> (u64, u64) {
        let b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        b.iter().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1))
    }
}

/// Adds the visit windows to `clicks`; with `output`, the windows' results
/// go to `output/visits` and the late clicks to `output/late`. Returns a
/// handle on the job's progress.
pub fn visit_windows(clicks: &DataStream<Click>, output: Option<&Path>) -> Result<VisitWindows> {
    let (visits_file, late_file) = match output {
        Some(d) => (
            Some(FileSink::new(
                d.join("visits"),
                format_visits as fn(&VisitRow, &mut String),
            )?),
            Some(FileSink::new(
                d.join("late"),
                format_click as fn(&Click, &mut String),
            )?),
        ),
        None => (None, None),
    };
    let timestamped = clicks.assign_timestamps_and_watermarks(click_watermarks());
    Ok(visits_per_window(
        &timestamped,
        WINDOW,
        visits_file,
        late_file,
    ))
}

/// The clicks' watermark strategy: timestamps from [`Click::ts`], bounded
/// out-of-orderness [`OUT_OF_ORDERNESS`].
pub fn click_watermarks() -> WatermarkStrategy<Click, BoundedOutOfOrderness> {
    WatermarkStrategy::for_bounded_out_of_orderness(OUT_OF_ORDERNESS)
        .with_timestamp_assigner(|c: &Click| c.ts)
}

/// The visit windows of `clicks`, a stream that already has timestamps and
/// watermarks: `key_by(page)` -> tumbling event-time windows of `window`
/// (operator [`VISITS`]) -> the counting sink [`VISITS_SINK`], writing the
/// window results to `visits` if given; clicks too late for their window
/// go to the side output [`LATE_TAG`] and the counting sink [`LATE_SINK`],
/// writing them to `late` if given. Both sinks keep their totals in operator
/// state. Returns a handle on the job's progress.
pub fn visits_per_window<V, L>(
    clicks: &DataStream<Click>,
    window: Duration,
    visits: Option<V>,
    late: Option<L>,
) -> VisitWindows
where
    V: SinkFunction<VisitRow> + Clone,
    L: SinkFunction<Click> + Clone,
{
    let progress = VisitWindows {
        watermark: Arc::new(AtomicI64::new(i64::MIN)),
        visits: Board::default(),
        late: Board::default(),
    };
    let late_tag = OutputTag::<Click>::new(LATE_TAG);
    let reached = progress.watermark.clone();
    let rows = clicks
        .key_by(|c: &Click| c.page.clone())
        .window(TumblingEventTimeWindows::of(window))
        .side_output_late_data(&late_tag)
        .aggregate_with(
            CountVisits,
            move |page: &String,
                  w: &WindowContext,
                  n: Vec<u64>,
                  out: &mut Collector<'_, VisitRow>| {
                reached.fetch_max(w.current_watermark, Ordering::Relaxed);
                out.collect(VisitRow {
                    start: w.window.start,
                    end: w.window.end,
                    page: page.clone(),
                    visits: n.iter().sum(),
                });
                Ok(())
            },
        )
        .name(VISITS);
    rows.add_sink(CountingSink {
        inner: visits,
        weigh: |r: &VisitRow| r.visits,
        board: progress.visits.clone(),
        subtask: 0,
        counts: (0, 0),
    })
    .name(VISITS_SINK);
    rows.get_side_output(&late_tag)
        .add_sink(CountingSink {
            inner: late,
            weigh: |_: &Click| 1,
            board: progress.late.clone(),
            subtask: 0,
            counts: (0, 0),
        })
        .name(LATE_SINK);
    progress
}

/// Event time for people: `2024-01-01 00:41:39.999` (UTC).
pub fn format_event_time(ms: i64) -> String {
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// A sink that counts its records (and their weight), keeps the counts in
/// its operator state, publishes them on a [`Board`], and hands the records
/// to its inner sink (a [`FileSink`], a Kafka sink, ...) if it has one.
#[derive(Clone)]
struct CountingSink<T, S> {
    inner: Option<S>,
    weigh: fn(&T) -> u64,
    board: Board,
    subtask: usize,
    /// (records, weight) up to here, restored ones included.
    counts: (u64, u64),
}

/// The counts' operator state.
const COUNTS: &str = "visit-windows-counts";

impl<T: Data, S: SinkFunction<T>> SinkFunction<T> for CountingSink<T, S> {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        self.subtask = ctx.subtask;
        self.counts = (0, 0);
        self.board.set(self.subtask, self.counts);
        match &mut self.inner {
            Some(f) => f.open(ctx),
            None => Ok(()),
        }
    }
    fn invoke(&mut self, batch: Vec<T>) -> Result<()> {
        self.counts.0 += batch.len() as u64;
        self.counts.1 += batch.iter().map(self.weigh).sum::<u64>();
        self.board.set(self.subtask, self.counts);
        match &mut self.inner {
            Some(f) => f.invoke(batch),
            None => Ok(()),
        }
    }
    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        state.update_list(COUNTS, &[self.counts])?;
        match &mut self.inner {
            Some(f) => f.snapshot_state(checkpoint_id, state),
            None => Ok(()),
        }
    }
    /// The counts of the subtasks restored here (one, or several after rescaling).
    fn restore_state(&mut self, state: &OperatorStateStore) -> Result<()> {
        let restored: Vec<(u64, u64)> = state.get_list(COUNTS)?;
        self.counts = restored.iter().fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
        self.board.set(self.subtask, self.counts);
        match &mut self.inner {
            Some(f) => f.restore_state(state),
            None => Ok(()),
        }
    }
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        match &mut self.inner {
            Some(f) => f.notify_checkpoint_complete(checkpoint_id),
            None => Ok(()),
        }
    }
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        match &mut self.inner {
            Some(f) => f.notify_checkpoint_aborted(checkpoint_id),
            None => Ok(()),
        }
    }
    fn finish(&mut self) -> Result<()> {
        match &mut self.inner {
            Some(f) => f.finish(),
            None => Ok(()),
        }
    }
    fn close(&mut self) -> Result<()> {
        match &mut self.inner {
            Some(f) => f.close(),
            None => Ok(()),
        }
    }
}

/// The reference: visits per (window start, window end, page) of `clicks`,
/// computed directly (every click counted in its tumbling window).
pub fn reference<'a>(
    clicks: impl IntoIterator<Item = &'a Click>,
) -> std::collections::BTreeMap<(i64, i64, String), u64> {
    let size = WINDOW.as_millis() as i64;
    let mut t = std::collections::BTreeMap::new();
    for c in clicks {
        let start = c.ts - c.ts.rem_euclid(size);
        *t.entry((start, start + size, c.page.clone())).or_insert(0) += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_is_formatted_in_utc() {
        assert_eq!(format_event_time(START_MS), "2024-01-01 00:00:00.000");
        assert_eq!(format_event_time(0), "1970-01-01 00:00:00.000");
        assert_eq!(
            format_event_time(951_827_696_789),
            "2000-02-29 12:34:56.789"
        );
        assert_eq!(format_event_time(-1), "1969-12-31 23:59:59.999");
    }

    #[test]
    fn csv_lines_parse_or_say_why() {
        assert_eq!(
            parse_click("7,/page/3,1704067200123").unwrap(),
            Some(Click {
                user: 7,
                page: "/page/3".into(),
                ts: 1_704_067_200_123
            })
        );
        assert_eq!(parse_click("").unwrap(), None);
        assert_eq!(parse_click("user,page,event_time_ms").unwrap(), None);
        assert!(parse_click("7,/page/3").unwrap_err().contains("3 fields"));
        assert!(parse_click("x,/p,1").unwrap_err().contains("user"));
        assert!(parse_click("1,/p,soon")
            .unwrap_err()
            .contains("event_time_ms"));
        let c = ClickSpec::default().click_at(17).0;
        let mut line = String::new();
        format_click(&c, &mut line);
        assert_eq!(parse_click(&line).unwrap(), Some(c));
    }
}
