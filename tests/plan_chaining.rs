//! Operator chaining and partitioning in the physical plan.

use weir::prelude::*;
use weir::runtime::graph::ShipStrategy;

fn src() -> CollectionSource<u64> {
    CollectionSource::new((0..100).collect())
}

#[test]
fn forward_operators_of_equal_parallelism_are_chained() {
    let env = Env::local().unwrap();
    env.add_source(src())
        .name("src")
        .map(|x| x + 1)
        .name("plus")
        .filter(|x| x % 2 == 0)
        .name("even")
        .add_sink(DiscardSink)
        .name("sink");
    let plan = env.plan().unwrap();
    assert_eq!(plan.chains.len(), 1, "{plan}");
    assert_eq!(plan.chains[0].operators, ["src", "plus", "even", "sink"]);
    assert!(plan.channels.is_empty());
}

#[test]
fn key_by_and_parallelism_changes_break_chains() {
    let mut env = Env::local().unwrap();
    env.set_parallelism(2).unwrap();
    env.add_source(src())
        .name("src")
        .map(|x| x * 2)
        .name("double")
        .key_by(|x: &u64| x % 10)
        .count()
        .name("count")
        .map(|(k, c)| k + c)
        .name("sum")
        .set_parallelism(3)
        .add_sink(DiscardSink)
        .name("sink")
        .set_parallelism(3);
    let plan = env.plan().unwrap();
    let names: Vec<Vec<String>> = plan.chains.iter().map(|c| c.operators.clone()).collect();
    assert_eq!(
        names,
        vec![vec!["src", "double"], vec!["count"], vec!["sum", "sink"]],
        "{plan}"
    );
    assert_eq!(
        plan.chains
            .iter()
            .map(|c| c.parallelism)
            .collect::<Vec<_>>(),
        [2, 2, 3]
    );
    let ships: Vec<ShipStrategy> = plan.channels.iter().map(|c| c.ship).collect();
    assert_eq!(
        ships,
        [ShipStrategy::Hash, ShipStrategy::Rebalance],
        "different parallelism defaults to rebalance"
    );
    assert_eq!(plan.num_subtasks(), 7);
}

#[test]
fn explicit_partitioners_fan_out_and_disable_chaining() {
    let env = Env::local().unwrap();
    let s = env.add_source(src()).name("src");
    s.map(|x| x).name("a").add_sink(DiscardSink).name("sink-a");
    s.rebalance()
        .map(|x| x)
        .name("b")
        .add_sink(DiscardSink)
        .name("sink-b");
    env.add_source(src())
        .name("src2")
        .map(|x| x)
        .name("c")
        .disable_chaining()
        .add_sink(DiscardSink)
        .name("sink-c");
    let plan = env.plan().unwrap();
    // src has two consumers: it ends its chain; a and b start their own.
    assert_eq!(plan.chain_of("src").unwrap().operators, ["src"]);
    assert_eq!(plan.chain_of("a").unwrap().operators, ["a", "sink-a"]);
    assert_eq!(plan.chain_of("b").unwrap().operators, ["b", "sink-b"]);
    assert_eq!(plan.chain_of("src2").unwrap().operators, ["src2"]);
    assert_eq!(plan.chain_of("c").unwrap().operators, ["c"]);
    assert_eq!(plan.chain_of("sink-c").unwrap().operators, ["sink-c"]);
}

#[test]
fn forward_between_different_parallelism_is_rejected() {
    let env = Env::local().unwrap();
    env.add_source(src())
        .name("src")
        .forward()
        .map(|x| x)
        .name("m")
        .set_parallelism(2)
        .add_sink(DiscardSink);
    let err = env.plan().unwrap_err().to_string();
    assert!(
        err.contains("forward()") && err.contains("'src'") && err.contains("'m'"),
        "{err}"
    );
}

#[test]
fn a_job_without_sink_is_rejected() {
    let env = Env::local().unwrap();
    env.add_source(src()).map(|x| x);
    assert!(env.plan().unwrap_err().to_string().contains("no sink"));
    assert!(env.execute("nothing").is_err());
}

#[test]
fn keyed_parallelism_above_max_parallelism_is_rejected() {
    let mut conf = Conf::defaults();
    conf.set("pipeline.max-parallelism", 4).unwrap();
    let env = Env::from_conf(conf).unwrap();
    env.add_source(src())
        .key_by(|x: &u64| *x)
        .count()
        .set_parallelism(8)
        .add_sink(DiscardSink);
    assert!(env
        .plan()
        .unwrap_err()
        .to_string()
        .contains("above pipeline.max-parallelism"));
}
