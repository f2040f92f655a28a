//! [`FileSink`]: records as lines of text in part files under a directory,
//! exactly once with checkpoints (two-phase commit).
//!
//! Each sink subtask writes its own part files. A file being written is
//! hidden: `.part-<run>-<subtask>-<n>.inprogress`, where `<run>` is the
//! runtime's run id (the first 8 characters of the job id; with high
//! availability followed by the JobManager generation), so runs writing to
//! the same directory never clash, not even a superseded process of the
//! same job that still runs. Readers (and [`crate::source::FileSource`]) skip hidden files.
//! The part number `<n>` continues across restores, so a subtask's committed
//! files, ordered by `<n>`, hold its output in order.
//!
//! # Two-phase commit
//! - **Write**: records go to the current in-progress file; at the rolling
//!   size the file is closed (flushed, fsynced) and waits, still hidden.
//! - **Pre-commit** (snapshot of checkpoint `n`): the current file is closed
//!   too; every closed file becomes *pending for `n`*, and the list of
//!   pending files is the sink's state in the checkpoint.
//! - **Commit** (`checkpoint complete(n)`): pending files of checkpoints
//!   `<= n` are renamed to their final names `part-<run>-<subtask>-<n>`
//!   (atomic; the directory is fsynced). A file already committed is skipped,
//!   so committing twice is harmless.
//! - **Restore**: the pending files recorded in the checkpoint are committed
//!   (they hold exactly the output up to the checkpoint), and every other
//!   in-progress file of that run and subtask (output after the checkpoint,
//!   which will be produced again) is deleted.
//!
//! Without checkpointing, closed files are committed at once and the last
//! one at the end of input.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_runtime::prelude::*;

/// Writes records as lines, formatted by a function.
pub struct FileSink<T, F> {
    dir: PathBuf,
    format: Arc<F>,
    rolling_size: u64,
    run: String,
    subtask: usize,
    part: u64,
    checkpointing: bool,
    current: Option<(BufWriter<File>, String, u64)>,
    /// Closed files waiting for the next checkpoint: (in-progress name, final name).
    closed: Vec<(String, String)>,
    /// Files pre-committed by a checkpoint, waiting for its completion.
    pending: Vec<PendingFile>,
    line: String,
    _t: std::marker::PhantomData<fn(&T)>,
}

/// A file pre-committed by checkpoint `checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingFile {
    checkpoint: u64,
    in_progress: String,
    final_name: String,
}

/// The sink's state in a checkpoint: one element per sink subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SinkState {
    run: String,
    subtask: usize,
    /// The next part number: restored, it continues, so part numbers of one
    /// subtask index grow across restores and sort in output order.
    next_part: u64,
    pending: Vec<PendingFile>,
}

const STATE: &str = "file-sink";

impl<T, F> Clone for FileSink<T, F> {
    fn clone(&self) -> Self {
        FileSink {
            dir: self.dir.clone(),
            format: self.format.clone(),
            rolling_size: self.rolling_size,
            run: String::new(),
            subtask: 0,
            part: 0,
            checkpointing: false,
            current: None,
            closed: Vec::new(),
            pending: Vec::new(),
            line: String::new(),
            _t: std::marker::PhantomData,
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl<T: Data, F: Fn(&T, &mut String) + Send + Sync + 'static> FileSink<T, F> {
    /// A sink writing into `dir` (created if missing), one line per record as
    /// `format` writes it into the buffer it is given (without the newline).
    /// Fails at once, naming the directory, if it cannot be created or written.
    pub fn new(dir: impl AsRef<Path>, format: F) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create output directory", &dir, e))?;
        let probe = dir.join(format!(".weir-probe-{}", std::process::id()));
        File::create(&probe).map_err(|e| Error::io("cannot write output directory", &dir, e))?;
        let _ = std::fs::remove_file(&probe);
        Ok(FileSink {
            dir,
            format: Arc::new(format),
            rolling_size: 128 << 20,
            run: String::new(),
            subtask: 0,
            part: 0,
            checkpointing: false,
            current: None,
            closed: Vec::new(),
            pending: Vec::new(),
            line: String::with_capacity(64),
            _t: std::marker::PhantomData,
        })
    }

    /// Starts a new part file after about `bytes` (default 128 MiB).
    pub fn with_rolling_size(mut self, bytes: u64) -> Self {
        self.rolling_size = bytes.max(1);
        self
    }

    /// Closes the current file (flush, fsync); it waits hidden until committed.
    fn close_current(&mut self) -> Result<()> {
        if let Some((w, tmp, _)) = self.current.take() {
            let path = self.dir.join(&tmp);
            let file = w
                .into_inner()
                .map_err(|e| Error::io("cannot write output file", &path, e.into_error()))?;
            file.sync_all()
                .map_err(|e| Error::io("cannot sync output file", &path, e))?;
            let final_name = format!("part-{}-{}-{}", self.run, self.subtask, self.part);
            self.part += 1;
            self.closed.push((tmp, final_name));
        }
        Ok(())
    }

    /// Renames an in-progress file to its final name; a file already
    /// committed is left alone. Missing both is lost output: an error.
    fn commit(&self, in_progress: &str, final_name: &str) -> Result<()> {
        weir_runtime::failpoint::hit("sink-commit")?;
        let src = self.dir.join(in_progress);
        let dst = self.dir.join(final_name);
        match std::fs::rename(&src, &dst) {
            Ok(()) => Ok(()),
            Err(_) if dst.exists() => Ok(()),
            Err(e) => Err(Error::io(
                "cannot commit output file (pending file missing)",
                &src,
                e,
            )),
        }
    }

    fn commit_closed_now(&mut self) -> Result<()> {
        for (tmp, fin) in std::mem::take(&mut self.closed) {
            self.commit(&tmp, &fin)?;
        }
        sync_dir(&self.dir);
        Ok(())
    }
}

impl<T: Data, F: Fn(&T, &mut String) + Send + Sync + 'static> SinkFunction<T> for FileSink<T, F> {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        self.run = ctx.run_id.clone();
        self.subtask = ctx.subtask;
        self.checkpointing = ctx.checkpointing;
        Ok(())
    }

    fn invoke(&mut self, batch: Vec<T>) -> Result<()> {
        if self.current.is_none() {
            let tmp = format!(
                ".part-{}-{}-{}.inprogress",
                self.run, self.subtask, self.part
            );
            let path = self.dir.join(&tmp);
            let f = File::create(&path)
                .map_err(|e| Error::io("cannot create output file", &path, e))?;
            self.current = Some((BufWriter::with_capacity(1 << 16, f), tmp, 0));
        }
        let Some((w, tmp, written)) = self.current.as_mut() else {
            return Ok(());
        };
        for r in &batch {
            self.line.clear();
            (self.format)(r, &mut self.line);
            self.line.push('\n');
            w.write_all(self.line.as_bytes()).map_err(|e| {
                Error::io("cannot write output file", self.dir.join(tmp.as_str()), e)
            })?;
            *written += self.line.len() as u64;
        }
        if *written >= self.rolling_size {
            self.close_current()?;
            if !self.checkpointing {
                self.commit_closed_now()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.close_current()?;
        if !self.checkpointing {
            self.commit_closed_now()?;
        }
        Ok(())
    }

    fn snapshot_state(&mut self, checkpoint_id: u64, state: &mut OperatorStateStore) -> Result<()> {
        self.close_current()?;
        for (in_progress, final_name) in std::mem::take(&mut self.closed) {
            self.pending.push(PendingFile {
                checkpoint: checkpoint_id,
                in_progress,
                final_name,
            });
        }
        state.update_list(
            STATE,
            &[SinkState {
                run: self.run.clone(),
                subtask: self.subtask,
                next_part: self.part,
                pending: self.pending.clone(),
            }],
        )
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let (now, later): (Vec<PendingFile>, Vec<PendingFile>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.checkpoint <= checkpoint_id);
        self.pending = later;
        for p in &now {
            self.commit(&p.in_progress, &p.final_name)?;
        }
        if !now.is_empty() {
            sync_dir(&self.dir);
        }
        Ok(())
    }

    fn restore_state(&mut self, state: &OperatorStateStore) -> Result<()> {
        for old in state.get_list::<SinkState>(STATE)? {
            self.part = self.part.max(old.next_part);
            for p in &old.pending {
                self.commit(&p.in_progress, &p.final_name)?;
            }
            // Output written after the checkpoint will be produced again: drop it,
            // also what later runs of the job (high availability: other
            // generations, same job id) wrote for this subtask and never committed.
            let keep: Vec<&str> = old.pending.iter().map(|p| p.in_progress.as_str()).collect();
            let entries = std::fs::read_dir(&self.dir)
                .map_err(|e| Error::io("cannot read output directory", &self.dir, e))?;
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_in_progress_of(&name, &old.run, old.subtask) && !keep.contains(&name.as_str())
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        sync_dir(&self.dir);
        Ok(())
    }
}

/// Whether `name` is an in-progress file (`.part-<run>-<subtask>-<n>.inprogress`)
/// of subtask `subtask` of a run of the job `run` belongs to: the same first
/// 8 characters (the job id's), any generation suffix.
fn is_in_progress_of(name: &str, run: &str, subtask: usize) -> bool {
    let Some(rest) = name
        .strip_prefix(".part-")
        .and_then(|r| r.strip_suffix(".inprogress"))
    else {
        return false;
    };
    let mut fields = rest.rsplitn(3, '-');
    let (Some(n), Some(s), Some(r)) = (fields.next(), fields.next(), fields.next()) else {
        return false;
    };
    let job: String = run.chars().take(8).collect();
    n.parse::<u64>().is_ok()
        && s.parse::<usize>().ok() == Some(subtask)
        && (r == run
            || r == job
            || r.strip_prefix(job.as_str()).is_some_and(|g| {
                g.strip_prefix('g')
                    .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            }))
}

#[cfg(test)]
mod tests {
    use super::is_in_progress_of;

    #[test]
    fn in_progress_files_of_every_generation_of_the_job_are_recognised() {
        assert!(is_in_progress_of(
            ".part-abcdef01-0-3.inprogress",
            "abcdef01",
            0
        ));
        assert!(is_in_progress_of(
            ".part-abcdef01g7-0-3.inprogress",
            "abcdef01g2",
            0
        ));
        assert!(is_in_progress_of(
            ".part-abcdef01g12-1-0.inprogress",
            "abcdef01",
            1
        ));
        assert!(!is_in_progress_of(
            ".part-abcdef01g7-1-3.inprogress",
            "abcdef01",
            0
        ));
        assert!(!is_in_progress_of(
            ".part-abcdef02-0-3.inprogress",
            "abcdef01",
            0
        ));
        assert!(!is_in_progress_of(
            ".part-abcdef01gx-0-3.inprogress",
            "abcdef01",
            0
        ));
        assert!(!is_in_progress_of("part-abcdef01-0-3", "abcdef01", 0));
    }
}
