//! The page-visit job of [`crate::visit_windows`] between Kafka topics
//! (feature `kafka`), shared by the `kafka_visits` example and its tests.
//!
//! Visits are record values `user,page,event_time_ms` (UTF-8) of the input
//! topic, read by a [`KafkaSource`] with [`Env::from_source`]: every
//! partition has its own watermark generator (bounded out-of-orderness
//! [`OUT_OF_ORDERNESS`]), the source's watermark is the smallest over its
//! partitions, and a partition without records for the idle timeout stops
//! holding it back. A record that is not a visit is rejected by the
//! deserializer ([`parse_visit`]) with the reason, and
//! `kafka.scan.deserialization-errors` decides: fail the job (the default),
//! skip it, or copy it to the dead-letter topic; skipped and dead-lettered
//! records are counted in the source's `numRecordsInErrors` ([`rejected`]).
//!
//! The visits of each page are counted in tumbling event-time windows
//! ([`visits_per_window`]); every window result is one record of the output
//! topic, key = the page, value `window_start<TAB>window_end<TAB>page<TAB>visits`
//! (ms since the epoch; [`format_visits`]), written by a [`KafkaSink`]:
//! exactly once by default (a Kafka transaction per completed checkpoint).
//! Visits too late for their window (behind the watermark) are counted, not
//! written.

use std::time::Duration;

use weir_operators::kafka::{KafkaRecord, KafkaSink, KafkaSource, ProducerRecord};
use weir_runtime::Result;

use crate::prelude::*;
use crate::visit_windows::{
    click_watermarks, format_visits, parse_click, visits_per_window, Click, VisitRow, VisitWindows,
};
pub use crate::visit_windows::{OUT_OF_ORDERNESS, VISITS, VISITS_SINK, WINDOW};

/// Name of the Kafka source of the visits.
pub const SOURCE: &str = "Visits source";
/// Default idle timeout of a partition: one without records for this long
/// no longer holds the watermark back.
pub const IDLENESS: Duration = Duration::from_secs(5);

/// Where the job reads and writes, and its windows.
#[derive(Debug, Clone)]
pub struct KafkaVisits {
    /// The topic of the visits.
    pub input_topic: String,
    /// The topic of the window results.
    pub output_topic: String,
    /// The tumbling window size.
    pub window: Duration,
    /// A partition without records for this long is idle.
    pub idleness: Duration,
}

/// The deserializer of the visits: the record's value as a CSV line
/// `user,page,event_time_ms`. Anything else (no value, not UTF-8, a blank or
/// `#` line, the header, a malformed line) is rejected with the reason.
pub fn parse_visit(r: &KafkaRecord<'_>) -> std::result::Result<Click, String> {
    let Some(value) = r.value else {
        return Err("the record has no value (a tombstone), not a visit".into());
    };
    let line = std::str::from_utf8(value).map_err(|e| format!("the value is not UTF-8: {e}"))?;
    match parse_click(line)? {
        Some(c) => Ok(c),
        None => Err(format!(
            "{line:?} is not a visit user,page,event_time_ms (blank, comment or header)"
        )),
    }
}

/// A window result as an output record: key = the page, value
/// `window_start<TAB>window_end<TAB>page<TAB>visits`.
pub fn visits_record(r: &VisitRow) -> ProducerRecord {
    let mut line = String::new();
    format_visits(r, &mut line);
    ProducerRecord::keyed(r.page.as_bytes(), line)
}

/// Adds the job to `env`: the Kafka source (configured by the `kafka.*`
/// options of `env`'s configuration), the windows, the Kafka sink. Returns a
/// handle on the job's progress (windows written, visits in them, late
/// visits).
pub fn kafka_visits(env: &Env, job: &KafkaVisits) -> Result<VisitWindows> {
    if job.window.is_zero() {
        return Err(Error::user("the window size must be above 0"));
    }
    let source = KafkaSource::builder(parse_visit)
        .conf(env.conf())?
        .topics([job.input_topic.as_str()])
        .build()?;
    let sink = KafkaSink::builder(job.output_topic.as_str(), visits_record)
        .conf(env.conf())
        .build()?;
    let visits = env.from_source(
        source,
        click_watermarks().with_idleness(job.idleness),
        SOURCE,
    );
    Ok(visits_per_window(
        &visits,
        job.window,
        Some(sink),
        None::<DiscardSink>,
    ))
}

/// Records the visits source rejected (its `numRecordsInErrors`: skipped or
/// dead-lettered) in `ops`, the job's operator metrics.
pub fn rejected(ops: &[OperatorMetrics]) -> u64 {
    ops.iter()
        .filter(|o| o.name == SOURCE)
        .map(|o| o.records_in_errors)
        .sum()
}

/// Visits read by the source in `ops` (records out of the source).
pub fn visits_read(ops: &[OperatorMetrics]) -> u64 {
    ops.iter()
        .filter(|o| o.name == SOURCE)
        .map(|o| o.records_out)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: Option<&[u8]>) -> KafkaRecord<'_> {
        KafkaRecord {
            topic: "visits",
            partition: 0,
            offset: 7,
            timestamp: None,
            key: None,
            value,
        }
    }

    #[test]
    fn visits_parse_or_are_rejected_with_a_reason() {
        assert_eq!(
            parse_visit(&rec(Some(b"7,/page/3,1704067200123"))).unwrap(),
            Click {
                user: 7,
                page: "/page/3".into(),
                ts: 1_704_067_200_123
            }
        );
        assert!(parse_visit(&rec(None)).unwrap_err().contains("no value"));
        assert!(parse_visit(&rec(Some(b"\xff")))
            .unwrap_err()
            .contains("UTF-8"));
        assert!(parse_visit(&rec(Some(b"")))
            .unwrap_err()
            .contains("not a visit"));
        assert!(parse_visit(&rec(Some(b"7,/p")))
            .unwrap_err()
            .contains("3 fields"));
    }

    #[test]
    fn a_window_result_is_keyed_by_its_page() {
        let r = visits_record(&VisitRow {
            start: 0,
            end: 10_000,
            page: "/a".into(),
            visits: 3,
        });
        assert_eq!(r.key.as_deref(), Some(&b"/a"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"0\t10000\t/a\t3"[..]));
    }
}
