//! Stop-with-savepoint with and without drain: both end the job FINISHED;
//! without drain no operator is finished (the word count's sink never
//! produces its end-of-input top words), with drain every operator is
//! finished as at the end of the input (the top words are there).

use weir::operators::text::generated_lines;
use weir::prelude::*;
use weir::wordcount::wordcount;

fn stop(drain: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Conf::defaults();
    c.set(
        "execution.checkpointing.dir",
        dir.path().join("ckpt").display(),
    )
    .unwrap();
    c.set("execution.checkpointing.interval", "100ms").unwrap();
    c.set("parallelism.default", 2).unwrap();
    let env = Env::from_conf(c).unwrap();
    let lines = env
        .add_source(generated_lines(1_000_000, 1_000, 3).with_rate(5_000.0))
        .name("Lines");
    let top = wordcount(&lines, None).unwrap();
    let job = env.execute_async("stop").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let sp = job
        .stop_with_savepoint(Some(&dir.path().join("sp")), drain)
        .unwrap();
    assert!(sp.join("_metadata").is_file());
    job.wait().expect("a stopped job ends FINISHED");
    top.top(10).len()
}

#[test]
fn stop_without_drain_finishes_no_operator() {
    assert_eq!(stop(false), 0, "no sink was finished");
}

#[test]
fn stop_with_drain_finishes_every_operator() {
    assert_eq!(stop(true), 10, "the sinks were finished: top words");
}
