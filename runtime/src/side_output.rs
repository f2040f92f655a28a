//! Side outputs (Flink's `OutputTag`): a second stream out of one operator.
//!
//! A function emits to a side output with
//! [`KeyedContext::output`](crate::state::KeyedContext::output); a window
//! operator sends its late records to one with
//! [`WindowedStream::side_output_late_data`](crate::stream::WindowedStream::side_output_late_data).
//! [`DataStream::get_side_output`](crate::stream::DataStream::get_side_output)
//! is the stream of a tag's records. A tag is its name and its record type:
//! two tags with the same name must have the same type.
//!
//! # How side records travel
//! The operator collects side records per tag into batches
//! (`SideOutputs`) next to its main output. An operator whose side output
//! is consumed ends its chain (the plan never chains over a side edge), so
//! its side batches go straight to the output edges of their tag while its
//! main batches go to the main edges; side records of a tag nobody consumes
//! are dropped, as in Flink.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::record::{AnyBatch, Data};
use crate::{Error, Result};

/// Names a side output of records of type `T`.
pub struct OutputTag<T> {
    pub(crate) name: Arc<str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        OutputTag {
            name: self.name.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for OutputTag<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputTag({})", self.name)
    }
}

impl<T: Data> OutputTag<T> {
    /// A tag called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        OutputTag {
            name: Arc::from(name.into()),
            _t: PhantomData,
        }
    }
    /// The tag's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Appends one boxed record to a side batch of its type.
type PushFn = fn(&mut AnyBatch, Box<dyn Any + Send>) -> bool;

fn push_typed<T: Data>(batch: &mut AnyBatch, v: Box<dyn Any + Send>) -> bool {
    match (batch.downcast_mut::<Vec<T>>(), v.downcast::<T>()) {
        (Some(b), Ok(v)) => {
            b.push(*v);
            true
        }
        _ => false,
    }
}

/// One record for a side output, as a function emitted it.
pub(crate) struct SideRecord {
    tag: Arc<str>,
    value: Box<dyn Any + Send>,
    push: PushFn,
    new_batch: fn() -> AnyBatch,
}

fn new_batch<T: Data>() -> AnyBatch {
    Box::new(Vec::<T>::new())
}

impl SideRecord {
    pub(crate) fn new<T: Data>(tag: &OutputTag<T>, value: T) -> Self {
        SideRecord {
            tag: tag.name.clone(),
            value: Box::new(value),
            push: push_typed::<T>,
            new_batch: new_batch::<T>,
        }
    }
}

/// The side batches an operator collected since they were last taken.
#[derive(Default)]
pub(crate) struct SideOutputs {
    batches: Vec<(Arc<str>, AnyBatch, PushFn)>,
}

impl SideOutputs {
    /// Adds a record to its tag's batch.
    pub(crate) fn add(&mut self, r: SideRecord) -> Result<()> {
        let i = match self.batches.iter().position(|b| b.0 == r.tag) {
            Some(i) => i,
            None => {
                self.batches.push((r.tag.clone(), (r.new_batch)(), r.push));
                self.batches.len() - 1
            }
        };
        let (tag, batch, push) = &mut self.batches[i];
        if !push(batch, r.value) {
            return Err(Error::User(format!(
                "side output '{tag}' is used with two record types: give each type its own tag name"
            )));
        }
        Ok(())
    }

    /// Adds a record of a known type.
    pub(crate) fn add_typed<T: Data>(&mut self, tag: &OutputTag<T>, value: T) -> Result<()> {
        self.add(SideRecord::new(tag, value))
    }

    /// The batches collected, by tag; empties the buffer.
    pub(crate) fn take(&mut self) -> Vec<(Arc<str>, AnyBatch)> {
        self.batches.drain(..).map(|(t, b, _)| (t, b)).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_batched_per_tag_and_types_are_checked() {
        let late = OutputTag::<u64>::new("late");
        let names = OutputTag::<String>::new("names");
        let mut s = SideOutputs::default();
        s.add_typed(&late, 1).unwrap();
        s.add_typed(&names, "a".into()).unwrap();
        s.add_typed(&late, 2).unwrap();
        let bad = OutputTag::<i32>::new("late");
        let err = s.add_typed(&bad, 3).unwrap_err().to_string();
        assert!(err.contains("two record types"), "{err}");
        let taken = s.take();
        assert!(s.is_empty());
        assert_eq!(taken.len(), 2);
        assert_eq!(&*taken[0].0, "late");
        assert_eq!(taken[0].1.downcast_ref::<Vec<u64>>().unwrap(), &vec![1, 2]);
        assert_eq!(
            taken[1].1.downcast_ref::<Vec<String>>().unwrap(),
            &vec!["a".to_string()]
        );
    }
}
