//! In-process OTLP receivers for the telemetry tests: gRPC `TraceService`
//! and `MetricsService` (tonic, from `opentelemetry-proto`) and an
//! HTTP/protobuf endpoint (`POST /v1/traces` and `/v1/metrics`, hyper), both
//! on 127.0.0.1 with a port of their own. Each records every span and metric
//! data point it receives, flattened, and can answer late (a slow collector).

// Each test file uses its half (traces or metrics).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
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
    /// Span links: (trace id, span id) of each linked span.
    pub links: Vec<(Vec<u8>, Vec<u8>)>,
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

/// One received metric data point (gauges and sums of numbers).
#[derive(Debug, Clone)]
pub struct Point {
    /// The metric's name.
    pub name: String,
    /// `gauge` or `sum`.
    pub kind: &'static str,
    /// Sums: monotonic, and cumulative (temporality 2).
    pub monotonic: bool,
    pub cumulative: bool,
    pub value: f64,
    pub attrs: BTreeMap<String, String>,
    pub time_ns: u64,
    /// The resource's `service.name`.
    pub service: String,
    /// The export request it came in (0, 1, ... in order of arrival).
    pub request: usize,
}

impl Point {
    pub fn attr(&self, key: &str) -> &str {
        self.attrs.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "data point of {} has no attribute {key}: {:?}",
                self.name, self.attrs
            )
        })
    }
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<Span>>>,
    points: Arc<Mutex<Vec<Point>>>,
    requests: Arc<AtomicUsize>,
    metric_requests: Arc<AtomicUsize>,
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
                        links: s
                            .links
                            .iter()
                            .map(|l| (l.trace_id.clone(), l.span_id.clone()))
                            .collect(),
                    });
                }
            }
        }
    }
}

impl Sink {
    fn record_metrics(&self, req: ExportMetricsServiceRequest) {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
        let mut out = self.points.lock().unwrap();
        let request = out.last().map_or(0, |p| p.request + 1);
        for rm in req.resource_metrics {
            let service = rm
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .map(|v| text(&v.value))
                .unwrap_or_default();
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let (kind, monotonic, cumulative, points) = match m.data {
                        Some(Data::Gauge(g)) => ("gauge", false, false, g.data_points),
                        Some(Data::Sum(s)) => (
                            "sum",
                            s.is_monotonic,
                            s.aggregation_temporality == 2,
                            s.data_points,
                        ),
                        other => panic!("unexpected metric data of {}: {other:?}", m.name),
                    };
                    for p in points {
                        out.push(Point {
                            name: m.name.clone(),
                            kind,
                            monotonic,
                            cumulative,
                            value: match p.value {
                                Some(N::AsDouble(d)) => d,
                                Some(N::AsInt(i)) => i as f64,
                                None => f64::NAN,
                            },
                            attrs: p
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
                            time_ns: p.time_unix_nano,
                            service: service.clone(),
                            request,
                        });
                    }
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
        Some(Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(&v.value))
            .collect::<Vec<_>>()
            .join(","),
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

    /// Every metric data point received so far, in order of arrival.
    pub fn points(&self) -> Vec<Point> {
        self.sink.points.lock().unwrap().clone()
    }

    /// Trace export requests received (counted on arrival, before any delay).
    pub fn requests(&self) -> usize {
        self.sink.requests.load(Ordering::SeqCst)
    }

    /// Metric export requests received (counted on arrival, before any delay).
    pub fn metric_requests(&self) -> usize {
        self.sink.metric_requests.load(Ordering::SeqCst)
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

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metric_requests.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.record_metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
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
            .add_service(MetricsServiceServer::new(sink.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Receiver {
        addr,
        sink,
        _rt: rt,
    }
}

/// An OTLP/HTTP receiver (`POST /v1/traces` and `/v1/metrics`,
/// `application/x-protobuf`) that answers each export after `delay`.
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
                            let metrics = req.uri().path() == "/v1/metrics";
                            if metrics {
                                s.metric_requests.fetch_add(1, Ordering::SeqCst);
                            } else {
                                s.requests.fetch_add(1, Ordering::SeqCst);
                            }
                            let proto = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .is_some_and(|v| v == "application/x-protobuf");
                            if req.method() != hyper::Method::POST
                                || !(req.uri().path() == "/v1/traces" || metrics)
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
                            let decoded = if metrics {
                                ExportMetricsServiceRequest::decode(body)
                                    .map(|msg| s.record_metrics(msg))
                            } else {
                                ExportTraceServiceRequest::decode(body).map(|msg| s.record(msg))
                            };
                            match decoded {
                                Ok(()) => {}
                                Err(_) => {
                                    s.bad_requests.fetch_add(1, Ordering::SeqCst);
                                    return Ok(hyper::Response::builder()
                                        .status(400)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap());
                                }
                            }
                            let answer = if metrics {
                                ExportMetricsServiceResponse {
                                    partial_success: None,
                                }
                                .encode_to_vec()
                            } else {
                                ExportTraceServiceResponse {
                                    partial_success: None,
                                }
                                .encode_to_vec()
                            };
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
