//! Sources.
//!
//! Every source splits its input between the parallel subtasks by looking at
//! its [`RuntimeContext`](weir_runtime::operator::RuntimeContext), and keeps
//! its read position as operator state, written by `snapshot_state`, so it can
//! resume exactly where a snapshot left it.

mod collection;
mod file;
mod generator;
mod paced;

pub use collection::CollectionSource;
pub use file::{FileSource, FileSplit};
pub use generator::GeneratorSource;
pub use paced::Paced;
