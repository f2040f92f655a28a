//! Cluster mode across a real network interface: the JobManager and one
//! TaskManager in one network namespace, the other TaskManagers in a second
//! one, the two joined by a veth pair the test makes (`ip netns`, as root),
//! so the control plane and the keyed shuffle between the TaskManagers
//! cross an interface with its own addresses. A TaskManager in the second
//! namespace is killed mid-run and replaced there; the output stays exactly
//! once, and the veth counters show the records went over it.
//!
//! `tests/run.sh` runs this test only where namespaces can be made (and
//! says loudly that it skipped it otherwise); run directly without the
//! rights, it fails with what is needed.

#[path = "common/mod.rs"]
mod common;

#[path = "common/cluster.rs"]
mod cluster;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster::{check_exactly_once, words, Cluster};

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip ({e}): apt-get install -y iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two network namespaces joined by a veth pair; removed on drop.
struct Namespaces {
    a: String,
    b: String,
    addr_a: String,
    addr_b: String,
    veth_a: String,
}

impl Namespaces {
    fn make() -> Result<Namespaces, String> {
        let id = std::process::id() % 10_000;
        let (a, b) = (format!("weir{id}a"), format!("weir{id}b"));
        let (veth_a, veth_b) = (format!("wv{id}a"), format!("wv{id}b"));
        let net = format!("10.213.{}", id % 250);
        let (addr_a, addr_b) = (format!("{net}.1"), format!("{net}.2"));
        let ns = Namespaces {
            a: a.clone(),
            b: b.clone(),
            addr_a: addr_a.clone(),
            addr_b: addr_b.clone(),
            veth_a: veth_a.clone(),
        };
        ip(&["netns", "add", &a])?;
        ip(&["netns", "add", &b])?;
        ip(&[
            "link", "add", &veth_a, "netns", &a, "type", "veth", "peer", "name", &veth_b, "netns",
            &b,
        ])?;
        for (n, v, addr) in [(&a, &veth_a, &addr_a), (&b, &veth_b, &addr_b)] {
            ip(&["-n", n, "addr", "add", &format!("{addr}/24"), "dev", v])?;
            ip(&["-n", n, "link", "set", v, "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(ns)
    }

    /// Bytes sent and received on the veth end in namespace a.
    fn veth_bytes(&self) -> (u64, u64) {
        let read = |what: &str| -> u64 {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.a,
                    "cat",
                    &format!("/sys/class/net/{}/statistics/{what}", self.veth_a),
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        };
        (read("tx_bytes"), read("rx_bytes"))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

fn exec_in(ns: &str, host: &str) -> Vec<String> {
    ["ip", "netns", "exec", ns, "env"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("WEIR_TASKMANAGER_HOST={host}")])
        .collect()
}

#[test]
fn wordcount_across_network_namespaces_survives_a_taskmanager_kill() {
    let ns = Namespaces::make().unwrap_or_else(|e| {
        panic!(
            "cannot make network namespaces ({e}): this test needs root and iproute2 (apt-get install -y iproute2); tests/run.sh skips it where that is not possible"
        )
    });
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus");
    let text: String = {
        let mut names: Vec<_> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut expected: HashMap<String, u64> = HashMap::new();
    for f in 0..4 {
        let t = text.repeat(30);
        for w in words(&t) {
            *expected.entry(w).or_default() += 1;
        }
        std::fs::write(input.join(format!("{f}.txt")), t).unwrap();
    }
    let out = tmp.path().join("out");
    let args: Vec<String> = [
        "--input",
        &input.display().to_string(),
        "--output",
        &out.display().to_string(),
        "--rate",
        "400000",
        "-p",
        "4",
        "-q",
        "-D",
        &format!(
            "execution.checkpointing.dir={}",
            tmp.path().join("chk").display()
        ),
        "-D",
        "execution.checkpointing.interval=200ms",
        "-D",
        &format!("jobmanager.rpc.address={}", ns.addr_a),
        "-D",
        "jobmanager.rpc.port=6123",
        "-D",
        "rest.port=0",
        "-D",
        "restart-strategy.type=fixed-delay",
        "-D",
        "restart-strategy.fixed-delay.delay=50ms",
        "-D",
        "taskmanager.numberOfTaskSlots=2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (a, b) = (ns.a.clone(), ns.b.clone());
    let (addr_a, addr_b) = (ns.addr_a.clone(), ns.addr_b.clone());
    // TaskManager 0 beside the JobManager; every other one across the veth.
    let prefix = move |i: usize| {
        if i == 0 {
            exec_in(&a, &addr_a)
        } else {
            exec_in(&b, &addr_b)
        }
    };
    let jm_prefix: Vec<String> = ["ip", "netns", "exec", &ns.a]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut c = Cluster::start_with(
        common::example("wordcount"),
        args,
        &[],
        2,
        Vec::new(),
        Vec::new(),
        Some(Box::new(prefix)),
        &jm_prefix,
    );
    c.wait_jm("web UI:", 1, Duration::from_secs(60));
    let (tx0, rx0) = ns.veth_bytes();
    std::thread::sleep(Duration::from_millis(1500));
    c.start_tm(); // a spare, across the veth
    c.tms[1].signal("KILL");
    c.start_tm(); // its replacement
    let status = c.wait_jm_exit(Duration::from_secs(180));
    assert!(status.success(), "the job failed ({status}):\n{}", c.logs());
    let total = check_exactly_once(&out, &expected).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(total, expected.values().sum::<u64>());
    assert_eq!(
        c.jm_count_all(&["cluster::jobmanager", ") lost:"]),
        1,
        "{}",
        c.logs()
    );
    let (tx1, rx1) = ns.veth_bytes();
    // Half of the keyed shuffle crosses the veth each way (words of a few
    // bytes each, framed): far more than the control plane alone.
    assert!(
        tx1 - tx0 > 1_000_000 && rx1 - rx0 > 1_000_000,
        "too little traffic over the veth: sent {} received {} bytes",
        tx1 - tx0,
        rx1 - rx0
    );
    c.wait_tms_exit(Duration::from_secs(30));
}
