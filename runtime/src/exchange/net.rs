//! The network channel (cluster mode): a channel whose two subtasks run on
//! different TaskManagers, over TCP, with credit-based flow control.
//!
//! One [`NetworkEnv`] per TaskManager process (Flink's `NettyShuffleEnvironment`)
//! listens on the TaskManager's data address (`taskmanager.data.port`). As in
//! Flink's netty shuffle, the **receiving** side opens the connection to the
//! producer TaskManager and requests its channels (Flink's
//! `PartitionRequest`); there is **one TCP connection per (consumer TM ->
//! producer TM) pair**, reused by every channel between them, multiplexed by
//! a [`ChannelKey`]. Data flows producer -> consumer, credits consumer ->
//! producer.
//!
//! ```text
//!  producer TaskManager                               consumer TaskManager
//!  upstream subtask                                   downstream subtask
//!     | send_batch (waits while full)                    ^ try_recv / try_recv_priority
//!     v                                                  |
//!  outbound local queue (capacity)                    inbound local queue (capacity)
//!     | pump task: a batch only against a credit        ^ reader task: decode, send_batch_now
//!     v                                                  |
//!  connection writer ====== TCP: Batch, Control, Priority, SenderGone =====> connection reader
//!  connection reader <===== TCP: PartitionRequest, AddCredit, Close ======== connection writer
//! ```
//!
//! The upstream subtask writes into an ordinary [`local`] queue
//! (`ChannelSender::Local`), so backpressure, barrier conversion
//! (`BarrierConverter`) and `barrier_before_end` work on it unchanged; a
//! pump task per channel moves its events onto the connection. The
//! downstream subtask reads an ordinary `local` queue too, through
//! [`NetRx`] (`ChannelReceiver::Remote`), which adds the credits and the
//! overtaken batches that crossed the wire with a priority barrier.
//!
//! # Frames
//!
//! Every frame is `u32` little-endian length, then a postcard-encoded
//! header ([`Frame`], self-delimiting), then the payload bytes, if any:
//!
//! | frame | direction | payload |
//! |-------|-----------|---------|
//! | `Hello { magic, version }` | consumer -> producer, first | - |
//! | `PartitionRequest { key, credits }` | consumer -> producer | - |
//! | `AddCredit { key, credits }` | consumer -> producer | - |
//! | `Close { key }` (the receiving subtask dropped its end) | consumer -> producer | - |
//! | `Batch { key }` | producer -> consumer | the batch, encoded with the edge's `EncodeFn` |
//! | `Control { key, event }`: watermark, idle status, aligned barrier, end of stream | producer -> consumer | - |
//! | `Priority { key, barrier, blobs }` (an unaligned barrier) | producer -> consumer | the overtaken batches, back to back (`blobs` = their lengths) |
//! | `SenderGone { key, reason }` (the upstream subtask dropped its end, or failed to serialize) | producer -> consumer | - |
//!
//! The header and the payload are written one after the other into the
//! connection's buffered writer (the payload is never copied into a frame
//! buffer first), and the writer flushes only when no frame is ready (after
//! one yield, so a burst from several pumps shares one write).
//!
//! **Why postcard frames and not Arrow IPC (Flink's buffers are raw
//! serialized records too).** Records are arbitrary serde Rust types
//! ([`crate::record::Data`]): there is no Arrow schema to build a record
//! batch from, and mapping every user type to one would be a second codec
//! to keep in step with the first. The batch payload is exactly what the
//! edge's codec (`EncodeFn` / `DecodeFn`) writes, the same function that
//! writes the channel state of unaligned checkpoints, so the overtaken
//! batches shipped with a priority barrier *are* channel state, byte for
//! byte, and need no re-encoding. Headers are a few bytes of postcard (varint
//! channel key), already the crate's serialization format.
//!
//! # Credit-based flow control (counted in batches)
//!
//! The receiver grants `capacity` credits with its `PartitionRequest`; the
//! pump sends a data batch only against a credit (control events and
//! priority barriers need none); each batch the receiving subtask takes out
//! of its inbound queue returns one credit. Credits are coalesced: a taken
//! batch only bumps a counter, and the connection writer sends one
//! `AddCredit` with everything counted since the last one, when it gets to
//! it. So per channel at most `capacity` batches wait in the outbound queue
//! and at most `capacity` are in flight or in the inbound queue (the reader
//! never blocks: a credit guarantees the space), plus, transiently, the
//! serialized copies of the batches an unaligned barrier overtook. A full
//! outbound queue blocks the upstream subtask's `send_batch`: backpressure
//! crosses processes.
//!
//! # Order and unaligned barriers (overtaking on both sides)
//!
//! The connection is one ordered byte stream, so batches, watermarks, idle
//! status, aligned barriers and end of stream of a channel arrive in the
//! order sent. An unaligned barrier overtakes twice:
//!
//! ```text
//!  outbound queue   [B s1 s2]   B inserted ahead (send_priority): overtaken k_s = 2
//!      pump takes B at once, even without credit, peek_encodes s1 s2 (they stay queued):
//!      wire ... r3 | Priority{B, [enc s1, enc s2]} | s1 | s2 (later, as data, against credits)
//!  inbound queue    [B r1 r2 r3]  B inserted ahead of what crossed before it: k_r = 3
//!      B.overtaken = k_r + k_s = 5
//!      NetRx::peek_encode(5) = enc r1, enc r2, enc r3 (peeked locally), enc s1, enc s2 (the blobs)
//! ```
//!
//! So the channel state captured at the barrier is exactly the data that
//! precedes it logically and is processed after it. The blobs are kept with
//! their barrier (a queue per channel: several unaligned barriers can be in
//! flight) and become the "current" overtaken data when that barrier is
//! handed to the subtask.
//!
//! # Failure events
//!
//! End of stream is a frame (`Control`) and arrives as with a local channel;
//! the upstream dropping its end afterwards (`SenderGone`) makes the
//! receiver's next `try_recv` return `Disconnected` like a drained local
//! channel. A connection that breaks (the peer process killed: EOF or reset
//! without end of stream, or a protocol error) fails every inbound channel
//! on it: after the events already queued, `try_recv` returns
//! `Error::Disconnected("connection to TaskManager <addr> lost: ...")` and
//! the subtask is woken. On the producer side a lost connection stops the
//! pumps, which drop their outbound queue, so the upstream subtask's next
//! send fails with `Disconnected`, as with a dropped local receiver; a
//! `Close` (receiving subtask gone) does the same for one channel. A request
//! for a channel whose sender is not registered yet waits for it
//! (TaskManagers deploy in any order); a connect to a peer that does not
//! listen yet is retried with backoff for 10 s, then fails its channels
//! (`cannot connect to TaskManager <addr>`). [`NetworkEnv::retire`] forgets
//! the channels of older job attempts (generations); frames for them are
//! dropped, and the connections stay for the next attempt.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::{local, Barrier, ChannelReceiver, ChannelSender, Event, TaskSignals};
use crate::record::{DecodeFn, EncodeFn};
use crate::{Error, Result};

/// "WEIR": the first bytes of a `Hello`, so a stray client is refused early.
const MAGIC: u32 = 0x5745_4952;
/// The protocol version; both ends must agree.
const VERSION: u32 = 1;
/// Largest frame accepted (header + payload).
const MAX_FRAME: usize = 1 << 30;
/// Buffer of each connection half.
const IO_BUFFER: usize = 64 * 1024;
/// How long a connect to a peer that does not listen yet is retried.
const CONNECT_RETRY: Duration = Duration::from_secs(10);

/// One channel of one job attempt, the same value on both TaskManagers.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChannelKey {
    /// The job attempt (bumped by every restart): channels of older attempts are retired.
    pub generation: u64,
    /// Index of the channel in the plan's channel list.
    pub channel: usize,
    /// The sending subtask (index among the job's subtasks).
    pub from: usize,
    /// The receiving subtask.
    pub to: usize,
}

/// A frame header (see the module doc).
#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Hello {
        magic: u32,
        version: u32,
    },
    PartitionRequest {
        key: ChannelKey,
        credits: u32,
    },
    AddCredit {
        key: ChannelKey,
        credits: u32,
    },
    Close {
        key: ChannelKey,
    },
    Batch {
        key: ChannelKey,
    },
    Control {
        key: ChannelKey,
        event: Control,
    },
    Priority {
        key: ChannelKey,
        barrier: Barrier,
        blobs: Vec<u32>,
    },
    SenderGone {
        key: ChannelKey,
        reason: Option<String>,
    },
}

/// The events that travel in order without credit.
#[derive(Debug, Serialize, Deserialize)]
enum Control {
    Barrier(Barrier),
    Watermark(i64),
    Idle(bool),
    EndOfStream,
}

enum Payload {
    None,
    One(Vec<u8>),
    Many(Vec<Vec<u8>>),
}

/// A frame to write: its header, then its payload.
struct OutFrame {
    frame: Frame,
    payload: Payload,
}

impl OutFrame {
    fn bare(frame: Frame) -> Self {
        OutFrame {
            frame,
            payload: Payload::None,
        }
    }
}

/// This TaskManager's end of the network data plane: a listener for the
/// consumers' connections, the connections to producers, and the channels
/// on them. Cheap to clone; every task stops when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct NetworkEnv {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Dropped with the last handle: every task of this environment stops.
    _shutdown: watch::Sender<bool>,
}

struct Shared {
    local_addr: SocketAddr,
    runtime: tokio::runtime::Handle,
    shutdown: watch::Receiver<bool>,
    connect_retry: Mutex<Duration>,
    next_conn: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Channels of generations below this are retired.
    min_generation: u64,
    /// Producer side: the channels whose sender runs here.
    outbound: HashMap<ChannelKey, Outbound>,
    /// Consumer side: the connection to each producer TaskManager.
    conns: HashMap<SocketAddr, Arc<ClientConn>>,
}

/// A producer-side channel, by what has happened to it yet.
enum Outbound {
    /// Registered by its sender, not requested yet.
    Waiting(Queue),
    /// Requested by its receiver, not registered yet.
    Requested {
        conn: Arc<ServerConn>,
        credits: usize,
    },
    /// Pumped onto `conn`.
    Active(Arc<Pump>),
    /// Its receiver closed before the sender registered.
    Closed,
}

/// The outbound queue's receiving end, as the pump reads it.
struct Queue {
    rx: local::Rx,
    /// The pump's wake-ups: the upstream's sends, credits, close.
    signals: Arc<TaskSignals>,
    encode: EncodeFn,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn cancelled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|down| *down).await;
}

fn protocol(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl NetworkEnv {
    /// Listens on `addr` (taskmanager.data.port; port 0 = any free port).
    /// Its tasks run on the current tokio runtime.
    pub(crate) async fn bind(addr: SocketAddr) -> Result<NetworkEnv> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io("cannot listen for data connections on", addr.to_string(), e))?;
        let local_addr = listener.local_addr().map_err(|e| {
            Error::io(
                "cannot read the address of the data listener",
                addr.to_string(),
                e,
            )
        })?;
        let (down_tx, down_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            local_addr,
            runtime: tokio::runtime::Handle::current(),
            shutdown: down_rx,
            connect_retry: Mutex::new(CONNECT_RETRY),
            next_conn: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        });
        shared.runtime.spawn(accept(shared.clone(), listener));
        Ok(NetworkEnv {
            inner: Arc::new(Inner {
                shared,
                _shutdown: down_tx,
            }),
        })
    }

    /// The address consumers connect to.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.inner.shared.local_addr
    }

    /// How long a connect to a producer that does not listen yet is retried
    /// before its channels fail (10 s by default, Flink's
    /// `taskmanager.network.request-backoff.max`; not configurable yet).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn set_connect_retry(&self, budget: Duration) {
        *lock(&self.inner.shared.connect_retry) = budget;
    }

    /// The sending end of channel `key`, whose receiver runs on another
    /// TaskManager: the upstream subtask (signals `sender`) writes into an
    /// in-process queue of `capacity` batches that a pump moves onto the
    /// connection once the receiver has requested the channel, data only
    /// against credit, serialized with `encode`. Also returns a watch on
    /// that queue (its occupancy is the upstream's backpressure).
    pub(crate) fn sender(
        &self,
        key: ChannelKey,
        capacity: usize,
        sender: Arc<TaskSignals>,
        encode: EncodeFn,
    ) -> (ChannelSender, local::WeakChannel) {
        let signals = Arc::new(TaskSignals::default());
        let (tx, rx) = local::channel(capacity, sender, signals.clone());
        let watch = tx.downgrade();
        let q = Queue {
            rx,
            signals,
            encode,
        };
        let shared = &self.inner.shared;
        let mut st = lock(&shared.state);
        if key.generation < st.min_generation {
            // Retired: the upstream's sends fail at once.
            drop(st);
            drop(q);
            return (ChannelSender::Local(tx), watch);
        }
        match st.outbound.remove(&key) {
            Some(Outbound::Requested { conn, credits }) => {
                shared.start_pump(&mut st, key, conn, credits, q)
            }
            Some(Outbound::Closed) => {
                st.outbound.insert(key, Outbound::Closed);
            }
            Some(Outbound::Active(old)) => {
                // Registered again (a bug upstream): the new one replaces it.
                old.close();
                st.outbound.insert(key, Outbound::Waiting(q));
            }
            Some(Outbound::Waiting(_)) | None => {
                st.outbound.insert(key, Outbound::Waiting(q));
            }
        }
        (ChannelSender::Local(tx), watch)
    }

    /// The receiving end of `key`, whose sender runs on the TaskManager with
    /// data address `peer`: requests the channel (connecting to `peer` if
    /// no connection is open) granting `capacity` credits, and delivers its
    /// events, decoded with `decode`, into an in-process queue of `capacity`
    /// batches that wakes the subtask with signals `receiver`. Also returns
    /// a watch on that queue.
    pub(crate) fn receiver(
        &self,
        key: ChannelKey,
        peer: SocketAddr,
        capacity: usize,
        receiver: Arc<TaskSignals>,
        decode: DecodeFn,
    ) -> (ChannelReceiver, local::WeakChannel) {
        let (tx, rx) = local::channel(capacity, Arc::new(TaskSignals::default()), receiver);
        let watch = tx.downgrade();
        let inbound = Arc::new(Inbound {
            key,
            failure: Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
            unannounced: AtomicUsize::new(0),
        });
        let entry = Arc::new(Entry {
            tx,
            decode,
            inbound: inbound.clone(),
        });
        let shared = &self.inner.shared;
        let mut st = lock(&shared.state);
        if key.generation < st.min_generation {
            drop(st);
            *lock(&inbound.failure) = Some(format!(
                "channel {key:?} belongs to a retired attempt of the job"
            ));
            drop(entry);
            let rx = NetRx {
                rx,
                inbound,
                conn: Weak::new(),
                out: mpsc::unbounded_channel().0,
                current: Mutex::new(None),
            };
            return (ChannelReceiver::Remote(rx), watch);
        }
        let conn = match st.conns.get(&peer) {
            Some(c) if c.register(&entry) => c.clone(),
            _ => {
                let (out, out_rx) = mpsc::unbounded_channel();
                let c = Arc::new(ClientConn {
                    peer,
                    out,
                    channels: Mutex::new(Channels::default()),
                });
                c.register(&entry);
                st.conns.insert(peer, c.clone());
                shared
                    .runtime
                    .spawn(client(shared.clone(), c.clone(), out_rx));
                c
            }
        };
        drop(st);
        drop(entry);
        let credits = u32::try_from(capacity).unwrap_or(u32::MAX);
        let _ = conn.out.send(ClientMsg::Request { key, credits });
        let rx = NetRx {
            rx,
            inbound,
            conn: Arc::downgrade(&conn),
            out: conn.out.clone(),
            current: Mutex::new(None),
        };
        (ChannelReceiver::Remote(rx), watch)
    }

    /// Forgets every channel of generations below `generation` (a new
    /// attempt of the job): their pumps stop (the upstream's next send
    /// fails), their receivers fail, their waiting requests and
    /// registrations are dropped, frames for them are ignored. Connections
    /// stay open for the new attempt.
    pub(crate) fn retire(&self, generation: u64) {
        let shared = &self.inner.shared;
        let (dropped, conns) = {
            let mut st = lock(&shared.state);
            st.min_generation = st.min_generation.max(generation);
            let old: Vec<ChannelKey> = st
                .outbound
                .keys()
                .filter(|k| k.generation < generation)
                .copied()
                .collect();
            let dropped: Vec<Outbound> = old.iter().filter_map(|k| st.outbound.remove(k)).collect();
            let conns: Vec<Arc<ClientConn>> = st.conns.values().cloned().collect();
            (dropped, conns)
        };
        for o in dropped {
            if let Outbound::Active(p) = o {
                p.close();
            }
        }
        for c in conns {
            c.retire(generation);
        }
    }
}

impl Shared {
    /// Starts pumping channel `key` (registered and requested) onto `conn`.
    fn start_pump(
        self: &Arc<Self>,
        st: &mut State,
        key: ChannelKey,
        conn: Arc<ServerConn>,
        credits: usize,
        q: Queue,
    ) {
        let p = Arc::new(Pump {
            key,
            conn,
            credits: AtomicUsize::new(credits),
            closed: AtomicBool::new(false),
            signals: q.signals.clone(),
        });
        st.outbound.insert(key, Outbound::Active(p.clone()));
        self.runtime.spawn(pump(self.clone(), p, q));
    }

    /// A `PartitionRequest` on `conn`.
    fn request(self: &Arc<Self>, conn: &Arc<ServerConn>, key: ChannelKey, credits: usize) {
        let mut st = lock(&self.state);
        if key.generation < st.min_generation {
            return;
        }
        match st.outbound.remove(&key) {
            Some(Outbound::Waiting(q)) => self.start_pump(&mut st, key, conn.clone(), credits, q),
            Some(Outbound::Active(p)) => {
                st.outbound.insert(key, Outbound::Active(p));
                let _ = conn.out.send(OutFrame::bare(Frame::SenderGone {
                    key,
                    reason: Some(format!("channel {key:?} was requested twice")),
                }));
            }
            Some(Outbound::Requested { .. } | Outbound::Closed) | None => {
                st.outbound.insert(
                    key,
                    Outbound::Requested {
                        conn: conn.clone(),
                        credits,
                    },
                );
            }
        }
    }

    /// An `AddCredit` on `conn`.
    fn add_credit(&self, conn: &ServerConn, key: ChannelKey, credits: usize) {
        let st = lock(&self.state);
        if let Some(Outbound::Active(p)) = st.outbound.get(&key) {
            if p.conn.id == conn.id {
                p.credits.fetch_add(credits, Ordering::AcqRel);
                p.signals.gate.notify_one();
            }
        }
    }

    /// A `Close` on `conn`: the receiving subtask is gone.
    fn close(&self, conn: &ServerConn, key: ChannelKey) {
        let mut st = lock(&self.state);
        match st.outbound.get(&key) {
            Some(Outbound::Active(p)) if p.conn.id == conn.id => p.close(),
            Some(Outbound::Requested { conn: c, .. }) if c.id == conn.id => {
                st.outbound.insert(key, Outbound::Closed);
            }
            _ => {}
        }
    }

    /// Connection `conn` from a consumer ended: its pumps stop, its
    /// waiting requests are dropped.
    fn connection_ended(&self, conn: &ServerConn) {
        let mut st = lock(&self.state);
        st.outbound.retain(|_, o| match o {
            Outbound::Requested { conn: c, .. } => c.id != conn.id,
            Outbound::Active(p) => {
                if p.conn.id == conn.id {
                    p.close();
                }
                true
            }
            _ => true,
        });
    }

    /// A pump ended: its channel is forgotten (unless replaced meanwhile).
    fn pump_ended(&self, p: &Arc<Pump>) {
        let mut st = lock(&self.state);
        if matches!(st.outbound.get(&p.key), Some(Outbound::Active(a)) if Arc::ptr_eq(a, p)) {
            st.outbound.remove(&p.key);
        }
    }

    /// The connection to `conn.peer` ended: the next receiver opens a new one.
    fn forget(&self, conn: &Arc<ClientConn>) {
        let mut st = lock(&self.state);
        if matches!(st.conns.get(&conn.peer), Some(c) if Arc::ptr_eq(c, conn)) {
            st.conns.remove(&conn.peer);
        }
    }
}

// ---------------------------------------------------------------------------
// Framing

/// Reads one frame into `buf`: its header and where its payload starts.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<(Frame, usize)> {
    let len = r.read_u32_le().await? as usize;
    if len > MAX_FRAME {
        return Err(protocol(format!("frame of {len} bytes")));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    let (frame, rest) = postcard::take_from_bytes::<Frame>(buf)
        .map_err(|e| protocol(format!("bad frame header: {e}")))?;
    Ok((frame, len - rest.len()))
}

/// Writes one frame: length, header (postcard, into the reused `hdr`), payload.
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    hdr: &mut Vec<u8>,
    f: &OutFrame,
) -> io::Result<()> {
    hdr.clear();
    *hdr = postcard::to_extend(&f.frame, std::mem::take(hdr))
        .map_err(|e| protocol(format!("cannot encode a frame header: {e}")))?;
    let payload = match &f.payload {
        Payload::None => 0,
        Payload::One(b) => b.len(),
        Payload::Many(v) => v.iter().map(Vec::len).sum(),
    };
    let len = hdr.len() + payload;
    if len > MAX_FRAME {
        return Err(protocol(format!("frame of {len} bytes")));
    }
    w.write_all(&(len as u32).to_le_bytes()).await?;
    w.write_all(hdr).await?;
    match &f.payload {
        Payload::None => {}
        Payload::One(b) => w.write_all(b).await?,
        Payload::Many(v) => {
            for b in v {
                w.write_all(b).await?;
            }
        }
    }
    Ok(())
}

/// Writes the frames `rx` yields (after `first`), flushing only when none is ready.
async fn write_loop<M>(
    w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<M>,
    first: Option<OutFrame>,
    to_frame: impl Fn(M) -> Option<OutFrame>,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(IO_BUFFER, w);
    let mut hdr = Vec::with_capacity(64);
    if let Some(f) = first {
        write_frame(&mut w, &mut hdr, &f).await?;
        w.flush().await?;
    }
    while let Some(m) = rx.recv().await {
        let mut next = Some(m);
        let mut yielded = false;
        loop {
            while let Some(m) = next.take() {
                if let Some(f) = to_frame(m) {
                    write_frame(&mut w, &mut hdr, &f).await?;
                }
                next = rx.try_recv().ok();
            }
            if yielded {
                break;
            }
            // Let the pumps that are running add theirs to this write.
            tokio::task::yield_now().await;
            yielded = true;
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Producer side

async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    let mut down = shared.shutdown.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    shared.runtime.spawn(serve(shared.clone(), stream, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a data connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = cancelled(&mut down) => return,
        }
    }
}

/// A connection from a consumer TaskManager.
struct ServerConn {
    id: u64,
    out: mpsc::UnboundedSender<OutFrame>,
}

/// Serves one consumer's connection until it ends.
async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let (out, out_rx) = mpsc::unbounded_channel();
    let conn = Arc::new(ServerConn {
        id: shared.next_conn.fetch_add(1, Ordering::Relaxed),
        out,
    });
    let mut down = shared.shutdown.clone();
    let ended = tokio::select! {
        r = serve_requests(&shared, &conn, r) => r,
        r = write_loop(w, out_rx, None, Some) => r,
        _ = cancelled(&mut down) => Ok(()),
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "data connection from a consumer ended");
    }
    shared.connection_ended(&conn);
}

async fn serve_requests(
    shared: &Arc<Shared>,
    conn: &Arc<ServerConn>,
    r: OwnedReadHalf,
) -> io::Result<()> {
    let mut r = BufReader::with_capacity(IO_BUFFER, r);
    let mut buf = Vec::new();
    match read_frame(&mut r, &mut buf).await? {
        (Frame::Hello { magic, version }, _) if magic == MAGIC && version == VERSION => {}
        (f, _) => return Err(protocol(format!("expected Hello, got {f:?}"))),
    }
    loop {
        match read_frame(&mut r, &mut buf).await?.0 {
            Frame::PartitionRequest { key, credits } => shared.request(conn, key, credits as usize),
            Frame::AddCredit { key, credits } => shared.add_credit(conn, key, credits as usize),
            Frame::Close { key } => shared.close(conn, key),
            f => return Err(protocol(format!("unexpected frame from a consumer: {f:?}"))),
        }
    }
}

/// The pump of one outbound channel: its state shared with the connection.
struct Pump {
    key: ChannelKey,
    conn: Arc<ServerConn>,
    /// Data batches the receiver has room for.
    credits: AtomicUsize,
    /// The receiver closed, the connection ended, or the channel was retired.
    closed: AtomicBool,
    signals: Arc<TaskSignals>,
}

impl Pump {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.signals.gate.notify_one();
    }

    /// Moves what is ready (data only against credit) onto the connection;
    /// `false` when the channel is over.
    fn pump_ready(&self, q: &Queue) -> bool {
        let key = self.key;
        loop {
            let credit = self.credits.load(Ordering::Acquire) > 0;
            let ev = match q.rx.try_recv_if(credit) {
                Ok(Some(ev)) => ev,
                Ok(None) => return true,
                Err(_) => {
                    // The upstream subtask dropped its end and all is sent.
                    self.gone(None);
                    return false;
                }
            };
            let frame = match ev {
                Event::Batch(b) => {
                    self.credits.fetch_sub(1, Ordering::AcqRel);
                    match (q.encode)(&b) {
                        Ok(bytes) => OutFrame {
                            frame: Frame::Batch { key },
                            payload: Payload::One(bytes),
                        },
                        Err(e) => {
                            self.gone(Some(format!("cannot serialize a batch: {e}")));
                            return false;
                        }
                    }
                }
                Event::Barrier(barrier) if barrier.unaligned => {
                    // Ahead of the queued batches, which stay queued: they
                    // go with it serialized, as the receiver's channel state.
                    match q.rx.peek_encode(barrier.overtaken, q.encode) {
                        Ok(blobs) => OutFrame {
                            frame: Frame::Priority {
                                key,
                                barrier,
                                blobs: blobs.iter().map(|b| b.len() as u32).collect(),
                            },
                            payload: Payload::Many(blobs),
                        },
                        Err(e) => {
                            self.gone(Some(format!("cannot serialize a batch: {e}")));
                            return false;
                        }
                    }
                }
                Event::Barrier(b) => control(key, Control::Barrier(b)),
                Event::Watermark(w) => control(key, Control::Watermark(w)),
                Event::Idle(i) => control(key, Control::Idle(i)),
                Event::EndOfStream => control(key, Control::EndOfStream),
            };
            if self.conn.out.send(frame).is_err() {
                return false;
            }
        }
    }

    fn gone(&self, reason: Option<String>) {
        let _ = self.conn.out.send(OutFrame::bare(Frame::SenderGone {
            key: self.key,
            reason,
        }));
    }
}

fn control(key: ChannelKey, event: Control) -> OutFrame {
    OutFrame::bare(Frame::Control { key, event })
}

/// Moves channel `p`'s events from its queue onto its connection until the
/// channel is over; then drops the queue (the upstream's next send fails).
async fn pump(shared: Arc<Shared>, p: Arc<Pump>, q: Queue) {
    let mut down = shared.shutdown.clone();
    loop {
        let notified = p.signals.gate.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if p.closed.load(Ordering::SeqCst) || !p.pump_ready(&q) {
            break;
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = cancelled(&mut down) => break,
        }
    }
    drop(q);
    shared.pump_ended(&p);
}

// ---------------------------------------------------------------------------
// Consumer side

/// The connection to one producer TaskManager.
struct ClientConn {
    peer: SocketAddr,
    out: mpsc::UnboundedSender<ClientMsg>,
    channels: Mutex<Channels>,
}

#[derive(Default)]
struct Channels {
    /// The connection failed: no channel may register any more.
    dead: bool,
    map: HashMap<ChannelKey, Arc<Entry>>,
}

/// What the connection's writer sends.
enum ClientMsg {
    Request {
        key: ChannelKey,
        credits: u32,
    },
    /// The credits counted in this channel's `unannounced`.
    Credit(Arc<Inbound>),
    Close(ChannelKey),
}

fn client_frame(m: ClientMsg) -> Option<OutFrame> {
    let frame = match m {
        ClientMsg::Request { key, credits } => Frame::PartitionRequest { key, credits },
        ClientMsg::Credit(i) => match i.unannounced.swap(0, Ordering::AcqRel) {
            0 => return None,
            n => Frame::AddCredit {
                key: i.key,
                credits: u32::try_from(n).unwrap_or(u32::MAX),
            },
        },
        ClientMsg::Close(key) => Frame::Close { key },
    };
    Some(OutFrame::bare(frame))
}

/// A channel as the connection's reader delivers into it: dropping it ends
/// the channel for the receiving subtask.
struct Entry {
    tx: local::Tx,
    decode: DecodeFn,
    inbound: Arc<Inbound>,
}

/// What the reader and the receiving subtask share about one inbound channel.
struct Inbound {
    key: ChannelKey,
    /// Why the channel failed, for the receiver's `Disconnected`.
    failure: Mutex<Option<String>>,
    /// The serialized sender-side overtaken batches of each unaligned
    /// barrier in the inbound queue, in the queue's order.
    pending: Mutex<VecDeque<(u64, Vec<Vec<u8>>)>>,
    /// Batches taken since the last `AddCredit`.
    unannounced: AtomicUsize,
}

impl ClientConn {
    /// Adds `e` unless the connection failed.
    fn register(&self, e: &Arc<Entry>) -> bool {
        let mut ch = lock(&self.channels);
        if ch.dead {
            return false;
        }
        ch.map.insert(e.inbound.key, e.clone());
        true
    }

    fn entry(&self, key: ChannelKey) -> Option<Arc<Entry>> {
        lock(&self.channels).map.get(&key).cloned()
    }

    /// Ends channel `key` for its receiver, with `failure` as its error
    /// (the local channel's own when `None`).
    fn end_channel(&self, key: ChannelKey, failure: Option<String>) {
        let e = lock(&self.channels).map.remove(&key);
        if let (Some(e), Some(f)) = (&e, failure) {
            *lock(&e.inbound.failure) = Some(f);
        }
        // Dropping the entry drops the inbound queue's sender: the receiver
        // gets `Disconnected` after the queued events, and is woken.
    }

    /// The connection is lost: every channel on it fails with `reason`.
    fn fail(&self, reason: &str) {
        let entries: Vec<Arc<Entry>> = {
            let mut ch = lock(&self.channels);
            ch.dead = true;
            ch.map.drain().map(|(_, e)| e).collect()
        };
        for e in entries {
            *lock(&e.inbound.failure) = Some(reason.to_string());
        }
    }

    fn retire(&self, generation: u64) {
        let old: Vec<Arc<Entry>> = {
            let mut ch = lock(&self.channels);
            let keys: Vec<ChannelKey> = ch
                .map
                .keys()
                .filter(|k| k.generation < generation)
                .copied()
                .collect();
            keys.iter().filter_map(|k| ch.map.remove(k)).collect()
        };
        for e in old {
            *lock(&e.inbound.failure) = Some(format!(
                "channel {:?} belongs to a retired attempt of the job",
                e.inbound.key
            ));
            let _ = self.out.send(ClientMsg::Close(e.inbound.key));
        }
    }
}

/// Runs the connection to `conn.peer` until it ends, then fails its channels.
async fn client(
    shared: Arc<Shared>,
    conn: Arc<ClientConn>,
    rx: mpsc::UnboundedReceiver<ClientMsg>,
) {
    let mut down = shared.shutdown.clone();
    let budget = *lock(&shared.connect_retry);
    let reason = tokio::select! {
        r = client_io(&conn, rx, budget) => r,
        _ = cancelled(&mut down) => format!(
            "connection to TaskManager {} closed: this TaskManager's network shut down",
            conn.peer
        ),
    };
    tracing::debug!(peer = %conn.peer, reason = %reason, "data connection to a producer ended");
    conn.fail(&reason);
    shared.forget(&conn);
}

/// Connects (retrying for `budget`), then writes requests and credits and
/// reads data until the connection breaks: why it ended.
async fn client_io(
    conn: &ClientConn,
    rx: mpsc::UnboundedReceiver<ClientMsg>,
    budget: Duration,
) -> String {
    let peer = conn.peer;
    let stream = match connect(peer, budget).await {
        Ok(s) => s,
        Err(e) => {
            return format!(
                "cannot connect to TaskManager {peer} (data port) within {budget:?}: {e}"
            )
        }
    };
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let hello = OutFrame::bare(Frame::Hello {
        magic: MAGIC,
        version: VERSION,
    });
    let why = tokio::select! {
        r = write_loop(w, rx, Some(hello), client_frame) => match r {
            Ok(()) => "closed".to_string(),
            Err(e) => e.to_string(),
        },
        r = read_data(conn, r) => match r {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => "closed by the peer".to_string(),
            Err(e) => e.to_string(),
        },
    };
    format!("connection to TaskManager {peer} lost: {why}")
}

/// Connects to `peer`, retrying with backoff for `budget` (it may not listen yet).
async fn connect(peer: SocketAddr, budget: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_millis(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match tokio::time::timeout(left, TcpStream::connect(peer)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        };
        if Instant::now() + pause >= deadline {
            return Err(err);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Delivers the producer's frames into the inbound queues; returns on a
/// broken connection or a protocol error.
async fn read_data(conn: &ClientConn, r: OwnedReadHalf) -> io::Result<std::convert::Infallible> {
    let mut r = BufReader::with_capacity(IO_BUFFER, r);
    let mut buf = Vec::new();
    loop {
        let (frame, at) = read_frame(&mut r, &mut buf).await?;
        let payload = &buf[at..];
        match frame {
            Frame::Batch { key } => {
                let Some(e) = conn.entry(key) else { continue };
                match (e.decode)(payload) {
                    // Never full: a credit was spent on this batch.
                    Ok(b) => {
                        if e.tx.send_batch_now(b).is_err() {
                            conn.end_channel(key, None);
                        }
                    }
                    Err(err) => {
                        conn.end_channel(
                            key,
                            Some(format!(
                                "cannot deserialize a batch from TaskManager {}: {err}",
                                conn.peer
                            )),
                        );
                        let _ = conn.out.send(ClientMsg::Close(key));
                    }
                }
            }
            Frame::Control { key, event } => {
                let Some(e) = conn.entry(key) else { continue };
                let ev = match event {
                    Control::Barrier(b) => Event::Barrier(b),
                    Control::Watermark(w) => Event::Watermark(w),
                    Control::Idle(i) => Event::Idle(i),
                    Control::EndOfStream => Event::EndOfStream,
                };
                if e.tx.send_control(ev).is_err() {
                    conn.end_channel(key, None);
                }
            }
            Frame::Priority {
                key,
                barrier,
                blobs,
            } => {
                let total: usize = blobs.iter().map(|&n| n as usize).sum();
                if total != payload.len() {
                    return Err(protocol(format!(
                        "priority frame of {} payload bytes announces {total}",
                        payload.len()
                    )));
                }
                let Some(e) = conn.entry(key) else { continue };
                let mut at = 0;
                let blobs: Vec<Vec<u8>> = blobs
                    .iter()
                    .map(|&n| {
                        let b = payload[at..at + n as usize].to_vec();
                        at += n as usize;
                        b
                    })
                    .collect();
                let extra = blobs.len();
                // Before the barrier is visible, so the subtask finds them.
                lock(&e.inbound.pending).push_back((barrier.id, blobs));
                if e.tx.send_priority_beyond(barrier, extra).is_err() {
                    conn.end_channel(key, None);
                }
            }
            Frame::SenderGone { key, reason } => {
                let failure = match reason {
                    Some(r) => format!("upstream subtask on TaskManager {} failed: {r}", conn.peer),
                    None => format!("upstream subtask on TaskManager {} stopped", conn.peer),
                };
                conn.end_channel(key, Some(failure));
            }
            f => return Err(protocol(format!("unexpected frame from a producer: {f:?}"))),
        }
    }
}

/// The receiving end of a network channel (`ChannelReceiver::Remote`): the
/// inbound queue the connection's reader fills, plus credits and the
/// overtaken batches that came with unaligned barriers.
pub(crate) struct NetRx {
    rx: local::Rx,
    inbound: Arc<Inbound>,
    conn: Weak<ClientConn>,
    out: mpsc::UnboundedSender<ClientMsg>,
    /// The sender-side overtaken batches of the unaligned barrier handed
    /// out last, until the next event is: (batches it overtook in the
    /// inbound queue, the serialized ones that came with it).
    current: Mutex<Option<(usize, Vec<Vec<u8>>)>>,
}

impl NetRx {
    /// The first `k` data batches that logically follow the last event
    /// taken, serialized, left in place: after an unaligned barrier, the
    /// ones it overtook in the inbound queue, then those it overtook in the
    /// sender's queue (shipped with it).
    pub(crate) fn peek_encode(&self, k: usize, encode: EncodeFn) -> Result<Vec<Vec<u8>>> {
        let current = lock(&self.current);
        match &*current {
            Some((queued, blobs)) => {
                let here = k.min(*queued);
                let mut out = self.rx.peek_encode(here, encode)?;
                out.extend(blobs.iter().take(k - here).cloned());
                Ok(out)
            }
            None => self.rx.peek_encode(k, encode),
        }
    }

    /// An unaligned barrier at the front of the channel, taken, if there is one.
    pub(crate) fn try_recv_priority(&self) -> Option<Barrier> {
        let b = self.rx.try_recv_priority()?;
        self.handed_out(Some(&b));
        Some(b)
    }

    /// The next event if one is queued; `Err` once the channel is over
    /// (the sender gone, or the connection lost) and nothing is left.
    #[inline]
    pub(crate) fn try_recv(&self) -> Result<Option<Event>> {
        match self.rx.try_recv() {
            Ok(Some(ev)) => {
                match &ev {
                    Event::Batch(_) => {
                        self.handed_out(None);
                        // One credit back; one message per burst.
                        if self.inbound.unannounced.fetch_add(1, Ordering::AcqRel) == 0 {
                            let _ = self.out.send(ClientMsg::Credit(self.inbound.clone()));
                        }
                    }
                    Event::Barrier(b) if b.unaligned => self.handed_out(Some(b)),
                    _ => self.handed_out(None),
                }
                Ok(Some(ev))
            }
            Ok(None) => Ok(None),
            Err(Error::Disconnected(local)) => Err(Error::Disconnected(
                lock(&self.inbound.failure).clone().unwrap_or(local),
            )),
            Err(e) => Err(e),
        }
    }

    /// An event was handed to the subtask: an unaligned barrier makes its
    /// shipped overtaken batches current.
    fn handed_out(&self, unaligned: Option<&Barrier>) {
        let mut current = lock(&self.current);
        match unaligned {
            None => {
                if current.is_some() {
                    *current = None;
                }
            }
            Some(b) => {
                let shipped = lock(&self.inbound.pending).pop_front();
                *current = match shipped {
                    Some((id, blobs)) if id == b.id => {
                        Some((b.overtaken.saturating_sub(blobs.len()), blobs))
                    }
                    _ => {
                        debug_assert!(false, "unaligned barrier {} without its frame", b.id);
                        None
                    }
                };
            }
        }
    }
}

impl Drop for NetRx {
    fn drop(&mut self) {
        let key = self.inbound.key;
        if let Some(c) = self.conn.upgrade() {
            c.end_channel(key, None);
        }
        let _ = self.out.send(ClientMsg::Close(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{decode_batch, downcast, encode_batch, AnyBatch};

    const WAIT: Duration = Duration::from_secs(10);

    fn key(generation: u64, channel: usize) -> ChannelKey {
        ChannelKey {
            generation,
            channel,
            from: channel,
            to: channel + 100,
        }
    }

    fn sig() -> Arc<TaskSignals> {
        Arc::new(TaskSignals::default())
    }

    fn batch(v: u64) -> AnyBatch {
        Box::new(vec![v])
    }

    fn barrier(id: u64) -> Barrier {
        Barrier {
            id,
            timestamp_ms: 0,
            savepoint: false,
            stop_without_drain: false,
            unaligned: false,
            overtaken: 0,
        }
    }

    fn label(ev: Event) -> String {
        match ev {
            Event::Batch(b) => downcast::<u64>(b)[0].to_string(),
            Event::Barrier(b) => format!("b{}{}", b.id, if b.unaligned { "u" } else { "" }),
            Event::Watermark(w) => format!("w{w}"),
            Event::Idle(i) => format!("idle{i}"),
            Event::EndOfStream => "end".into(),
        }
    }

    async fn pair() -> (NetworkEnv, NetworkEnv) {
        let at: SocketAddr = "127.0.0.1:0".parse().unwrap();
        (
            NetworkEnv::bind(at).await.unwrap(),
            NetworkEnv::bind(at).await.unwrap(),
        )
    }

    /// A sender on `producer` and its receiver on `consumer`.
    fn channel(
        producer: &NetworkEnv,
        consumer: &NetworkEnv,
        key: ChannelKey,
        capacity: usize,
    ) -> (ChannelSender, ChannelReceiver, Arc<TaskSignals>) {
        let (tx, _) = producer.sender(key, capacity, sig(), encode_batch::<u64>);
        let r = sig();
        let (rx, _) = consumer.receiver(
            key,
            producer.local_addr(),
            capacity,
            r.clone(),
            decode_batch::<u64>,
        );
        (tx, rx, r)
    }

    /// The next event, waiting for it (at most `WAIT`).
    async fn next(rx: &ChannelReceiver, s: &TaskSignals) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = s.gate.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(ev) = rx.try_recv()? {
                return Ok(ev);
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                panic!("no event within {WAIT:?}");
            }
        }
    }

    /// The next priority barrier, waiting for it.
    async fn next_priority(rx: &ChannelReceiver, s: &TaskSignals) -> Barrier {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = s.gate.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(b) = rx.try_recv_priority() {
                return b;
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                panic!("no priority barrier within {WAIT:?}");
            }
        }
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f() {
            assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn connections(env: &NetworkEnv) -> u64 {
        env.inner.shared.next_conn.load(Ordering::Relaxed)
    }

    /// 10 000 batches with watermarks, idle status, an aligned barrier and
    /// end of stream on each of two channels multiplexed on one connection,
    /// sent concurrently: each arrives complete and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_channels_on_one_connection_keep_order_and_content() {
        let (p, c) = pair().await;
        let mut readers = Vec::new();
        let mut writers = Vec::new();
        for ch in 0..2 {
            let (tx, rx, r) = channel(&p, &c, key(1, ch), 8);
            writers.push(tokio::spawn(async move {
                let mut expect = Vec::new();
                for i in 0..10_000u64 {
                    let v = i * 2 + ch as u64;
                    tx.send_batch(batch(v)).await.unwrap();
                    expect.push(v.to_string());
                    if i % 1000 == 999 {
                        tx.send_control(Event::Watermark(i as i64)).unwrap();
                        expect.push(format!("w{i}"));
                    }
                    if i == 5000 {
                        tx.send_control(Event::Barrier(barrier(3))).unwrap();
                        tx.send_control(Event::Idle(true)).unwrap();
                        tx.send_control(Event::Idle(false)).unwrap();
                        expect.extend(["b3".into(), "idletrue".into(), "idlefalse".into()]);
                    }
                }
                tx.send_control(Event::EndOfStream).unwrap();
                expect.push("end".into());
                expect
            }));
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let ev = label(next(&rx, &r).await.unwrap());
                    let end = ev == "end";
                    got.push(ev);
                    if end {
                        return got;
                    }
                }
            }));
        }
        for (w, r) in writers.into_iter().zip(readers) {
            let expect = w.await.unwrap();
            assert_eq!(r.await.unwrap(), expect);
        }
        assert_eq!(connections(&p), 1, "one connection for both channels");
    }

    /// With a receiver that does not consume, the upstream blocks after
    /// `2 * capacity` batches (its queue full, every credit spent) and the
    /// inbound queue never holds more than `capacity`; once it consumes,
    /// everything flows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credits_bound_memory_and_backpressure_the_upstream() {
        let (p, c) = pair().await;
        let cap = 4;
        let k = key(1, 0);
        let (tx, out_watch) = p.sender(k, cap, sig(), encode_batch::<u64>);
        let r = sig();
        let (rx, in_watch) = c.receiver(k, p.local_addr(), cap, r.clone(), decode_batch::<u64>);
        let sent = Arc::new(AtomicUsize::new(0));
        let n = 200u64;
        let s = sent.clone();
        let upstream = tokio::spawn(async move {
            for i in 0..n {
                tx.send_batch(batch(i)).await.unwrap();
                s.fetch_add(1, Ordering::SeqCst);
            }
            tx.send_control(Event::EndOfStream).unwrap();
        });
        eventually("2 * capacity sent", || {
            sent.load(Ordering::SeqCst) == 2 * cap
        })
        .await;
        eventually("inbound full", || in_watch.occupancy() == Some((cap, cap))).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sent.load(Ordering::SeqCst), 2 * cap, "blocked");
        assert_eq!(in_watch.occupancy(), Some((cap, cap)));
        assert_eq!(out_watch.occupancy(), Some((cap, cap)));
        for i in 0..n {
            assert_eq!(label(next(&rx, &r).await.unwrap()), i.to_string());
            let (queued, _) = in_watch.occupancy().unwrap();
            assert!(queued <= cap, "inbound holds {queued} > {cap}");
        }
        assert_eq!(label(next(&rx, &r).await.unwrap()), "end");
        upstream.await.unwrap();
    }

    /// An unaligned barrier with batches queued on both sides (in the
    /// receiver's queue and, without credit, in the sender's): it arrives
    /// first, counts both, and `peek_encode` serializes exactly the batches
    /// sent before it and not taken yet, in order; then they all arrive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unaligned_barrier_overtakes_both_queues_and_ships_their_batches() {
        let (p, c) = pair().await;
        let cap = 4;
        let k = key(1, 0);
        let (tx, out_watch) = p.sender(k, cap, sig(), encode_batch::<u64>);
        let r = sig();
        let (rx, in_watch) = c.receiver(k, p.local_addr(), cap, r.clone(), decode_batch::<u64>);
        // One taken, so the receiver's queue moved on already.
        tx.send_batch(batch(0)).await.unwrap();
        assert_eq!(label(next(&rx, &r).await.unwrap()), "0");
        for i in 1..=7 {
            tx.send_batch_now(batch(i)).unwrap();
        }
        eventually("both queues hold batches", || {
            in_watch.occupancy() == Some((cap, cap)) && out_watch.occupancy() == Some((3, cap))
        })
        .await;
        tx.send_priority(barrier(5)).unwrap();
        let b = next_priority(&rx, &r).await;
        assert!(b.unaligned);
        assert_eq!(
            (b.id, b.overtaken),
            (5, 7),
            "4 received + 3 still at the sender"
        );
        assert!(r.take_urgent(), "the receiving subtask is told");
        let state: Vec<u64> = rx
            .peek_encode(b.overtaken, encode_batch::<u64>)
            .unwrap()
            .iter()
            .map(|bytes| downcast::<u64>(decode_batch::<u64>(bytes).unwrap())[0])
            .collect();
        assert_eq!(state, (1..=7).collect::<Vec<_>>());
        tx.send_batch(batch(8)).await.unwrap();
        tx.send_control(Event::EndOfStream).unwrap();
        let mut rest = Vec::new();
        loop {
            let ev = label(next(&rx, &r).await.unwrap());
            if ev == "end" {
                break;
            }
            rest.push(ev);
        }
        assert_eq!(rest, (1..=8).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    /// Two unaligned barriers in flight keep their own shipped batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn several_unaligned_barriers_keep_their_own_overtaken_batches() {
        let (p, c) = pair().await;
        let cap = 2;
        let k = key(1, 0);
        let (tx, out_watch) = p.sender(k, cap, sig(), encode_batch::<u64>);
        let r = sig();
        let (rx, _) = c.receiver(k, p.local_addr(), cap, r.clone(), decode_batch::<u64>);
        for i in 0..4 {
            tx.send_batch_now(batch(i)).unwrap();
        }
        eventually("sender queue holds 2", || {
            out_watch.occupancy() == Some((2, cap))
        })
        .await;
        tx.send_priority(barrier(1)).unwrap();
        tx.send_batch_now(batch(4)).unwrap();
        tx.send_priority(barrier(2)).unwrap();
        let decode = |v: Vec<Vec<u8>>| -> Vec<u64> {
            v.iter()
                .map(|b| downcast::<u64>(decode_batch::<u64>(b).unwrap())[0])
                .collect()
        };
        let b1 = next_priority(&rx, &r).await;
        assert_eq!((b1.id, b1.overtaken), (1, 4));
        assert_eq!(
            decode(rx.peek_encode(4, encode_batch::<u64>).unwrap()),
            [0, 1, 2, 3]
        );
        let b2 = next_priority(&rx, &r).await;
        assert_eq!((b2.id, b2.overtaken), (2, 5));
        assert_eq!(
            decode(rx.peek_encode(5, encode_batch::<u64>).unwrap()),
            [0, 1, 2, 3, 4]
        );
        for i in 0..5 {
            assert_eq!(label(next(&rx, &r).await.unwrap()), i.to_string());
        }
    }

    /// A producer TaskManager that goes away (its environment dropped: the
    /// connection closes without end of stream) fails the receiver after the
    /// events queued, naming the peer; not an end of stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_connection_fails_the_receiver_naming_the_peer() {
        let (p, c) = pair().await;
        let addr = p.local_addr();
        let (tx, rx, r) = channel(&p, &c, key(1, 0), 4);
        tx.send_batch(batch(1)).await.unwrap();
        assert_eq!(label(next(&rx, &r).await.unwrap()), "1");
        tx.send_batch(batch(2)).await.unwrap();
        eventually("batch 2 arrived", || matches!(&rx, ChannelReceiver::Remote(n) if n.rx.peek_encode(1, encode_batch::<u64>).unwrap().len() == 1)).await;
        drop(p);
        assert_eq!(
            label(next(&rx, &r).await.unwrap()),
            "2",
            "queued events first"
        );
        match next(&rx, &r).await {
            Err(Error::Disconnected(m)) => {
                assert!(
                    m.contains(&format!("connection to TaskManager {addr} lost")),
                    "{m}"
                )
            }
            Err(e) => panic!("{e}"),
            Ok(ev) => panic!("an event after the connection was lost: {}", label(ev)),
        }
        // The upstream's sends fail too: the pump dropped its queue.
        sends_fail(&tx, 3, "the upstream can still send").await;
    }

    /// Waits until `tx` refuses a send (its channel was closed downstream),
    /// sending batch `n` meanwhile; fails with `what` after `WAIT`.
    async fn sends_fail(tx: &ChannelSender, n: u64, what: &str) {
        let deadline = Instant::now() + WAIT;
        while tx.send_batch_now(batch(n)).is_ok() {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// End of stream arrives as an event; the upstream dropping its end
    /// afterwards ends the channel like a drained local one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn end_of_stream_then_the_upstream_ends_like_a_local_channel() {
        let (p, c) = pair().await;
        let (tx, rx, r) = channel(&p, &c, key(1, 0), 4);
        tx.send_batch(batch(1)).await.unwrap();
        tx.send_control(Event::EndOfStream).unwrap();
        assert_eq!(label(next(&rx, &r).await.unwrap()), "1");
        assert_eq!(label(next(&rx, &r).await.unwrap()), "end");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(rx.try_recv(), Ok(None)), "still open");
        drop(tx);
        match next(&rx, &r).await {
            Err(Error::Disconnected(m)) => {
                assert!(m.contains("upstream subtask"), "{m}");
                assert!(!m.contains("lost"), "{m}");
            }
            Err(e) => panic!("{e}"),
            Ok(ev) => panic!("{}", label(ev)),
        }
        drop(p);
    }

    /// A receiving subtask that ends (`NetRx` dropped) closes its channel:
    /// the upstream's next send fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_receiver_fails_the_upstream() {
        let (p, c) = pair().await;
        let (tx, rx, r) = channel(&p, &c, key(1, 0), 4);
        tx.send_batch(batch(1)).await.unwrap();
        assert_eq!(label(next(&rx, &r).await.unwrap()), "1");
        drop(rx);
        sends_fail(&tx, 2, "the upstream can still send").await;
    }

    /// `retire(g)`: the older generation's channel stops on both sides; a
    /// channel of the new generation between the same subtasks works, on
    /// the same connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retire_stops_old_channels_and_the_next_generation_reuses_the_connection() {
        let (p, c) = pair().await;
        let (tx, rx, r) = channel(&p, &c, key(1, 0), 4);
        tx.send_batch(batch(1)).await.unwrap();
        assert_eq!(label(next(&rx, &r).await.unwrap()), "1");
        p.retire(2);
        c.retire(2);
        sends_fail(&tx, 2, "the old upstream can still send").await;
        loop {
            match next(&rx, &r).await {
                Ok(Event::Batch(_)) => {}
                Err(Error::Disconnected(m)) => {
                    assert!(m.contains("retired"), "{m}");
                    break;
                }
                Err(e) => panic!("{e}"),
                Ok(ev) => panic!("{}", label(ev)),
            }
        }
        // Late registrations of the old generation are dead at once.
        let (old_tx, _) = p.sender(key(1, 1), 4, sig(), encode_batch::<u64>);
        assert!(old_tx.send_batch_now(batch(0)).is_err());
        let (tx2, rx2, r2) = channel(&p, &c, key(2, 0), 4);
        // 2 * capacity: all of them fit without the receiver taking any.
        for i in 10..18 {
            tx2.send_batch(batch(i)).await.unwrap();
        }
        for i in 10..18 {
            assert_eq!(label(next(&rx2, &r2).await.unwrap()), i.to_string());
        }
        assert_eq!(connections(&p), 1, "the connection is reused");
    }

    /// TaskManagers deploy in any order: a request for a channel whose
    /// sender is not registered yet waits for it, and a connect to a
    /// TaskManager that does not listen yet is retried.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receivers_may_come_first() {
        let (p, c) = pair().await;
        let k = key(1, 0);
        let r = sig();
        let (rx, _) = c.receiver(k, p.local_addr(), 4, r.clone(), decode_batch::<u64>);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (tx, _) = p.sender(k, 4, sig(), encode_batch::<u64>);
        tx.send_batch(batch(7)).await.unwrap();
        assert_eq!(label(next(&rx, &r).await.unwrap()), "7");

        // A producer that listens only later.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let later = free.local_addr().unwrap();
        drop(free);
        let r = sig();
        let (rx, _) = c.receiver(k, later, 4, r.clone(), decode_batch::<u64>);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let p2 = NetworkEnv::bind(later).await.unwrap();
        let (tx, _) = p2.sender(k, 4, sig(), encode_batch::<u64>);
        tx.send_batch(batch(8)).await.unwrap();
        assert_eq!(label(next(&rx, &r).await.unwrap()), "8");
    }

    /// A producer that never listens fails its channels once the connect
    /// retries are used up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_that_never_listens_fails_the_channel() {
        let (_, c) = pair().await;
        c.set_connect_retry(Duration::from_millis(200));
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nowhere = free.local_addr().unwrap();
        drop(free);
        let r = sig();
        let (rx, _) = c.receiver(key(1, 0), nowhere, 4, r.clone(), decode_batch::<u64>);
        match next(&rx, &r).await {
            Err(Error::Disconnected(m)) => assert!(
                m.contains(&format!("cannot connect to TaskManager {nowhere}")),
                "{m}"
            ),
            Err(e) => panic!("{e}"),
            Ok(ev) => panic!("{}", label(ev)),
        }
    }

    /// The data plane's cost over loopback: batches of 1024 u64 records.
    /// `cargo test --release -p weir-runtime --lib exchange::net::tests::throughput -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn throughput() {
        let (p, c) = pair().await;
        let n = 50_000u64;
        let len = 1024u64;
        let (tx, rx, r) = channel(&p, &c, key(1, 0), 16);
        let bytes = encode_batch::<u64>(
            &(Box::new(
                (0..len)
                    .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    .collect::<Vec<_>>(),
            ) as AnyBatch),
        )
        .unwrap()
        .len();
        let start = Instant::now();
        let upstream = tokio::spawn(async move {
            for b in 0..n {
                let v: Vec<u64> = (0..len)
                    .map(|i| (b * len + i).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                    .collect();
                tx.send_batch(Box::new(v)).await.unwrap();
            }
            tx.send_control(Event::EndOfStream).unwrap();
        });
        let mut records = 0u64;
        loop {
            match next(&rx, &r).await.unwrap() {
                Event::Batch(b) => records += downcast::<u64>(b).len() as u64,
                Event::EndOfStream => break,
                _ => {}
            }
        }
        let secs = start.elapsed().as_secs_f64();
        upstream.await.unwrap();
        assert_eq!(records, n * len);
        println!(
            "{n} batches of {len} u64 ({bytes} bytes encoded) in {secs:.2} s: {:.0} batches/s, \
             {:.1} M records/s, {:.0} MB/s on the wire",
            n as f64 / secs,
            records as f64 / secs / 1e6,
            (n as f64 * bytes as f64) / secs / 1e6,
        );
    }
}
