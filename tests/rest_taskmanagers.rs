//! The REST API and metrics of a cluster, on real processes: a JobManager
//! and two TaskManagers running the wordcount example (`--jobmanager`,
//! `--taskmanager`). `/taskmanagers` lists the TaskManagers with their pids
//! and slots, the job's subtasks say on which TaskManager they run,
//! `/metrics` counts them; after a SIGKILL of one TaskManager and the start
//! of another, the list shows the new one instead of the dead one and the
//! job's exceptions name the lost TaskManager.
//!
//! Needs the release examples: `cargo build --release --all-features --examples`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{get_json, http};
use serde_json::Value;

/// The processes of the cluster, killed (SIGKILL) when dropped, so a failing
/// test leaves none behind.
#[derive(Default)]
struct Cluster {
    children: Vec<(String, Child)>,
    /// Every stderr line of every process, `[name] line`.
    log: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    /// Starts wordcount with the cluster's common arguments and `role_args`;
    /// its stderr lines go to the log and, `[name]`-less, to the returned
    /// channel.
    fn start(&mut self, name: &str, common: &[String], role_args: &[&str]) -> Receiver<String> {
        let mut cmd = common::example_command("wordcount");
        cmd.args(common)
            .args(role_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start wordcount");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        let log = self.log.clone();
        let who = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(format!("[{who}] {line}"));
                let _ = tx.send(line);
            }
        });
        self.children.push((name.to_string(), child));
        rx
    }

    fn pid(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
            .id()
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
    }

    /// SIGKILL.
    fn kill(&mut self, name: &str) {
        let c = self.child(name);
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// The last lines of the processes' stderr, for failure messages.
    fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(80)..].join("\n")
    }

    /// Polls `f` every 100 ms for at most `secs` seconds; fails with the
    /// processes' stderr.
    fn wait_for<T>(&self, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs} s waiting for {what}; stderr:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The wordcount arguments every process of the cluster gets.
fn common_args(out: &Path, ckpt: &Path, rpc_port: u16) -> Vec<String> {
    [
        "--words",
        "0",
        "--rate",
        "200000",
        "-p",
        "2",
        "-q",
        "--output",
        out.to_str().unwrap(),
        "-D",
        "execution.checkpointing.interval=500ms",
        "-D",
        &format!("execution.checkpointing.dir={}", ckpt.display()),
        "-D",
        &format!("jobmanager.rpc.port={rpc_port}"),
        "-D",
        "rest.port=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `/taskmanagers`' list once `n` TaskManagers are registered and each runs
/// subtasks (the job is deployed on them).
fn deployed_on(base: &str, n: usize) -> Option<Vec<Value>> {
    let tms = get_json(&format!("{base}/taskmanagers"));
    let list = tms["taskmanagers"].as_array()?.clone();
    (list.len() == n
        && list
            .iter()
            .all(|t| t["subtasks"].as_array().is_some_and(|s| !s.is_empty())))
    .then_some(list)
}

fn pids(list: &[Value]) -> BTreeSet<u64> {
    list.iter().map(|t| t["pid"].as_u64().unwrap()).collect()
}

/// The value of an unlabelled sample of the Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn taskmanagers_subtask_hosts_metrics_and_a_lost_taskmanager() {
    let dir = tempfile::tempdir().unwrap();
    let (out, ckpt) = (dir.path().join("out"), dir.path().join("ckpt"));
    let args = common_args(&out, &ckpt, free_port());
    let tm = ["--taskmanager", "-D", "taskmanager.numberOfTaskSlots=1"];
    let mut cluster = Cluster::default();
    let jm_lines = cluster.start("jm", &args, &["--jobmanager"]);
    cluster.start("tm1", &args, &tm);
    cluster.start("tm2", &args, &tm);

    // The JobManager's `web UI: http://ADDR/#/jobs/ID`.
    let deadline = Instant::now() + Duration::from_secs(120);
    let page = loop {
        match jm_lines.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                if let Some(p) = l.trim().strip_prefix("web UI: ") {
                    break p.to_string();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("the JobManager exited ({e}); stderr:\n{}", cluster.tail()),
        }
        assert!(
            Instant::now() < deadline,
            "no web UI line from the JobManager; stderr:\n{}",
            cluster.tail()
        );
    };
    let (base, id) = page.split_once("/#/jobs/").expect("web UI: URL/#/jobs/ID");
    let (base, id) = (base.to_string(), id.to_string());

    // Both TaskManagers, with their pids, one slot each, both in use.
    let list = cluster.wait_for("two TaskManagers running subtasks", 60, || {
        deployed_on(&base, 2)
    });
    let expected: BTreeSet<u64> = [cluster.pid("tm1"), cluster.pid("tm2")]
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(pids(&list), expected, "{list:?}");
    let mut addresses = BTreeSet::new();
    for t in &list {
        assert_eq!(t["slotsNumber"], 1, "{t}");
        assert_eq!(t["freeSlots"], 0, "{t}");
        assert_eq!(t["slotsUsed"], 1, "{t}");
        let address = t["dataAddress"].as_str().unwrap().to_string();
        assert_eq!(t["path"], address.as_str(), "{t}");
        let port = address.rsplit_once(':').unwrap().1.parse::<u64>().unwrap();
        assert_eq!(t["dataPort"], port, "{t}");
        assert!(t["lastHeartbeatAge"].as_u64().unwrap() < 10_000, "{t}");
        assert!(t["timeSinceLastHeartbeat"].as_u64().unwrap() > 1_600_000_000_000);
        // Parallelism 2 on two one-slot TaskManagers: one slice each, one
        // subtask of every vertex.
        let subtasks = t["subtasks"].as_array().unwrap();
        assert!(subtasks.iter().all(|s| s["jid"] == id.as_str()), "{t}");
        addresses.insert(address);
    }
    assert_eq!(addresses.len(), 2);
    let ids: BTreeSet<String> = list
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();

    // One TaskManager by id; an unknown one is a 404.
    let first = list[0]["id"].as_str().unwrap();
    let one = get_json(&format!("{base}/taskmanagers/{first}"));
    assert_eq!(one["id"], first);
    assert_eq!(one["pid"], list[0]["pid"]);
    let (status, body) = http("GET", &format!("{base}/taskmanagers/nope"), None);
    assert_eq!(status, 404, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["errors"][0].as_str().unwrap().contains("nope"),
        "{body}"
    );

    // Every subtask runs on one of them, and both run some.
    let job = get_json(&format!("{base}/jobs/{id}"));
    let mut hosts = BTreeSet::new();
    for v in job["vertices"].as_array().unwrap() {
        for s in v["subtasks"].as_array().unwrap() {
            let host = s["host"].as_str().unwrap_or_else(|| panic!("{s}"));
            assert!(addresses.contains(host), "{s} not on {addresses:?}");
            assert!(ids.contains(s["taskmanager-id"].as_str().unwrap()), "{s}");
            hosts.insert(host.to_string());
        }
        // Flink's vertex details, with `endpoint` and `taskmanager-id`.
        let vid = v["id"].as_str().unwrap();
        let d = get_json(&format!("{base}/jobs/{id}/vertices/{vid}"));
        assert_eq!(d["id"], vid);
        let subs = d["subtasks"].as_array().unwrap();
        assert_eq!(subs.len() as u64, v["parallelism"].as_u64().unwrap());
        let on: BTreeSet<&str> = subs
            .iter()
            .map(|s| s["endpoint"].as_str().unwrap())
            .collect();
        assert_eq!(on.len(), 2, "parallelism 2 over two TaskManagers: {d}");
        for s in subs {
            assert_eq!(s["host"], s["endpoint"]);
            assert!(ids.contains(s["taskmanager-id"].as_str().unwrap()), "{s}");
        }
    }
    assert_eq!(hosts, addresses);

    // Flink's JobManager metrics, and the overview.
    let (status, text) = http("GET", &format!("{base}/metrics"), None);
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "weir_jobmanager_numRegisteredTaskManagers"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "weir_jobmanager_taskSlotsTotal"), Some(2.0));
    assert_eq!(
        sample(&text, "weir_jobmanager_taskSlotsAvailable"),
        Some(0.0)
    );
    assert!(text.contains("# TYPE weir_jobmanager_numRegisteredTaskManagers gauge"));
    let o = get_json(&format!("{base}/overview"));
    assert_eq!(o["taskmanagers"], 2, "{o}");
    assert_eq!(o["slots-total"], 2, "{o}");
    assert_eq!(o["slots-available"], 0, "{o}");

    // A TaskManager dies; another one takes its place.
    let dead_pid = u64::from(cluster.pid("tm1"));
    let dead = list.iter().find(|t| t["pid"] == dead_pid).unwrap().clone();
    let dead_id = dead["id"].as_str().unwrap().to_string();
    cluster.kill("tm1");
    cluster.start("tm3", &args, &tm);
    let new_pid = u64::from(cluster.pid("tm3"));
    let list = cluster.wait_for("the new TaskManager instead of the dead one", 20, || {
        let l = deployed_on(&base, 2)?;
        (pids(&l) == BTreeSet::from([u64::from(cluster.pid("tm2")), new_pid])).then_some(l)
    });
    assert!(list.iter().all(|t| t["id"] != dead_id.as_str()), "{list:?}");
    assert!(list.iter().all(|t| t["freeSlots"] == 0), "{list:?}");

    // The loss in the job's exceptions, with where it was: the failure it
    // caused (the JobManager's record of the loss, or a network channel's
    // failure to it on the other TaskManager, whichever came first) names
    // it, and the loss record is the failure or one of its concurrent
    // exceptions.
    let ex = cluster.wait_for("the loss in the exceptions", 20, || {
        let ex = get_json(&format!("{base}/jobs/{id}/exceptions"));
        let entries = ex["exceptionHistory"]["entries"].as_array()?.clone();
        entries
            .into_iter()
            .find(|e| e["taskManagerId"] == dead_id.as_str())
    });
    assert_eq!(ex["endpoint"], dead["dataAddress"], "{ex}");
    assert_eq!(ex["location"], dead["dataAddress"], "{ex}");
    let named = |e: &Value| {
        e["stacktrace"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("TaskManager {dead_id} (pid {dead_pid}) lost")))
    };
    assert!(
        named(&ex)
            || ex["concurrentExceptions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| named(c) && c["taskManagerId"] == dead_id.as_str()),
        "{ex}"
    );
    // ... in `/taskmanagers`' lost ones, and as a 404 that says so.
    let tms = get_json(&format!("{base}/taskmanagers"));
    let lost = tms["lost"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == dead_id.as_str())
        .unwrap_or_else(|| panic!("{dead_id} not among the lost: {tms}"));
    assert_eq!(lost["pid"], dead_pid);
    assert_eq!(lost["jid"], id.as_str());
    assert!(
        lost["cause"].as_str().is_some_and(|c| !c.is_empty()),
        "{lost}"
    );
    assert_eq!(lost["failure"], ex["stacktrace"], "{lost}");
    let (status, body) = http("GET", &format!("{base}/taskmanagers/{dead_id}"), None);
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("lost"), "{body}");
    let (_, text) = http("GET", &format!("{base}/metrics"), None);
    assert_eq!(
        sample(&text, "weir_jobmanager_numRegisteredTaskManagers"),
        Some(2.0),
        "{text}"
    );

    // Cancel; the JobManager ends the job and exits.
    let (status, body) = http("PATCH", &format!("{base}/jobs/{id}?mode=cancel"), None);
    assert_eq!(status, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.child("jm").try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the JobManager did not exit within 60 s of the cancel; stderr:\n{}",
            cluster.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let jm = cluster.log.lock().unwrap().join("\n");
    assert!(jm.contains("[jm]"), "{jm}");
}
