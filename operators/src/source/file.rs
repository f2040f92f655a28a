//! [`FileSource`]: the lines of a text file, or of every file under a directory.
//!
//! The input is cut into **splits**: byte ranges `[start, end)` of a file. A
//! line belongs to the split in which it *starts* (a split that starts inside
//! a line skips to the next line; its last line may run past `end`), so every
//! line is read exactly once whatever the split size. Splits are dealt
//! round-robin to the subtasks; a split's position is the byte offset of the
//! next line to read, so `(file, offset)` is exactly where a restored source
//! resumes. Positions are kept in operator state (`file-splits`).
//!
//! Hidden files (names starting with `.`, such as a file sink's in-progress
//! files) are skipped. Bytes that are not UTF-8 are replaced with U+FFFD (a
//! warning is logged once per subtask) rather than failing the job.
//! Reads are ordinary blocking reads of at most one batch of lines at a time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_runtime::prelude::*;

/// A byte range of one file and the offset of the next line to read in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSplit {
    /// The file.
    pub path: PathBuf,
    /// First byte of the range.
    pub start: u64,
    /// One past the last byte of the range.
    pub end: u64,
    /// Where the next line starts (`start` until the first line is read).
    pub offset: u64,
}

/// Reads lines of text files in parallel.
pub struct FileSource {
    root: PathBuf,
    files: Arc<Vec<(PathBuf, u64)>>,
    split_size: Option<u64>,
    splits: VecDeque<FileSplit>,
    reader: Option<BufReader<File>>,
    buf: Vec<u8>,
    warned_utf8: bool,
}

impl Clone for FileSource {
    fn clone(&self) -> Self {
        FileSource {
            root: self.root.clone(),
            files: self.files.clone(),
            split_size: self.split_size,
            splits: VecDeque::new(),
            reader: None,
            buf: Vec::new(),
            warned_utf8: false,
        }
    }
}

const SPLITS: &str = "file-splits";
const MIN_SPLIT: u64 = 1 << 20;

impl FileSource {
    /// A source over `path`: a file, or a directory whose files (recursively,
    /// in name order) are read. Fails at once, naming the path, if the path or
    /// any file under it cannot be read.
    pub fn new(path: impl AsRef<Path>) -> Result<Self> {
        let root = path.as_ref().to_path_buf();
        let meta =
            std::fs::metadata(&root).map_err(|e| Error::io("cannot read input", &root, e))?;
        let mut files = Vec::new();
        if meta.is_dir() {
            list_files(&root, &mut files)?;
        } else {
            File::open(&root).map_err(|e| Error::io("cannot read input", &root, e))?;
            files.push((root.clone(), meta.len()));
        }
        files.sort();
        Ok(FileSource {
            root,
            files: Arc::new(files),
            split_size: None,
            splits: VecDeque::new(),
            reader: None,
            buf: Vec::with_capacity(256),
            warned_utf8: false,
        })
    }

    /// Cuts files into splits of about `bytes` (default: the total size divided
    /// by the parallelism, at least 1 MiB).
    pub fn with_split_size(mut self, bytes: u64) -> Self {
        self.split_size = Some(bytes.max(1));
        self
    }

    /// The files that will be read, with their sizes.
    pub fn files(&self) -> &[(PathBuf, u64)] {
        &self.files
    }

    /// The splits for `parallelism` subtasks, in dealing order.
    pub fn splits(&self, parallelism: usize) -> Vec<FileSplit> {
        let total: u64 = self.files.iter().map(|f| f.1).sum();
        let size = self
            .split_size
            .unwrap_or_else(|| total.div_ceil(parallelism.max(1) as u64).max(MIN_SPLIT));
        let mut out = Vec::new();
        for (path, len) in self.files.iter() {
            let mut start = 0;
            while start < *len {
                let end = (start + size).min(*len);
                out.push(FileSplit {
                    path: path.clone(),
                    start,
                    end,
                    offset: start,
                });
                start = end;
            }
        }
        out
    }

    fn open_split(&mut self) -> Result<bool> {
        let Some(split) = self.splits.front_mut() else {
            return Ok(false);
        };
        let file =
            File::open(&split.path).map_err(|e| Error::io("cannot read input", &split.path, e))?;
        let mut r = BufReader::with_capacity(1 << 18, file);
        if split.offset == split.start && split.start > 0 {
            // Mid-file split: the line that contains byte `start - 1` belongs to the previous split.
            r.seek(SeekFrom::Start(split.start - 1))
                .map_err(|e| Error::io("cannot read input", &split.path, e))?;
            self.buf.clear();
            let n = r
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io("cannot read input", &split.path, e))?;
            split.offset = split.start - 1 + n as u64;
        } else {
            r.seek(SeekFrom::Start(split.offset))
                .map_err(|e| Error::io("cannot read input", &split.path, e))?;
        }
        self.reader = Some(r);
        Ok(true)
    }
}

fn list_files(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io("cannot read input directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("cannot read input directory", dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta =
            std::fs::metadata(&path).map_err(|e| Error::io("cannot read input", &path, e))?;
        if meta.is_dir() {
            list_files(&path, out)?;
        } else if meta.is_file() {
            File::open(&path).map_err(|e| Error::io("cannot read input", &path, e))?;
            out.push((path, meta.len()));
        }
    }
    Ok(())
}

impl SourceFunction<String> for FileSource {
    fn open(&mut self, ctx: &SourceContext<'_>) -> Result<()> {
        let (s, p) = (ctx.runtime.subtask, ctx.runtime.parallelism);
        self.splits = if ctx.restored {
            ctx.state.get_list::<FileSplit>(SPLITS)?.into()
        } else {
            self.splits(p)
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % p == s)
                .map(|(_, sp)| sp)
                .collect()
        };
        Ok(())
    }

    fn poll_next(&mut self, out: &mut Vec<String>, max: usize) -> Result<SourceStatus> {
        while out.len() < max {
            if self.reader.is_none() && !self.open_split()? {
                return Ok(SourceStatus::Finished);
            }
            let (Some(r), Some(split)) = (self.reader.as_mut(), self.splits.front_mut()) else {
                return Ok(SourceStatus::Finished);
            };
            if split.offset >= split.end {
                self.reader = None;
                self.splits.pop_front();
                continue;
            }
            self.buf.clear();
            let n = r
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io("cannot read input", &split.path, e))?;
            if n == 0 {
                self.reader = None;
                self.splits.pop_front();
                continue;
            }
            split.offset += n as u64;
            let mut line: &[u8] = &self.buf;
            if let Some(l) = line.strip_suffix(b"\n") {
                line = l.strip_suffix(b"\r").unwrap_or(l);
            }
            match std::str::from_utf8(line) {
                Ok(s) => out.push(s.to_string()),
                Err(_) => {
                    if !self.warned_utf8 {
                        tracing::warn!(file = %split.path.display(), offset = split.offset, "input is not valid UTF-8; invalid bytes are replaced by U+FFFD");
                        self.warned_utf8 = true;
                    }
                    out.push(String::from_utf8_lossy(line).into_owned());
                }
            }
        }
        Ok(if self.splits.is_empty() {
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
        let splits: Vec<FileSplit> = self.splits.iter().cloned().collect();
        state.update_list(SPLITS, &splits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_runtime::operator::RuntimeContext;

    fn ctx(subtask: usize, parallelism: usize) -> RuntimeContext {
        RuntimeContext {
            job_id: "0".repeat(32),
            run_id: "0".repeat(8),
            operator: "files".into(),
            subtask,
            parallelism,
            max_parallelism: 128,
            checkpointing: false,
            state_backend: Default::default(),
            auto_watermark_interval: std::time::Duration::from_millis(200),
            num_records_in_errors: Default::default(),
        }
    }

    fn drain(src: &mut FileSource, max: usize) -> Vec<String> {
        let mut all = Vec::new();
        loop {
            let mut out = Vec::new();
            let st = src.poll_next(&mut out, max).unwrap();
            all.extend(out);
            if st == SourceStatus::Finished {
                return all;
            }
        }
    }

    fn write_corpus(dir: &Path) -> Vec<String> {
        let mut lines = Vec::new();
        for f in 0..3 {
            let mut text = String::new();
            for i in 0..(200 + f * 37) {
                let l = format!("file {f} line {i} {}", "x".repeat(i % 23));
                text.push_str(&l);
                text.push_str(if i % 5 == 0 { "\r\n" } else { "\n" });
                lines.push(l);
            }
            text.push_str("no newline at end");
            lines.push("no newline at end".into());
            std::fs::write(dir.join(format!("f{f}.txt")), text).unwrap();
        }
        std::fs::write(dir.join(".hidden.inprogress"), "ignored\n").unwrap();
        lines
    }

    #[test]
    fn every_line_once_for_any_split_size_and_parallelism() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = write_corpus(dir.path());
        expected.sort();
        for split in [1, 7, 64, 1000, 1 << 20] {
            for p in [1, 2, 3] {
                let proto = FileSource::new(dir.path()).unwrap().with_split_size(split);
                let mut got = Vec::new();
                for s in 0..p {
                    let mut src = proto.clone();
                    let c = ctx(s, p);
                    let st = OperatorStateStore::new();
                    src.open(&SourceContext {
                        runtime: &c,
                        state: &st,
                        restored: false,
                    })
                    .unwrap();
                    got.extend(drain(&mut src, 17));
                }
                got.sort();
                assert_eq!(got, expected, "split {split} parallelism {p}");
            }
        }
    }

    #[test]
    fn resumes_exactly_at_the_snapshot_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected = write_corpus(dir.path());
        expected.sort();
        let proto = FileSource::new(dir.path()).unwrap().with_split_size(500);
        let c = ctx(0, 1);
        let empty = OperatorStateStore::new();
        let mut src = proto.clone();
        src.open(&SourceContext {
            runtime: &c,
            state: &empty,
            restored: false,
        })
        .unwrap();
        let mut got = Vec::new();
        for _ in 0..9 {
            let mut out = Vec::new();
            src.poll_next(&mut out, 31).unwrap();
            got.extend(out);
        }
        let mut state = OperatorStateStore::new();
        src.snapshot_state(1, &mut state).unwrap();
        drop(src);
        let mut restored = proto.clone();
        restored
            .open(&SourceContext {
                runtime: &c,
                state: &state,
                restored: true,
            })
            .unwrap();
        got.extend(drain(&mut restored, 31));
        got.sort();
        assert_eq!(got, expected);
    }

    #[test]
    fn missing_input_is_a_clear_error() {
        let err = FileSource::new("/definitely/not/here.txt")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cannot read input '/definitely/not/here.txt'"),
            "{err}"
        );
    }
}
