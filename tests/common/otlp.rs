//! In-process OTLP trace receivers for the telemetry tests: a gRPC
//! `TraceService` (tonic, from `opentelemetry-proto`) and an HTTP/protobuf
//! endpoint (`POST /v1/traces`, hyper), both on 127.0.0.1 with a port of
//! their own. Each records every span it receives, flattened, and can answer
//! late (a slow collector).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Attribute values, written out (`42`, `true`, `text`).
    pub attrs: BTreeMap<String, String>,
    /// 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// The resource's `service.name`.
    pub service: String,
}

impl Span {
    pub fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "span {} has no attribute {key}: {:?}",
                self.name, self.attrs
            )
        })
    }

    pub fn duration_ms(&self) -> f64 {
        (self.end_ns as f64 - self.start_ns as f64) / 1e6
    }
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<Span>>>,
    requests: Arc<AtomicUsize>,
    bad_requests: Arc<AtomicUsize>,
    delay: Duration,
}

impl Sink {
    fn record(&self, req: ExportTraceServiceRequest) {
        let mut out = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| text(&v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let status = s.status.clone().unwrap_or_default();
                    out.push(Span {
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        attrs: s
                            .attributes
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    kv.value
                                        .as_ref()
                                        .map(|v| text(&v.value))
                                        .unwrap_or_default(),
                                )
                            })
                            .collect(),
                        status_code: status.code,
                        status_message: status.message,
                        service: service.clone(),
                    });
                }
            }
        }
    }
}

fn text(v: &Option<Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    sink: Sink,
    _rt: tokio::runtime::Runtime,
}

impl Receiver {
    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.sink.spans.lock().unwrap().clone()
    }

    /// Export requests received (counted on arrival, before any delay).
    pub fn requests(&self) -> usize {
        self.sink.requests.load(Ordering::SeqCst)
    }

    /// HTTP requests to another path or with another content type.
    pub fn bad_requests(&self) -> usize {
        self.sink.bad_requests.load(Ordering::SeqCst)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.record(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC receiver that answers each export after `delay`.
pub fn grpc_receiver(delay: Duration) -> Receiver {
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = Sink {
        delay,
        ..Sink::default()
    };
    let service = TraceServiceServer::new(sink.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Receiver {
        addr,
        sink,
        _rt: rt,
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, `application/x-protobuf`) that
/// answers each export after `delay`.
pub fn http_receiver(delay: Duration) -> Receiver {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;

    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = Sink {
        delay,
        ..Sink::default()
    };
    let s = sink.clone();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            s.requests.fetch_add(1, Ordering::SeqCst);
                            let proto = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .is_some_and(|v| v == "application/x-protobuf");
                            if req.method() != hyper::Method::POST
                                || req.uri().path() != "/v1/traces"
                                || !proto
                            {
                                s.bad_requests.fetch_add(1, Ordering::SeqCst);
                                return Ok::<_, hyper::Error>(
                                    hyper::Response::builder()
                                        .status(404)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                );
                            }
                            let body = req.into_body().collect().await?.to_bytes();
                            if !s.delay.is_zero() {
                                tokio::time::sleep(s.delay).await;
                            }
                            match ExportTraceServiceRequest::decode(body) {
                                Ok(msg) => s.record(msg),
                                Err(_) => {
                                    s.bad_requests.fetch_add(1, Ordering::SeqCst);
                                    return Ok(hyper::Response::builder()
                                        .status(400)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap());
                                }
                            }
                            let answer = ExportTraceServiceResponse {
                                partial_success: None,
                            }
                            .encode_to_vec();
                            Ok(hyper::Response::builder()
                                .status(200)
                                .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
                                .body(Full::new(Bytes::from(answer)))
                                .unwrap())
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver {
        addr,
        sink,
        _rt: rt,
    }
}

/// An endpoint where nothing listens (a collector that is down).
pub fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}
