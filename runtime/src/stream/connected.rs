//! Two streams into one operator: [`ConnectedStreams`] (`DataStream::connect`),
//! [`ConnectedKeyedStreams`] (both keyed), [`IntervalJoin`]
//! (`KeyedStream::interval_join`). The operators are [`crate::connect`]'s.

use std::marker::PhantomData;
use std::sync::Arc;

use super::{input_fns, push_node, DataStream, KeyedStream, Prototype};
use crate::connect::{
    co_timestamps, CoAdapter, CoInput, CoProcessFunction, CoProcessOp, IntervalJoinFn,
    KeyedCoProcessFunction, ProcessJoinFunction,
};
use crate::exchange::{HashPartition, PartitionSetup};
use crate::graph::{Edge, NodeKind, Ship};
use crate::operator::{ChainOp, KeyedProcessOp};
use crate::record::{Data, Key};

/// Two streams connected (`DataStream::connect`): process them together,
/// or key both first.
pub struct ConnectedStreams<A, B> {
    pub(crate) first: DataStream<A>,
    pub(crate) second: DataStream<B>,
}

/// An interval join in the making: `left.interval_join(&right)`, then
/// [`between`](IntervalJoin::between) and [`process`](IntervalJoin::process).
pub struct IntervalJoin<A, B, K, FA, FB> {
    pub(crate) left: KeyedStream<A, K, FA>,
    pub(crate) right: KeyedStream<B, K, FB>,
    pub(crate) lower: i64,
    pub(crate) upper: i64,
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    /// Both inputs wrapped.
    fn wrapped(&self) -> [DataStream<CoInput<A, B>>; 2] {
        [
            self.first
                .wrapped("Connect(1)", |a, t| CoInput::First(a, t)),
            self.second
                .wrapped("Connect(2)", |b, t| CoInput::Second(b, t)),
        ]
    }

    /// The two-input operator made by `factory`, fed by both inputs over `ship`.
    fn two_input<O: Data>(
        &self,
        name: &str,
        factory: Arc<dyn Fn() -> Box<dyn ChainOp> + Send + Sync>,
        ship: impl Fn(&DataStream<CoInput<A, B>>) -> Ship,
    ) -> DataStream<O> {
        let [a, b] = self.wrapped();
        let inputs = vec![
            Edge {
                from: a.node,
                ship: ship(&a),
                side: None,
            },
            Edge {
                from: b.node,
                ship: ship(&b),
                side: None,
            },
        ];
        let id = push_node::<O>(
            &a.graph,
            name,
            NodeKind::Op(factory),
            inputs,
            Some(input_fns::<CoInput<A, B>>()),
            false,
        );
        DataStream::new(a.graph.clone(), id)
    }

    /// Runs `function` on both inputs (Flink's `CoProcessFunction`; no keyed
    /// state or timers: `key_by` first for those).
    pub fn process<O: Data, P: CoProcessFunction<A, B, O> + Clone>(
        &self,
        function: P,
    ) -> DataStream<O> {
        let proto = Prototype::new(function);
        self.two_input(
            "CoProcess",
            Arc::new(move || {
                Box::new(CoProcessOp {
                    function: proto.get(),
                    _t: PhantomData,
                }) as Box<dyn ChainOp>
            }),
            |s| s.ship.clone(),
        )
    }

    /// Partitions both inputs by key (`first_key` on the first input,
    /// `second_key` on the second), for a [`KeyedCoProcessFunction`].
    pub fn key_by<K, FA, FB>(
        &self,
        first_key: FA,
        second_key: FB,
    ) -> ConnectedKeyedStreams<A, B, K, impl Fn(&CoInput<A, B>) -> K + Send + Sync + 'static>
    where
        K: Key,
        FA: Fn(&A) -> K + Send + Sync + 'static,
        FB: Fn(&B) -> K + Send + Sync + 'static,
    {
        ConnectedKeyedStreams {
            connected: ConnectedStreams {
                first: self.first.clone(),
                second: self.second.clone(),
            },
            selector: Arc::new(move |r: &CoInput<A, B>| match r {
                CoInput::First(a, _) => first_key(a),
                CoInput::Second(b, _) => second_key(b),
            }),
            _k: PhantomData,
        }
    }
}

/// Two connected streams, both partitioned by the same key (`S` gives
/// the key of a record of either input).
pub struct ConnectedKeyedStreams<A, B, K, S> {
    connected: ConnectedStreams<A, B>,
    selector: Arc<S>,
    _k: PhantomData<fn() -> K>,
}

impl<A, B, K, S> ConnectedKeyedStreams<A, B, K, S>
where
    A: Data,
    B: Data,
    K: Key,
    S: Fn(&CoInput<A, B>) -> K + Send + Sync + 'static,
{
    /// Runs `function` with each key's state and timers, shared by both inputs.
    pub fn process<O: Data, P: KeyedCoProcessFunction<K, A, B, O> + Clone>(
        &self,
        function: P,
    ) -> DataStream<O> {
        self.process_named("KeyedCoProcess", function)
    }

    fn process_named<O: Data, P: KeyedCoProcessFunction<K, A, B, O> + Clone>(
        &self,
        name: &str,
        function: P,
    ) -> DataStream<O> {
        let both =
            self.connected.first.timestamps.is_some() && self.connected.second.timestamps.is_some();
        let timestamps = both.then(co_timestamps::<A, B>);
        let proto = Prototype::new(CoAdapter(function, PhantomData));
        let sel = self.selector.clone();
        let factory = Arc::new(move || {
            Box::new(KeyedProcessOp::new(
                proto.get(),
                sel.clone(),
                timestamps.clone(),
            )) as Box<dyn ChainOp>
        });
        let sel = self.selector.clone();
        self.connected.two_input(name, factory, move |_| {
            let sel = sel.clone();
            Ship::Hash(Arc::new(move |setup: PartitionSetup| {
                Box::new(HashPartition::<CoInput<A, B>, K, S>::new(
                    sel.clone(),
                    setup,
                )) as Box<dyn crate::exchange::Partition>
            }))
        })
    }
}

impl<T: Data + Clone, K: Key, F: Fn(&T) -> K + Send + Sync + 'static> KeyedStream<T, K, F> {
    /// Joins this keyed stream with `other` on the key, pairing records
    /// whose timestamps are within an interval (Flink's `intervalJoin`):
    /// `left.interval_join(&right).between(lower, upper).process(f)`.
    pub fn interval_join<U: Data + Clone, G: Fn(&U) -> K + Send + Sync + 'static>(
        &self,
        other: &KeyedStream<U, K, G>,
    ) -> IntervalJoin<T, U, K, F, G> {
        IntervalJoin {
            left: self.clone(),
            right: other.clone(),
            lower: 0,
            upper: 0,
        }
    }
}

impl<A, B, K, FA, FB> IntervalJoin<A, B, K, FA, FB>
where
    A: Data + Clone,
    B: Data + Clone,
    K: Key,
    FA: Fn(&A) -> K + Send + Sync + 'static,
    FB: Fn(&B) -> K + Send + Sync + 'static,
{
    /// Pairs a left record at `t` with the right records of the same key
    /// whose timestamps are in `[t + lower_ms, t + upper_ms]` (both
    /// inclusive; bounds in ms, may be negative).
    pub fn between(mut self, lower_ms: i64, upper_ms: i64) -> Self {
        self.lower = lower_ms;
        self.upper = upper_ms;
        self
    }

    /// Calls `join` with every matching pair (left, right).
    pub fn process<O: Data, J: ProcessJoinFunction<A, B, O> + Clone>(
        &self,
        join: J,
    ) -> DataStream<O> {
        if self.lower > self.upper {
            self.left.stream().record_error(format!(
                "interval_join: the lower bound {} ms is above the upper bound {} ms",
                self.lower, self.upper
            ));
        }
        let _ = self
            .left
            .stream()
            .timestamps_for("interval_join (left input)");
        let _ = self
            .right
            .stream()
            .timestamps_for("interval_join (right input)");
        let (fa, fb) = (self.left.selector(), self.right.selector());
        self.left
            .stream()
            .connect(self.right.stream())
            .key_by(move |a: &A| fa(a), move |b: &B| fb(b))
            .process_named(
                "IntervalJoin",
                IntervalJoinFn {
                    lower: self.lower,
                    upper: self.upper,
                    join,
                    left: None,
                    right: None,
                },
            )
    }
}
