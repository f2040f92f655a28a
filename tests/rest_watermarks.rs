//! Watermarks you can see: Flink's `/jobs/:id/vertices/:vid/watermarks`
//! and the `currentInputWatermark` metric (REST, Prometheus, job metrics)
//! follow the event time of a running windowed job.

mod common;

use std::time::Duration;

use common::{get_json, http, wait_for};
use weir::prelude::*;

#[test]
fn vertex_watermarks_and_the_metric_follow_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let env = common::rest_env(
        &dir.path().join("ckpt"),
        &[
            ("parallelism.default", "2"),
            ("pipeline.auto-watermark-interval", "20ms"),
        ],
    );
    // Event time = 10 x the record index, about 20 000 records per second.
    env.add_source(GeneratorSource::new(1, Some(200_000), |i, _| i).with_rate(20_000.0))
        .name("numbers")
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(100))
                .with_timestamp_assigner(|i: &u64| *i as i64 * 10),
        )
        .key_by(|i: &u64| i % 5)
        .window(TumblingEventTimeWindows::of(Duration::from_secs(1)))
        .reduce(|a: u64, b: u64| a.max(b))
        .name("windows")
        .add_sink(DiscardSink);
    let job = env.execute_async("watermarks").unwrap();
    let base = format!("http://{}", job.rest_address().unwrap());
    let id = job.job_id().to_string();
    let plan = get_json(&format!("{base}/jobs/{id}"));
    let vertex = plan["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("windows"))
        .expect("the window vertex")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("{base}/jobs/{id}/vertices/{vertex}/watermarks");
    let value = |v: &serde_json::Value| -> i64 { v["value"].as_str().unwrap().parse().unwrap() };
    let first = wait_for("a watermark past 10 s of event time", 30, || {
        let w = get_json(&url);
        let list = w.as_array().unwrap().clone();
        assert_eq!(list.len(), 2, "one entry per subtask: {w}");
        assert_eq!(list[0]["id"], "0.currentInputWatermark");
        let min = list.iter().map(value).min().unwrap();
        (min > 10_000).then_some(min)
    });
    let later = wait_for("the watermark to advance", 30, || {
        let min = get_json(&url)
            .as_array()
            .unwrap()
            .iter()
            .map(value)
            .min()
            .unwrap();
        (min > first + 5_000).then_some(min)
    });
    // The same in Prometheus and in the job's metrics.
    let (status, text) = http("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200);
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("weir_operator_currentInputWatermark{")
                && l.contains("operator_name=\"windows\"")
        })
        .expect("the metric for the window operator");
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(v >= later as f64, "{line} (REST said {later})");
    let m = job.metrics();
    let w = m
        .iter()
        .find(|o| o.name == "windows")
        .unwrap()
        .current_input_watermark;
    assert!(w >= later, "job metrics say {w}, REST said {later}");
    // Unknown vertex: Flink's 404.
    let (status, _) = http(
        "GET",
        &format!("{base}/jobs/{id}/vertices/nope/watermarks"),
        None,
    );
    assert_eq!(status, 404);
    job.cancel();
}
