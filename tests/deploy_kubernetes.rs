//! The deployment files, checked and run for real:
//! - `deploy/kubernetes/*.yaml` validate offline against the Kubernetes
//!   schemas (`kubernetes-validate --strict`, PyPI, installed by
//!   `tests/run.sh`), the kustomization lists them, the image paths match the
//!   `Dockerfile`, every `WEIR_*` variable is an option, and the ConfigMap's
//!   `weir.yaml` loads;
//! - the Deployments' containers, read out of the YAML (command, args, env
//!   with `$(VAR)` expanded, Secret and `status.podIP` references resolved,
//!   the ConfigMap written to a temporary `WEIR_CONF_DIR`), run as local
//!   processes of the wordcount example: one JobManager, the TaskManager
//!   Deployment's replicas. Each pod gets an address of its own on the
//!   loopback network (the JobManager 127.0.0.1, the TaskManagers
//!   127.0.0.2, 127.0.0.3, ...), Service names map to the JobManager's,
//!   and the ConfigMap's S3 endpoint to a moto server (`common/s3.rs`). The
//!   probes are exercised as the kubelet would (HTTP GET, TCP connect),
//!   checkpoints complete, then the JobManager is SIGKILLed and started again
//!   with the same command line: the TaskManagers register again and the
//!   same job (same id) goes on checkpointing from where it was. SIGTERM
//!   stops every process within its pod's `terminationGracePeriodSeconds`;
//! - the systemd unit's `ExecStart` (specifiers expanded, the state directory
//!   a temporary one) runs under `bin/weir-supervise.sh` with the unit's
//!   `RestartSec`; its process is SIGKILLed, restarted by the supervisor, and
//!   resumes the same job from its latest checkpoint; `KillSignal` stops it
//!   within `TimeoutStopSec`;
//! - `bin/weir-supervise.sh` alone: restarts on non-zero exits, stops on 0,
//!   forwards SIGTERM and does not restart after it.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The tests that run jobs go one at a time (two cores; fixed ports).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

const INSTALL: &str = "python3 -m pip install 'kubernetes-validate==1.37.0'";

/// The Python that has kubernetes-validate (and PyYAML, which it needs).
fn python() -> Command {
    Command::new("python3")
}

/// Fails (with the install command) unless kubernetes-validate and PyYAML are there.
fn require_kubernetes_validate() {
    let ok = python()
        .args(["-c", "import kubernetes_validate, yaml"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "these tests need kubernetes-validate (and the PyYAML it brings) for python3: \
         run `{INSTALL}` (tests/run.sh installs it)"
    );
}

/// Every YAML document of `text`, as JSON (PyYAML's safe loader).
fn yaml_docs_of(text: &str) -> Vec<Value> {
    require_kubernetes_validate();
    let mut child = python()
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "YAML does not parse: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    yaml_docs_of(&std::fs::read_to_string(path).unwrap())
}

/// The manifests of `deploy/kubernetes/` (not the kustomization), sorted.
fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests: {files:?}");
    files
}

/// The resources `kubectl apply -k deploy/kubernetes` makes.
struct K8s {
    docs: Vec<Value>,
}

impl K8s {
    fn load() -> K8s {
        let kust = yaml_docs(&k8s_dir().join("kustomization.yaml"));
        let files = kust[0]["resources"]
            .as_array()
            .expect("kustomization resources")
            .iter()
            .map(|r| k8s_dir().join(r.as_str().unwrap()))
            .collect::<Vec<_>>();
        K8s {
            docs: files.iter().flat_map(|f| yaml_docs(f)).collect(),
        }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn secret(&self, name: &str, key: &str) -> String {
        let s = self.get("Secret", name);
        if let Some(v) = s["stringData"][key].as_str() {
            return v.to_string();
        }
        panic!("Secret {name} has no stringData key {key}")
    }

    fn service_names(&self) -> Vec<String> {
        self.all("Service")
            .iter()
            .map(|s| s["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }
}

/// `$(VAR)` references of Kubernetes (`$$` escapes a `$`), from `vars`;
/// an unknown reference stays as written, as Kubernetes leaves it.
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("$(") {
            match t.find(')') {
                Some(end) => {
                    let name = &t[..end];
                    match vars.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&tail[..end + 3]),
                    }
                    rest = &t[end + 1..];
                }
                None => {
                    out.push_str(tail);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A pod's container as a local command line.
#[derive(Clone, Debug)]
struct PodCmd {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The container of Deployment `dep` as a local process of pod IP
/// `pod_ip`: the image's binary is the built example of the same name,
/// ConfigMap volumes are `conf_dir`.
fn pod_command(k: &K8s, dep: &Value, pod_ip: &str, conf_dir: &Path) -> PodCmd {
    let spec = &dep["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    // Mount paths of ConfigMap volumes.
    let cm_volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["configMap"].is_object())
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let cm_mounts: Vec<String> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| cm_volumes.contains(&m["name"].as_str().unwrap()))
        .map(|m| m["mountPath"].as_str().unwrap().to_string())
        .collect();
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            let v = expand(v, &env);
            if cm_mounts.contains(&v) {
                conf_dir.display().to_string()
            } else {
                v
            }
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            assert_eq!(f, "status.podIP", "env {name}: unsupported fieldRef");
            pod_ip.to_string()
        } else if e["valueFrom"]["secretKeyRef"].is_object() {
            let r = &e["valueFrom"]["secretKeyRef"];
            k.secret(r["name"].as_str().unwrap(), r["key"].as_str().unwrap())
        } else {
            panic!("env {name}: unsupported source {e}")
        };
        env.push((name, value));
    }
    let command: Vec<String> = c["command"]
        .as_array()
        .expect("the container names its command (the image has no entrypoint)")
        .iter()
        .chain(c["args"].as_array().unwrap_or(&Vec::new()))
        .map(|a| expand(a.as_str().unwrap(), &env))
        .collect();
    let image_path = Path::new(&command[0]);
    assert!(
        image_path.starts_with("/opt/weir/bin"),
        "{}: the Dockerfile puts the binaries in /opt/weir/bin",
        command[0]
    );
    let program = common::example(image_path.file_name().unwrap().to_str().unwrap());
    PodCmd {
        program,
        args: command[1..].to_vec(),
        env,
    }
}

/// A container port by name or number.
fn container_port(dep: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().unwrap();
    dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

/// Bytes of a Kubernetes quantity such as `576Mi`.
fn quantity_bytes(q: &str) -> u64 {
    for (suffix, m) in [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * m;
        }
    }
    q.parse().unwrap()
}

/// Peak resident memory of a process (VmHWM), bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// A GET on `addr`: status and body. Errors when nothing answers.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {text}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {text}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n.min(tail.len())]);
            rest = tail.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A process with its stderr collected; killed when dropped.
struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        cwd: &Path,
    ) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("WEIR_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({}): {e}", program.display()));
        let stderr = child.stderr.take().unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    fn pod(name: &str, cmd: &PodCmd, cwd: &Path) -> Proc {
        Proc::spawn(name, &cmd.program, &cmd.args, &cmd.env, cwd)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn tail(&self) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- {} (last lines) ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} ({})", self.pid(), self.name);
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the exit; `None` after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn logs(procs: &[&Proc]) -> String {
    procs
        .iter()
        .map(|p| p.tail())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `f` every 100 ms until it gives `Some`; panics with `what` and the
/// processes' logs after `timeout`, or when one of `watch` exited.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    watch: &mut [&mut Proc],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        let exited = watch
            .iter_mut()
            .find_map(|p| p.try_wait().map(|s| (p.name.clone(), s)));
        if let Some((name, s)) = exited {
            let all: Vec<&Proc> = watch.iter().map(|p| &**p).collect();
            panic!(
                "{name} exited ({s}) while waiting for {what}\n{}",
                logs(&all)
            );
        }
        if Instant::now() >= deadline {
            let all: Vec<&Proc> = watch.iter().map(|p| &**p).collect();
            panic!("no {what} within {timeout:?}\n{}", logs(&all));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `addr` can be bound now.
fn bindable(addr: SocketAddr) -> bool {
    TcpListener::bind(addr).is_ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates `bucket` on the S3 server at `endpoint` (moto answers 200).
fn create_bucket(endpoint: &str, bucket: &str) {
    let addr: SocketAddr = endpoint.trim_start_matches("http://").parse().unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    assert!(
        buf.starts_with("HTTP/1.1 200"),
        "creating bucket {bucket}: {buf}"
    );
}

/// The ConfigMap's `weir.yaml` as option -> value (YAML scalars as text).
fn configmap_options(k: &K8s) -> BTreeMap<String, String> {
    let text = k.get("ConfigMap", "weir-config")["data"]["weir.yaml"]
        .as_str()
        .expect("ConfigMap weir-config has weir.yaml")
        .to_string();
    let docs = yaml_docs_of(&text);
    docs[0]
        .as_object()
        .expect("weir.yaml is a map of options")
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Writes `options` as `dir/weir.yaml` (every value a JSON string: valid YAML).
fn write_conf(dir: &Path, options: &BTreeMap<String, String>) {
    let text: String = options
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", Value::String(v.clone())))
        .collect();
    std::fs::write(dir.join("weir.yaml"), text).unwrap();
}

#[test]
fn deploy_manifests_validate_offline() {
    require_kubernetes_validate();
    let files = manifest_files();
    // Every document, as the schema of two Kubernetes versions wants it.
    let docs: Vec<(PathBuf, String, String)> = files
        .iter()
        .flat_map(|f| {
            yaml_docs(f).into_iter().map(move |d| {
                (
                    f.clone(),
                    d["kind"].as_str().unwrap().to_ascii_lowercase(),
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    for version in ["1.28.0", "1.33.0"] {
        let out = python()
            .args(["-m", "kubernetes_validate", "--strict", "-k", version])
            .args(&files)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{stdout}\n{stderr}"
        );
        let short = version.rsplit_once('.').unwrap().0;
        for (file, kind, name) in &docs {
            let want = format!(
                "{} passed for resource {kind}/{name} against version {short}",
                file.display()
            );
            assert!(
                stdout.lines().any(|l| l.ends_with(&want)),
                "no '{want}' in:\n{stdout}"
            );
        }
        assert_eq!(
            stdout.lines().filter(|l| l.contains(" passed ")).count(),
            docs.len(),
            "{stdout}"
        );
    }
    // The kustomization applies every manifest but the dev MinIO.
    let kust = yaml_docs(&k8s_dir().join("kustomization.yaml"));
    let listed: BTreeSet<String> = kust[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
        .filter(|f| f != "minio-dev.yaml")
        .collect();
    assert_eq!(listed, present);

    let k = K8s::load();
    let jm = k.get("Deployment", "weir-jobmanager");
    let tm = k.get("Deployment", "weir-taskmanager");
    assert_eq!(jm["spec"]["replicas"], 1);
    assert_eq!(jm["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(tm["spec"]["replicas"], 2);
    let svc = k.get("Service", "weir-jobmanager");
    let svc_ports: BTreeMap<String, u64> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        svc_ports,
        BTreeMap::from([("rest".to_string(), 8081), ("rpc".to_string(), 6123)])
    );
    // The JobManager's readiness probe asks for the job id the cluster id
    // and the job name derive (high availability).
    let cluster_id = configmap_options(&k)["high-availability.cluster-id"].clone();
    assert_eq!(
        jm["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        format!(
            "/jobs/{}",
            weir::runtime::ha::job_id(&cluster_id, "wordcount")
        ),
        "the readiness probe's job id is not the one of cluster id {cluster_id}"
    );
    // The Service selects the JobManager's pods.
    for (key, value) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&jm["spec"]["template"]["metadata"]["labels"][key], value);
    }

    // The options, checked as weir checks them: the ConfigMap's file with
    // the containers' WEIR_* variables loads (unknown keys, bad values and
    // unknown WEIR_* variables are errors).
    let options = configmap_options(&k);
    assert_eq!(options["high-availability.type"], "storage");
    assert!(options["execution.checkpointing.dir"].starts_with("s3://"));
    assert_eq!(options["rest.address"], "0.0.0.0");
    assert_eq!(options["jobmanager.rpc.address"], "weir-jobmanager");
    let slots: usize = options["taskmanager.numberOfTaskSlots"].parse().unwrap();
    let parallelism: usize = options["parallelism.default"].parse().unwrap();
    assert!(
        tm["spec"]["replicas"].as_u64().unwrap() as usize * slots >= parallelism,
        "fewer TaskManager slots than the job's parallelism"
    );
    let conf_dir = tempfile::tempdir().unwrap();
    write_conf(conf_dir.path(), &options);
    for dep in [jm, tm] {
        let cmd = pod_command(&k, dep, "10.0.0.7", conf_dir.path());
        for (name, _) in &cmd.env {
            if name.starts_with("WEIR_") && name != "WEIR_CONF_DIR" {
                assert!(
                    weir::runtime::config::options::ALL
                        .iter()
                        .any(|d| weir::runtime::config::env_name(d.key) == *name),
                    "{name} is no option's variable: weir would refuse to start"
                );
            }
        }
        let dynamic: Vec<String> = cmd
            .args
            .windows(2)
            .filter(|w| w[0] == "-D")
            .map(|w| w[1].clone())
            .collect();
        let conf =
            weir::runtime::config::Conf::load_from(Some(conf_dir.path()), &cmd.env, &dynamic)
                .unwrap_or_else(|e| panic!("{}: {e}", dep["metadata"]["name"]));
        assert_eq!(conf.raw("s3.access-key"), k.secret("weir-s3", "access-key"));
        if dep == jm {
            assert_eq!(conf.raw("jobmanager.rpc.address"), "10.0.0.7");
            assert!(cmd.args.contains(&"--jobmanager".to_string()));
        } else {
            assert_eq!(conf.raw("taskmanager.host"), "10.0.0.7");
            assert_eq!(conf.raw("jobmanager.rpc.address"), "weir-jobmanager");
            assert!(cmd.args.contains(&"--taskmanager".to_string()));
        }
        // The job's arguments are the same; only the role and the address differ.
        let job_args = |c: &PodCmd| -> Vec<String> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < c.args.len() {
                match c.args[i].as_str() {
                    "--jobmanager" | "--taskmanager" => i += 1,
                    "-D" => i += 2,
                    a => {
                        out.push(a.to_string());
                        i += 1
                    }
                }
            }
            out
        };
        let jm_cmd = pod_command(&k, jm, "10.0.0.7", conf_dir.path());
        assert_eq!(job_args(&cmd), job_args(&jm_cmd));
    }

    // The Dockerfile builds what the manifests and the unit run, where they run it.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("target/release/examples/wordcount"));
    assert!(dockerfile.contains("COPY --from=build /out/ /opt/weir/bin/"));
    assert!(dockerfile.contains("--features rocksdb"));
    for dep in [jm, tm] {
        assert_eq!(
            dep["spec"]["template"]["spec"]["containers"][0]["command"][0],
            "/opt/weir/bin/wordcount"
        );
    }
    let unit = SystemdUnit::load();
    assert_eq!(unit.exec_start()[0], "/opt/weir/bin/wordcount");
}

#[test]
fn deploy_kubernetes_cluster_resumes_after_jobmanager_kill() {
    let _serial = serial();
    require_kubernetes_validate();
    let k = K8s::load();
    let jm_dep = k.get("Deployment", "weir-jobmanager");
    let tm_dep = k.get("Deployment", "weir-taskmanager");
    let replicas = tm_dep["spec"]["replicas"].as_u64().unwrap() as usize;

    // Each pod an address of its own; a Service is its JobManager pod's.
    let jm_ip = "127.0.0.1";
    let tm_ips: Vec<String> = (0..replicas)
        .map(|i| format!("127.0.0.{}", i + 2))
        .collect();
    let server = s3::S3Server::start();
    let mut options = configmap_options(&k);
    for svc in k.service_names() {
        for v in options.values_mut() {
            if *v == svc {
                *v = jm_ip.to_string();
            }
        }
    }
    options.insert("s3.endpoint".into(), server.endpoint.clone());
    for key in [
        "execution.checkpointing.dir",
        "high-availability.storageDir",
    ] {
        if let Some(uri) = options.get(key).and_then(|u| u.strip_prefix("s3://")) {
            create_bucket(&server.endpoint, uri.split('/').next().unwrap());
        }
    }
    // The manifests' ports where they are free here, else free ones.
    let mut port_map: BTreeMap<u16, u16> = BTreeMap::new();
    for (key, host) in [
        ("rest.port", Ipv4Addr::UNSPECIFIED),
        ("jobmanager.rpc.port", Ipv4Addr::LOCALHOST),
    ] {
        let port: u16 = options[key].parse().unwrap();
        if !bindable(SocketAddr::from((host, port))) {
            let new = free_port();
            eprintln!("port {port} ({key}) is taken here: using {new}");
            port_map.insert(port, new);
            options.insert(key.into(), new.to_string());
        }
    }
    let mapped = |p: u16| *port_map.get(&p).unwrap_or(&p);
    let conf_dir = tempfile::tempdir().unwrap();
    write_conf(conf_dir.path(), &options);
    let cwd = tempfile::tempdir().unwrap();

    let jm_cmd = pod_command(&k, jm_dep, jm_ip, conf_dir.path());
    let jm_c = &jm_dep["spec"]["template"]["spec"]["containers"][0];
    let tm_c = &tm_dep["spec"]["template"]["spec"]["containers"][0];
    let rest = SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        mapped(container_port(
            jm_dep,
            &jm_c["readinessProbe"]["httpGet"]["port"],
        )),
    ));
    let ready_path = jm_c["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let live_path = jm_c["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        container_port(jm_dep, &jm_c["livenessProbe"]["httpGet"]["port"]),
        container_port(jm_dep, &jm_c["readinessProbe"]["httpGet"]["port"])
    );
    let tm_probe_port = container_port(tm_dep, &tm_c["livenessProbe"]["tcpSocket"]["port"]);
    assert_eq!(
        tm_probe_port,
        container_port(tm_dep, &tm_c["readinessProbe"]["tcpSocket"]["port"])
    );
    assert_eq!(
        tm_probe_port.to_string(),
        options["taskmanager.data.port"],
        "the TaskManagers' probes check the data port"
    );

    let mut jm = Proc::pod("JobManager", &jm_cmd, cwd.path());
    let mut tms: Vec<Proc> = tm_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let cmd = pod_command(&k, tm_dep, ip, conf_dir.path());
            Proc::pod(&format!("TaskManager {i} ({ip})"), &cmd, cwd.path())
        })
        .collect();

    // Liveness: the REST server answers.
    let live = wait_for(
        "a 200 from the liveness probe",
        Duration::from_secs(60),
        &mut [&mut jm],
        || http_get(rest, &live_path).ok().filter(|(s, _)| *s == 200),
    );
    assert_eq!(live.0, 200);
    // Readiness: the JobManager serves the job (the REST server answers
    // before that: while the JobManager takes the job's leadership over).
    let ready = wait_for(
        &format!("a 200 from the readiness probe GET {ready_path}"),
        Duration::from_secs(60),
        &mut [&mut jm],
        || http_get(rest, &ready_path).ok().filter(|(s, _)| *s == 200),
    );
    assert_eq!(ready.0, 200);
    let jobs = get_json(rest, "/jobs");
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job_id = jobs[0]["id"].as_str().unwrap().to_string();
    assert_eq!(job_id.len(), 32);
    assert_eq!(ready_path, format!("/jobs/{job_id}"));

    // The TaskManagers registered from their pod IPs, on the probed port.
    let tm_pids: BTreeSet<u64> = tms.iter().map(|t| t.pid() as u64).collect();
    let want_addrs: BTreeSet<String> = tm_ips
        .iter()
        .map(|ip| format!("{ip}:{tm_probe_port}"))
        .collect();
    let registered = |rest: SocketAddr| -> Option<(BTreeSet<u64>, BTreeSet<String>)> {
        let (status, body) = http_get(rest, "/taskmanagers").ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let list = v["taskmanagers"].as_array()?;
        Some((
            list.iter().filter_map(|t| t["pid"].as_u64()).collect(),
            list.iter()
                .filter_map(|t| t["dataAddress"].as_str().map(str::to_string))
                .collect(),
        ))
    };
    {
        let mut watch: Vec<&mut Proc> = std::iter::once(&mut jm).chain(tms.iter_mut()).collect();
        let (pids, addrs) = wait_for(
            "both TaskManagers registered",
            Duration::from_secs(60),
            &mut watch,
            || registered(rest).filter(|(p, _)| *p == tm_pids),
        );
        assert_eq!(pids, tm_pids);
        assert_eq!(addrs, want_addrs);
    }
    for ip in &tm_ips {
        let addr: SocketAddr = format!("{ip}:{tm_probe_port}").parse().unwrap();
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("the TaskManager's tcpSocket probe on {addr}: {e}"));
    }

    // Checkpoints complete (on S3).
    let latest_completed = |rest: SocketAddr| -> Option<(u64, u64, Value)> {
        let (status, body) = http_get(rest, &format!("/jobs/{job_id}/checkpoints")).ok()?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let completed = v["counts"]["completed"].as_u64()?;
        let id = v["latest"]["completed"]["id"].as_u64()?;
        Some((completed, id, v))
    };
    let before = {
        let mut watch: Vec<&mut Proc> = std::iter::once(&mut jm).chain(tms.iter_mut()).collect();
        wait_for(
            "2 completed checkpoints",
            Duration::from_secs(90),
            &mut watch,
            || latest_completed(rest).filter(|(n, _, _)| *n >= 2),
        )
    };
    let path = before.2["latest"]["completed"]["external_path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        path.starts_with(&options["execution.checkpointing.dir"]),
        "checkpoint at {path}, not under {}",
        options["execution.checkpointing.dir"]
    );
    // Every process within its container's memory limit.
    for (p, dep) in std::iter::once((&jm, jm_dep)).chain(tms.iter().map(|t| (t, tm_dep))) {
        let limit = quantity_bytes(
            dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
                .as_str()
                .unwrap(),
        );
        let rss = peak_rss(p.pid());
        eprintln!(
            "{}: peak RSS {} MiB, limit {} MiB",
            p.name,
            rss >> 20,
            limit >> 20
        );
        assert!(
            rss < limit,
            "{}: peak RSS {rss} over the limit {limit}",
            p.name
        );
    }

    // The JobManager crashes; the Deployment's replacement is the same command line.
    let (_, last_before, _) = latest_completed(rest).unwrap();
    jm.signal("KILL");
    assert!(jm.wait_exit(Duration::from_secs(10)).is_some());
    let mut jm = Proc::pod("JobManager (restarted)", &jm_cmd, cwd.path());
    let ready = wait_for(
        &format!("a 200 from the restarted JobManager's readiness probe GET {ready_path}"),
        Duration::from_secs(60),
        &mut [&mut jm],
        || http_get(rest, &ready_path).ok().filter(|(s, _)| *s == 200),
    );
    assert_eq!(ready.0, 200);
    assert_eq!(http_get(rest, &live_path).unwrap().0, 200);
    let jobs = get_json(rest, "/jobs");
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![job_id.as_str()],
        "the restarted JobManager should serve the same job (high availability)\n{}",
        jm.tail()
    );
    {
        let mut watch: Vec<&mut Proc> = std::iter::once(&mut jm).chain(tms.iter_mut()).collect();
        let (pids, _) = wait_for(
            "the TaskManagers registered with the new JobManager",
            Duration::from_secs(60),
            &mut watch,
            || registered(rest).filter(|(p, _)| *p == tm_pids),
        );
        assert_eq!(pids, tm_pids, "the same TaskManager processes");
        let (_, after, v) = wait_for(
            &format!("a checkpoint after {last_before}"),
            Duration::from_secs(90),
            &mut watch,
            || latest_completed(rest).filter(|(_, id, _)| *id > last_before),
        );
        assert!(after > last_before);
        let restored = v["latest"]["restored"]["id"].as_u64();
        eprintln!(
            "job {job_id}: checkpoint {last_before} before the JobManager's kill, \
             restored from {restored:?}, checkpoint {after} after"
        );
        assert!(
            restored.is_some_and(|r| r >= last_before),
            "restored from {restored:?}, the latest completed before the kill was {last_before}: {v}"
        );
    }

    // SIGTERM stops each process within its pod's grace period.
    let grace = |dep: &Value| {
        Duration::from_secs(
            dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap(),
        )
    };
    for tm in tms.iter_mut() {
        tm.signal("TERM");
        let t = Instant::now();
        let status = tm.wait_exit(grace(tm_dep));
        assert!(
            status.is_some(),
            "{} still runs {:?} after SIGTERM\n{}",
            tm.name,
            grace(tm_dep),
            tm.tail()
        );
        eprintln!(
            "{} stopped {:?} after SIGTERM: {:?}",
            tm.name,
            t.elapsed(),
            status
        );
        assert_eq!(status.unwrap().code(), Some(0), "{}", tm.tail());
    }
    jm.signal("TERM");
    let t = Instant::now();
    assert!(
        jm.wait_exit(grace(jm_dep)).is_some(),
        "the JobManager still runs {:?} after SIGTERM\n{}",
        grace(jm_dep),
        jm.tail()
    );
    eprintln!("the JobManager stopped {:?} after SIGTERM", t.elapsed());
    drop(server);
}

/// The systemd unit, its `[Service]` settings.
struct SystemdUnit {
    service: Vec<(String, String)>,
}

impl SystemdUnit {
    fn load() -> SystemdUnit {
        let text =
            std::fs::read_to_string(repo().join("deploy/systemd/weir-wordcount.service")).unwrap();
        // Continuation lines joined, comments dropped.
        let mut lines: Vec<String> = Vec::new();
        let mut cont = String::new();
        for l in text.lines() {
            let t = l.trim();
            if cont.is_empty() && (t.starts_with('#') || t.starts_with(';') || t.is_empty()) {
                continue;
            }
            if let Some(head) = t.strip_suffix('\\') {
                cont.push_str(head);
                cont.push(' ');
                continue;
            }
            cont.push_str(t);
            lines.push(std::mem::take(&mut cont));
        }
        let mut section = String::new();
        let mut service = Vec::new();
        for l in lines {
            if l.starts_with('[') {
                section = l;
                continue;
            }
            if section == "[Service]" {
                let (k, v) = l.split_once('=').unwrap();
                service.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        SystemdUnit { service }
    }

    fn get(&self, key: &str) -> &str {
        self.service
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("the unit has no {key}="))
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.service
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// ExecStart split into words (the unit quotes nothing).
    fn exec_start(&self) -> Vec<String> {
        let v = self.get("ExecStart");
        assert!(!v.contains(['"', '\'']), "quoting is not parsed here: {v}");
        v.split_whitespace().map(str::to_string).collect()
    }
}

/// A systemd time span such as `2s`, `30s`, `1min`.
fn timespan(s: &str) -> Duration {
    if let Some(n) = s.strip_suffix("min") {
        return Duration::from_secs(n.parse::<u64>().unwrap() * 60);
    }
    if let Some(n) = s.strip_suffix("ms") {
        return Duration::from_millis(n.parse().unwrap());
    }
    Duration::from_secs(s.trim_end_matches('s').parse().unwrap())
}

/// Systemd specifiers of a system unit, with the state root `state`.
fn specifiers(s: &str, state: &Path) -> String {
    s.replace("%S", &state.display().to_string())
        .replace("%%", "%")
}

#[test]
fn deploy_systemd_unit_supervised_resumes_after_kill() {
    let _serial = serial();
    let unit = SystemdUnit::load();
    assert_eq!(unit.get("Restart"), "always");
    let no_restart: Vec<&str> = unit.get("RestartPreventExitStatus").split(' ').collect();
    assert!(no_restart.contains(&"0"), "{no_restart:?}");
    assert!(
        no_restart.contains(&weir::runtime::ha::EXIT_FENCED.to_string().as_str()),
        "{no_restart:?}"
    );
    assert_eq!(unit.get("KillSignal"), "SIGTERM");
    assert_eq!(unit.get("StateDirectory"), "weir");
    let state = tempfile::tempdir().unwrap();
    let workdir = PathBuf::from(specifiers(unit.get("WorkingDirectory"), state.path()));
    assert_eq!(workdir, state.path().join("weir"));
    std::fs::create_dir_all(&workdir).unwrap();
    let words: Vec<String> = unit
        .exec_start()
        .iter()
        .map(|w| specifiers(w, state.path()))
        .collect();
    assert!(words.iter().any(|w| w == "high-availability.type=storage"));
    let ckpt_dir = words
        .iter()
        .find_map(|w| w.strip_prefix("execution.checkpointing.dir="))
        .expect("a checkpoint directory")
        .to_string();
    assert!(
        Path::new(&ckpt_dir).starts_with(state.path()),
        "the checkpoints go to the state directory: {ckpt_dir}"
    );
    let program = common::example(Path::new(&words[0]).file_name().unwrap().to_str().unwrap());
    let env: Vec<(String, String)> = unit
        .all("Environment")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let restart_sec = timespan(unit.get("RestartSec"));
    let stop_timeout = timespan(unit.get("TimeoutStopSec"));
    let mut args = vec![
        "-d".to_string(),
        restart_sec.as_secs().to_string(),
        "--".to_string(),
        program.display().to_string(),
    ];
    args.extend(words[1..].iter().cloned());
    let mut sup = Proc::spawn(
        "weir-supervise.sh",
        &repo().join("bin/weir-supervise.sh"),
        &args,
        &env,
        &workdir,
    );

    // The first line of the supervisor's stderr (its own and the job's)
    // from line `from` on that `f` takes: its index and what `f` made of it.
    let log = sup.log.clone();
    let lines = move || log.lock().unwrap().clone();
    let find = |from: usize, f: &dyn Fn(&str) -> Option<String>| -> Option<(usize, String)> {
        lines()
            .iter()
            .enumerate()
            .skip(from)
            .find_map(|(i, l)| f(l).map(|v| (i, v)))
    };
    let started = |n: u32| {
        move |l: &str| {
            let rest = l.strip_prefix("weir-supervise.sh: started ")?;
            let (pid, start) = rest.split_once("(pid ")?.1.split_once(", start ")?;
            (start.trim_end_matches(')') == n.to_string()).then(|| pid.to_string())
        }
    };
    let web_ui = |l: &str| {
        Some(
            l.split_once("web UI: ")?
                .1
                .rsplit_once("/jobs/")?
                .1
                .to_string(),
        )
    };
    let checkpoint = |l: &str| {
        let n = l.strip_prefix("checkpoint ")?.split_once(" completed")?.0;
        n.parse::<u64>().ok().map(|n| n.to_string())
    };

    let (_, pid1) = wait_for(
        "the first start",
        Duration::from_secs(10),
        &mut [&mut sup],
        || find(0, &started(1)),
    );
    let (_, job1) = wait_for(
        "the job's web UI line",
        Duration::from_secs(60),
        &mut [&mut sup],
        || find(0, &web_ui),
    );
    // Two completed checkpoints, then kill -9 the job's process.
    let mut last = 0u64;
    wait_for(
        "2 completed checkpoints",
        Duration::from_secs(90),
        &mut [&mut sup],
        || {
            let n = lines()
                .iter()
                .filter_map(|l| checkpoint(l))
                .filter_map(|n| n.parse::<u64>().ok())
                .collect::<Vec<_>>();
            last = n.iter().copied().max().unwrap_or(0);
            (n.len() >= 2).then_some(())
        },
    );
    let job_dir = Path::new(&ckpt_dir).join(&job1);
    assert!(
        job_dir
            .join(format!("chk-{last}"))
            .join("_metadata")
            .exists(),
        "checkpoint {last} not in {}",
        job_dir.display()
    );
    let killed_at = sup.lines().len();
    let ok = Command::new("kill")
        .args(["-KILL", &pid1])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -KILL {pid1}");
    let (_, pid2) = wait_for(
        "the restart",
        Duration::from_secs(30),
        &mut [&mut sup],
        || find(killed_at, &started(2)),
    );
    assert_ne!(pid1, pid2);
    assert!(
        sup.lines()[killed_at..]
            .iter()
            .any(|l| l.contains(&format!("(pid {pid1}) was killed by signal 9"))),
        "{}",
        sup.tail()
    );
    let (restart_line, job2) = wait_for(
        "the restarted job's web UI line",
        Duration::from_secs(60),
        &mut [&mut sup],
        || find(killed_at, &web_ui),
    );
    assert_eq!(
        job2,
        job1,
        "the restarted process should run the same job (high availability)\n{}",
        sup.tail()
    );
    let restored = find(killed_at, &|l: &str| {
        let n = l
            .strip_prefix("restored from checkpoint ")?
            .split_whitespace()
            .next()?;
        Some(n.to_string())
    });
    let restored: u64 = restored
        .unwrap_or_else(|| panic!("no 'restored from checkpoint' line\n{}", sup.tail()))
        .1
        .parse()
        .unwrap();
    assert!(
        restored >= last,
        "restored {restored}, completed before the kill {last}"
    );
    let (_, next) = wait_for(
        &format!("a checkpoint after {restored}"),
        Duration::from_secs(90),
        &mut [&mut sup],
        || {
            find(restart_line, &|l: &str| {
                checkpoint(l).filter(|n| n.parse::<u64>().unwrap() > restored)
            })
        },
    );
    let next: u64 = next.parse().unwrap();
    assert!(next > restored);
    eprintln!(
        "job {job1}: checkpoint {last} before the kill of pid {pid1}, pid {pid2} restored \
         checkpoint {restored}, completed {next}"
    );
    assert!(job_dir
        .join(format!("chk-{next}"))
        .join("_metadata")
        .exists());

    // KillSignal to the supervisor: the job is cancelled, not restarted.
    sup.signal("TERM");
    let status = sup.wait_exit(stop_timeout);
    assert!(
        status.is_some(),
        "still running {stop_timeout:?} after SIGTERM\n{}",
        sup.tail()
    );
    assert!(
        !Path::new(&format!("/proc/{pid2}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid2}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the job's process {pid2} outlived its supervisor"
    );
    assert!(
        !sup.lines().iter().any(|l| l.contains("start 3)")),
        "restarted after SIGTERM\n{}",
        sup.tail()
    );
}

#[test]
fn deploy_supervise_script_restarts_until_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("runs");
    // Exits 1, 1, then 0.
    let script = format!(
        "n=$(cat {0} 2>/dev/null || echo 0); echo $((n + 1)) > {0}; [ \"$n\" -ge 2 ]",
        count.display()
    );
    let out = Command::new(repo().join("bin/weir-supervise.sh"))
        .args(["-d", "0", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&count).unwrap().trim(), "3");
    assert_eq!(
        stderr.matches("exited with status 1; restarting").count(),
        2,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("exited with status 0: done").count(),
        1,
        "{stderr}"
    );

    // A fenced JobManager (exit 75) is not restarted either.
    let out = Command::new(repo().join("bin/weir-supervise.sh"))
        .args(["-d", "0", "--", "sh", "-c"])
        .arg(format!("exit {}", weir::runtime::ha::EXIT_FENCED))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(weir::runtime::ha::EXIT_FENCED),
        "{stderr}"
    );
    assert_eq!(stderr.matches("started sh").count(), 1, "{stderr}");

    // SIGTERM is forwarded; no restart after it; the child's status is the script's.
    let marker = dir.path().join("got-term");
    let script = format!(
        "trap 'echo > {}; exit 3' TERM; sleep 60 & wait",
        marker.display()
    );
    let mut sup = Proc::spawn(
        "weir-supervise.sh",
        &repo().join("bin/weir-supervise.sh"),
        &["--".into(), "sh".into(), "-c".into(), script],
        &[],
        dir.path(),
    );
    let log = sup.log.clone();
    wait_for(
        "the start",
        Duration::from_secs(10),
        &mut [&mut sup],
        || {
            let started = log.lock().unwrap().iter().any(|l| l.contains("start 1)"));
            started.then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    sup.signal("TERM");
    let status = sup.wait_exit(Duration::from_secs(10)).expect("stopped");
    assert_eq!(status.code(), Some(3), "{}", sup.tail());
    assert!(marker.exists(), "the child got no SIGTERM");
    assert!(!sup.lines().iter().any(|l| l.contains("start 2)")));

    // Bad usage exits 2.
    let out = Command::new(repo().join("bin/weir-supervise.sh"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // The script parses and, where shellcheck is installed, is shellcheck-clean.
    let script = repo().join("bin/weir-supervise.sh");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match Command::new("shellcheck")
        .arg("-x")
        .arg(&script)
        .current_dir(repo().join("bin"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("shellcheck not run ({e}): apt-get install shellcheck"),
    }
}
