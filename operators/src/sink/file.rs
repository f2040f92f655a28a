//! [`FileSink`]: records as lines of text in part files under a directory.
//!
//! Each sink subtask writes its own part files. A file being written is
//! hidden: `.part-<run>-<subtask>-<n>.inprogress`; when it is finished (it
//! reached the rolling size, or the input ended) it is flushed, fsynced and
//! renamed to `part-<run>-<subtask>-<n>`. `<run>` is the first 8 characters of
//! the job id, so runs writing to the same directory never clash. Readers
//! (and [`crate::source::FileSource`]) skip the hidden files.
//!
//! Exactly-once (two-phase commit with checkpoints) comes with checkpointing;
//! until then, a job that fails leaves its in-progress files hidden and never
//! renames them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use weir_runtime::prelude::*;

/// Writes records as lines, formatted by a function.
pub struct FileSink<T, F> {
    dir: PathBuf,
    format: Arc<F>,
    rolling_size: u64,
    run: String,
    subtask: usize,
    part: u64,
    current: Option<(BufWriter<File>, PathBuf, u64)>,
    line: String,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<T, F> Clone for FileSink<T, F> {
    fn clone(&self) -> Self {
        FileSink {
            dir: self.dir.clone(),
            format: self.format.clone(),
            rolling_size: self.rolling_size,
            run: String::new(),
            subtask: 0,
            part: 0,
            current: None,
            line: String::new(),
            _t: std::marker::PhantomData,
        }
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
            current: None,
            line: String::with_capacity(64),
            _t: std::marker::PhantomData,
        })
    }

    /// Starts a new part file after about `bytes` (default 128 MiB).
    pub fn with_rolling_size(mut self, bytes: u64) -> Self {
        self.rolling_size = bytes.max(1);
        self
    }

    fn final_name(&self, part: u64) -> PathBuf {
        self.dir
            .join(format!("part-{}-{}-{}", self.run, self.subtask, part))
    }

    fn roll(&mut self) -> Result<()> {
        if let Some((w, tmp, _)) = self.current.take() {
            let file = w
                .into_inner()
                .map_err(|e| Error::io("cannot write output file", &tmp, e.into_error()))?;
            file.sync_all()
                .map_err(|e| Error::io("cannot sync output file", &tmp, e))?;
            let dst = self.final_name(self.part);
            std::fs::rename(&tmp, &dst)
                .map_err(|e| Error::io("cannot commit output file", &dst, e))?;
            self.part += 1;
        }
        Ok(())
    }
}

impl<T: Data, F: Fn(&T, &mut String) + Send + Sync + 'static> SinkFunction<T> for FileSink<T, F> {
    fn open(&mut self, ctx: &RuntimeContext) -> Result<()> {
        self.run = ctx.job_id.chars().take(8).collect();
        self.subtask = ctx.subtask;
        Ok(())
    }

    fn invoke(&mut self, batch: Vec<T>) -> Result<()> {
        if self.current.is_none() {
            let tmp = self.dir.join(format!(
                ".part-{}-{}-{}.inprogress",
                self.run, self.subtask, self.part
            ));
            let f =
                File::create(&tmp).map_err(|e| Error::io("cannot create output file", &tmp, e))?;
            self.current = Some((BufWriter::with_capacity(1 << 16, f), tmp, 0));
        }
        let Some((w, tmp, written)) = self.current.as_mut() else {
            return Ok(());
        };
        for r in &batch {
            self.line.clear();
            (self.format)(r, &mut self.line);
            self.line.push('\n');
            w.write_all(self.line.as_bytes())
                .map_err(|e| Error::io("cannot write output file", tmp.as_path(), e))?;
            *written += self.line.len() as u64;
        }
        if *written >= self.rolling_size {
            self.roll()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.roll()
    }
}
