//! [`CollectionSource`]: the elements of a `Vec`, in order per subtask.

use std::sync::Arc;

use weir_runtime::prelude::*;

/// Emits the elements of a collection. Subtask `s` of `p` emits the elements
/// at indices `s, s + p, ...` in order; with parallelism 1 the order is the
/// collection's. Its position is the next index.
pub struct CollectionSource<T> {
    items: Arc<Vec<T>>,
    next: usize,
    stride: usize,
}

impl<T> Clone for CollectionSource<T> {
    fn clone(&self) -> Self {
        CollectionSource {
            items: self.items.clone(),
            next: self.next,
            stride: self.stride,
        }
    }
}

impl<T: Data + Clone + Sync> CollectionSource<T> {
    /// A source of `items`.
    pub fn new(items: Vec<T>) -> Self {
        CollectionSource {
            items: Arc::new(items),
            next: 0,
            stride: 1,
        }
    }
}

const POSITION: &str = "collection-position";

impl<T: Data + Clone + Sync> SourceFunction<T> for CollectionSource<T> {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        self.next = ctx.runtime.subtask;
        self.stride = ctx.runtime.parallelism;
        if let [next] = ctx.state.get_list::<u64>(POSITION)?.as_slice() {
            self.next = *next as usize;
        }
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Vec<T>, max: usize) -> Result<SourceStatus> {
        for _ in 0..max {
            match self.items.get(self.next) {
                Some(v) => out.push(v.clone()),
                None => return Ok(SourceStatus::Finished),
            }
            self.next += self.stride;
        }
        Ok(if self.next >= self.items.len() {
            SourceStatus::Finished
        } else {
            SourceStatus::More
        })
    }

    fn snapshot_state(
        &mut self,
        _checkpoint_id: u64,
        state: &mut OperatorStateStore,
    ) -> Result<()> {
        state.update_list(POSITION, &[self.next as u64])
    }
}
