//! The control plane's wire: one gRPC bidirectional stream per TaskManager
//! session (`weir.cluster.JobManager/Connect`), messages as postcard frames.
//!
//! A TaskManager opens the stream and sends `Register` first; the
//! JobManager answers `Registered` (or `Refused`) and from then on both
//! sides send on their half of the stream until one of them closes it or
//! goes silent for `heartbeat.timeout`. One stream per session gives the
//! two loss signals the issue asks for: a broken connection ends the stream
//! at once (a killed process's kernel resets the TCP connection), and
//! missed heartbeats catch a process that is alive but does not answer
//! (SIGSTOP, a stuck machine).
//!
//! Every message travels in an `Envelope` with the job id and the
//! **generation** (the deployment attempt) it belongs to: a TaskManager
//! ignores commands of a generation older than the one it runs, and the
//! JobManager ignores reports (acknowledgements, ends) of a generation older
//! than the current one. That is the fencing of cluster mode: a subtask of
//! an old attempt (a TaskManager that slept through its own failover) can
//! neither complete a checkpoint nor be mistaken for the new attempt.
//!
//! Why postcard and not protobuf: both ends are the same Rust program (the
//! job's binary), the messages are the runtime's own serde types (state
//! handles, statistics, barriers), and postcard needs no schema compiler in
//! the build; tonic carries it through a `Codec` of a few lines. The
//! service is hand-written for the same reason: one streaming method.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::{Status, Streaming};

use crate::checkpoint::{StateHandle, SubtaskCheckpointStats};
use crate::coordinator::CheckpointControl;

/// The gRPC path of the one method.
pub(crate) const CONNECT_PATH: &str = "/weir.cluster.JobManager/Connect";
/// The gRPC service name.
pub(crate) const SERVICE_NAME: &str = "weir.cluster.JobManager";

/// A message with the job and the attempt it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    /// The job id (empty in a TaskManager's `Register`: it learns it from `Registered`).
    pub job: String,
    /// The deployment attempt (0 before the first deployment).
    pub generation: u64,
    pub body: T,
}

/// The instants of a subtask's checkpoint phases, as microseconds before the
/// acknowledgement was sent (an `Instant` means nothing in another process).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct WirePhases {
    pub first_barrier: Option<u64>,
    pub sync_start: u64,
    pub sync_end: u64,
    pub capture_end: Option<u64>,
    pub upload_start: u64,
    pub upload_end: u64,
}

impl WirePhases {
    pub(crate) fn from_phases(p: &crate::checkpoint::events::SubtaskPhases) -> Self {
        let now = std::time::Instant::now();
        let ago = |t: std::time::Instant| now.saturating_duration_since(t).as_micros() as u64;
        WirePhases {
            first_barrier: p.first_barrier.map(ago),
            sync_start: ago(p.sync_start),
            sync_end: ago(p.sync_end),
            capture_end: p.capture_end.map(ago),
            upload_start: ago(p.upload_start),
            upload_end: ago(p.upload_end),
        }
    }

    pub(crate) fn to_phases(self) -> crate::checkpoint::events::SubtaskPhases {
        let now = std::time::Instant::now();
        let at = |us: u64| {
            now.checked_sub(std::time::Duration::from_micros(us))
                .unwrap_or(now)
        };
        crate::checkpoint::events::SubtaskPhases {
            first_barrier: self.first_barrier.map(at),
            sync_start: at(self.sync_start),
            sync_end: at(self.sync_end),
            capture_end: self.capture_end.map(at),
            upload_start: at(self.upload_start),
            upload_end: at(self.upload_end),
        }
    }
}

/// Records counted by one operator's subtask on a TaskManager, sent with
/// each heartbeat so the JobManager's metrics and REST API show them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SubtaskCounts {
    pub node: usize,
    pub subtask: usize,
    pub records_in: u64,
    pub records_out: u64,
}

/// TaskManager to JobManager. (An acknowledgement is larger than the other
/// messages; each is encoded once and sent, so boxing it would save nothing.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum ToJobManager {
    /// The first message of a session.
    Register {
        /// A name unique in the cluster (`host:data-port`, plus the pid).
        id: String,
        /// Where other TaskManagers reach its data plane.
        data_address: String,
        slots: usize,
        /// A hash of the job's plan as this process built it: a TaskManager
        /// started with another program or other arguments is refused.
        plan: u64,
        pid: u32,
    },
    Heartbeat {
        counts: Vec<SubtaskCounts>,
    },
    /// The processing loops of `generation`'s subtasks are deployed.
    Deployed,
    /// A subtask of the envelope's generation ended.
    Ended {
        task: usize,
        failure: Option<String>,
        killed: bool,
    },
    Ack {
        task: usize,
        id: u64,
        handle: StateHandle,
        stats: SubtaskCheckpointStats,
        phases: WirePhases,
    },
    Decline {
        task: usize,
        id: u64,
        reason: String,
        finished: bool,
    },
    /// The subtask finished its input (it waits for the final checkpoint).
    Finished {
        task: usize,
    },
    /// The TaskManager could not deploy its part of the generation.
    DeployFailed {
        reason: String,
    },
}

/// Where an attempt's subtasks start from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeploySpec {
    /// Per subtask (index among all of the job's subtasks): the data
    /// address of the TaskManager that runs it.
    pub placement: Vec<String>,
    /// The subtasks this TaskManager runs.
    pub tasks: Vec<usize>,
    /// The checkpoint or savepoint directory the attempt restores (each
    /// TaskManager reads it from the shared checkpoint storage and takes
    /// its subtasks' part, exactly as the JobManager would).
    pub restore: Option<String>,
}

/// JobManager to TaskManager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ToTaskManager {
    Registered {
        /// The checkpoint directory's job id and the job's name.
        job_name: String,
    },
    Refused {
        reason: String,
    },
    Heartbeat,
    /// Start the envelope's generation: stop everything older first.
    Deploy(DeploySpec),
    /// Checkpoint control for one subtask of the envelope's generation.
    Control {
        task: usize,
        control: CheckpointControl,
    },
    /// Stop one subtask (its end is reported as usual).
    Stop {
        task: usize,
    },
    /// Kill one subtask (its end is reported as a kill).
    Kill {
        task: usize,
    },
    /// Stop every subtask of this generation and older.
    Cancel,
    /// The job ended: exit with this status.
    JobEnded {
        exit_code: i32,
        message: String,
    },
}

/// A tonic codec of postcard-encoded values.
pub(crate) struct PostcardCodec<E, D>(std::marker::PhantomData<fn(E) -> D>);

impl<E, D> Default for PostcardCodec<E, D> {
    fn default() -> Self {
        PostcardCodec(std::marker::PhantomData)
    }
}

pub(crate) struct PostcardEncoder<E>(std::marker::PhantomData<fn(E)>);
pub(crate) struct PostcardDecoder<D>(std::marker::PhantomData<fn() -> D>);

impl<E: Serialize + Send + 'static, D: DeserializeOwned + Send + 'static> Codec
    for PostcardCodec<E, D>
{
    type Encode = E;
    type Decode = D;
    type Encoder = PostcardEncoder<E>;
    type Decoder = PostcardDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        PostcardEncoder(std::marker::PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        PostcardDecoder(std::marker::PhantomData)
    }
}

impl<E: Serialize> Encoder for PostcardEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        let v = postcard::to_stdvec(&item)
            .map_err(|e| Status::internal(format!("cannot encode a control message: {e}")))?;
        dst.put_slice(&v);
        Ok(())
    }
}

impl<D: DeserializeOwned> Decoder for PostcardDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        use bytes::Buf;
        let bytes = src.copy_to_bytes(src.remaining());
        postcard::from_bytes(&bytes).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "cannot decode a control message (a TaskManager of another weir version?): {e}"
            ))
        })
    }
}

/// The JobManager's half of the stream, as the server sees it.
pub(crate) type InboundStream = Streaming<Envelope<ToJobManager>>;
/// What the server sends back.
pub(crate) type OutboundStream =
    Pin<Box<dyn futures::Stream<Item = Result<Envelope<ToTaskManager>, Status>> + Send>>;

/// Handles a new session's stream (the JobManager's side).
pub(crate) trait SessionHandler: Send + Sync + 'static {
    fn connect(&self, inbound: InboundStream, peer: Option<std::net::SocketAddr>)
        -> OutboundStream;
}

/// The gRPC service: routes `Connect` to the handler.
pub(crate) struct JobManagerService<H>(pub Arc<H>);

impl<H> Clone for JobManagerService<H> {
    fn clone(&self) -> Self {
        JobManagerService(self.0.clone())
    }
}

impl<H> tonic::server::NamedService for JobManagerService<H> {
    const NAME: &'static str = SERVICE_NAME;
}

struct ConnectCall<H>(Arc<H>);

impl<H: SessionHandler> Service<tonic::Request<Streaming<Envelope<ToJobManager>>>>
    for ConnectCall<H>
{
    type Response = tonic::Response<OutboundStream>;
    type Error = Status;
    type Future = BoxFuture<Self::Response, Status>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<Streaming<Envelope<ToJobManager>>>) -> Self::Future {
        let handler = self.0.clone();
        Box::pin(async move {
            let peer = req.remote_addr();
            Ok(tonic::Response::new(
                handler.connect(req.into_inner(), peer),
            ))
        })
    }
}

impl<H, B> Service<http::Request<B>> for JobManagerService<H>
where
    H: SessionHandler,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let handler = self.0.clone();
        if req.uri().path() == CONNECT_PATH {
            Box::pin(async move {
                let codec =
                    PostcardCodec::<Envelope<ToTaskManager>, Envelope<ToJobManager>>::default();
                let mut grpc = tonic::server::Grpc::new(codec);
                Ok(grpc.streaming(ConnectCall(handler), req).await)
            })
        } else {
            Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            })
        }
    }
}

/// Opens a session's stream to the JobManager at `endpoint`
/// (`http://host:port`): `outbound` is what the TaskManager sends.
pub(crate) async fn connect(
    endpoint: String,
    connect_timeout: std::time::Duration,
    outbound: impl futures::Stream<Item = Envelope<ToJobManager>> + Send + 'static,
) -> Result<Streaming<Envelope<ToTaskManager>>, String> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .map_err(|e| format!("bad JobManager address {endpoint}: {e}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot reach the JobManager at {endpoint}: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| format!("JobManager at {endpoint} not ready: {e}"))?;
    let codec = PostcardCodec::<Envelope<ToJobManager>, Envelope<ToTaskManager>>::default();
    let path = http::uri::PathAndQuery::from_static(CONNECT_PATH);
    let resp = grpc
        .streaming(tonic::Request::new(outbound), path, codec)
        .await
        .map_err(|e| format!("JobManager at {endpoint} refused the session: {e}"))?;
    Ok(resp.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handler that echoes each heartbeat's counts back as a `Refused`
    /// reason (enough to see both directions and the codec work).
    struct Echo;

    impl SessionHandler for Echo {
        fn connect(
            &self,
            inbound: InboundStream,
            _: Option<std::net::SocketAddr>,
        ) -> OutboundStream {
            use futures::StreamExt;
            Box::pin(inbound.map(|m| {
                let m = m?;
                Ok(Envelope {
                    job: m.job,
                    generation: m.generation + 1,
                    body: ToTaskManager::Refused {
                        reason: format!("{:?}", m.body),
                    },
                })
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_stream_carries_envelopes_both_ways() {
        use futures::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(JobManagerService(Arc::new(Echo)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let out = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let mut inbound = connect(
            format!("http://{addr}"),
            std::time::Duration::from_secs(5),
            out,
        )
        .await
        .unwrap();
        for g in 0..3u64 {
            tx.send(Envelope {
                job: "j".into(),
                generation: g,
                body: ToJobManager::Heartbeat {
                    counts: vec![SubtaskCounts {
                        node: 1,
                        subtask: 2,
                        records_in: g,
                        records_out: 4,
                    }],
                },
            })
            .unwrap();
            let back = inbound.next().await.unwrap().unwrap();
            assert_eq!(back.generation, g + 1);
            let ToTaskManager::Refused { reason } = back.body else {
                panic!("{back:?}")
            };
            assert!(reason.contains(&format!("records_in: {g}")), "{reason}");
        }
        drop(tx);
        assert!(
            inbound.next().await.is_none(),
            "the stream ends when the client closes"
        );
    }

    #[tokio::test]
    async fn no_jobmanager_is_a_clear_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let err = connect(
            format!("http://127.0.0.1:{port}"),
            std::time::Duration::from_secs(2),
            futures::stream::pending(),
        )
        .await
        .unwrap_err();
        assert!(err.contains("cannot reach the JobManager"), "{err}");
    }
}
