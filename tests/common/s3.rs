//! A real S3-compatible server for the tests: moto's server (`moto[server]`
//! from PyPI, installed by `tests/run.sh`), started on a free port of
//! 127.0.0.1 with one bucket, and killed when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every test server starts with.
pub const BUCKET: &str = "weir-test";

/// Serializes the tests of one binary that use a server: the S3 settings
/// are per process (as Flink's file systems), so two servers at once would
/// take each other's endpoint.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A running moto server.
pub struct S3Server {
    child: Child,
    _serial: std::sync::MutexGuard<'static, ()>,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    port: u16,
}

/// The Python that has moto's server: `$WEIR_S3_TEST_PYTHON`, else `python3`.
fn python() -> PathBuf {
    std::env::var_os("WEIR_S3_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP answer: {text}")))
}

impl S3Server {
    /// Starts moto's server with the bucket [`BUCKET`]. Panics (the test
    /// fails) with the install command when moto is not installed.
    pub fn start() -> S3Server {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let py = python();
        let has_moto = Command::new(&py)
            .args(["-c", "import moto.server, flask, werkzeug"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has_moto,
            "the S3 tests need moto's S3 server, which is not installed for {}: \
             run `{} -m pip install 'moto[server]'` (tests/run.sh installs it)",
            py.display(),
            py.display()
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(&py)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto's server");
        let mut server = S3Server {
            child,
            _serial: serial,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let t = Instant::now();
        loop {
            if let Ok(code) = http(port, "PUT", &format!("/{BUCKET}")) {
                assert_eq!(code, 200, "creating the bucket");
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto's server exited at start: {status}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "moto's server did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The `-D` options (for an example's command line) that point weir at this server.
    pub fn dynamic(&self) -> Vec<String> {
        self.settings()
            .into_iter()
            .flat_map(|(k, v)| ["-D".to_string(), format!("{k}={v}")])
            .collect()
    }

    /// The `s3.*` options that point weir at this server.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("s3.endpoint", self.endpoint.clone()),
            ("s3.access-key", "test".into()),
            ("s3.secret-key", "test".into()),
            ("s3.region", "us-east-1".into()),
            ("s3.path.style.access", "true".into()),
        ]
    }

    /// Makes this process's `s3://` locations use this server.
    pub fn configure(&self) {
        use weir::runtime::checkpoint::store::{configure, S3Settings};
        configure(S3Settings {
            endpoint: self.endpoint.clone(),
            access_key: "test".into(),
            secret_key: "test".into(),
            region: "us-east-1".into(),
            path_style: true,
        });
    }

    /// Every object under `prefix` in the bucket (key relative to `prefix` -> size),
    /// listed through the server.
    pub fn objects(&self, prefix: &str) -> std::collections::BTreeMap<String, u64> {
        use weir::runtime::checkpoint::store::resolve;
        self.configure();
        let (st, key) = resolve(std::path::Path::new(&self.uri(prefix))).unwrap();
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let k = if rel.is_empty() {
                key.clone()
            } else {
                format!("{key}/{rel}")
            };
            for e in st.list_dir(&k).unwrap() {
                let r = if rel.is_empty() {
                    e.name.clone()
                } else {
                    format!("{rel}/{}", e.name)
                };
                if e.is_dir {
                    stack.push(r);
                } else {
                    out.insert(r, e.size);
                }
            }
        }
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.port;
    }
}
