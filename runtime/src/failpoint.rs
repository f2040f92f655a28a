//! Named failure points for tests: code calls [`hit`] at interesting moments
//! and a test arms a point to make it fail there. The points, in the order
//! a checkpoint passes them:
//!
//! | point | where |
//! |---|---|
//! | `during-alignment` | a subtask has blocked an input at an aligned barrier and waits for the others |
//! | `sync-snapshot` | a subtask's synchronous snapshot |
//! | `during-upload` | a subtask's asynchronous upload of its state |
//! | `before-ack` | after the upload, before the acknowledgement |
//! | `before-metadata-write` | the coordinator, every acknowledgement in |
//! | `after-metadata-write` | `_metadata` written, before its rename (the checkpoint is not complete) |
//! | `before-notify-complete` | the coordinator, checkpoint complete, before the subtasks are told |
//! | `sink-commit` | the file sink renaming a pending file (two-phase commit) |
//! | `rocksdb-upload-file` | the RocksDB backend, each file it uploads |
//! | `delete-shared-file` | deleting a shared file no retained checkpoint references |
//! | `discard-after-metadata` | discarding a checkpoint directory, `_metadata` already deleted |
//! | `ha-after-leader-write` | high availability: a JobManager wrote its leader entry, before it restores anything |
//! | `ha-before-commit` | high availability: `_metadata` written, before the checkpoint's log entry (not complete yet) |
//!
//! Arm points with [`arm`] in-process, or for a whole process with the
//! environment variable `WEIR_FAILPOINTS=name=action[@n][,name=action...]`
//! where action is `error` (the operation returns an error), `panic`, or
//! `exit` (the process exits at once with status 86, like a crash: nothing is
//! flushed or cleaned up), and `@n` fires only on the n-th time the point is
//! passed (default: every time). A bad value (unknown point or action, an
//! `@n` that is not a positive integer) is refused when the configuration
//! is loaded, with the item and what was expected ([`parse_spec`]). An
//! unarmed point costs one relaxed atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// The environment variable that arms failure points for a process.
pub const ENV: &str = "WEIR_FAILPOINTS";

/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Return an error.
    Error,
    /// Panic.
    Panic,
    /// Exit the process with status 86.
    Exit,
}

static ANY: AtomicBool = AtomicBool::new(false);

/// An armed point: its action, the hit that fires it (0: every hit), hits so far.
type Armed = (Action, u64, u64);

/// Every point the runtime and the operators pass (the table above, plus
/// the RocksDB file upload and the two deletions of checkpoint files).
pub const POINTS: &[&str] = &[
    "during-alignment",
    "sync-snapshot",
    "during-upload",
    "before-ack",
    "before-metadata-write",
    "after-metadata-write",
    "before-notify-complete",
    "sink-commit",
    "rocksdb-upload-file",
    "delete-shared-file",
    "discard-after-metadata",
    "ha-after-leader-write",
    "ha-before-commit",
];

/// Parses a `WEIR_FAILPOINTS` value: `name=action[@n]` items separated by
/// commas (a bare `name` means `name=error`); `name` one of [`POINTS`],
/// `action` one of `error`, `panic`, `exit`, `n` a positive integer.
/// Anything else is an error naming the item and what was expected, so a
/// typo never silently arms nothing.
pub fn parse_spec(spec: &str) -> std::result::Result<Vec<(String, Action, u64)>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item.split_once('=').unwrap_or((item, "error"));
        if !POINTS.contains(&name) {
            return Err(format!(
                "unknown failure point '{name}' in '{item}' (points: {})",
                POINTS.join(", ")
            ));
        }
        let (action, nth) = match action.split_once('@') {
            Some((a, n)) => match n.parse::<u64>() {
                Ok(n) if n > 0 => (a, n),
                _ => {
                    return Err(format!(
                        "bad hit count '@{n}' in '{item}': a positive integer, e.g. @3"
                    ))
                }
            },
            None => (action, 0),
        };
        let action = match action {
            "error" => Action::Error,
            "panic" => Action::Panic,
            "exit" => Action::Exit,
            other => {
                return Err(format!(
                    "unknown action '{other}' in '{item}' (actions: error, panic, exit)"
                ))
            }
        };
        out.push((name.to_string(), action, nth));
    }
    Ok(out)
}

fn points() -> &'static Mutex<HashMap<String, Armed>> {
    static P: OnceLock<Mutex<HashMap<String, Armed>>> = OnceLock::new();
    P.get_or_init(|| {
        let mut m = HashMap::new();
        // A bad value is refused when the configuration is loaded
        // (`Conf::load`); here it arms nothing.
        if let Ok(Ok(points)) = std::env::var(ENV).map(|spec| parse_spec(&spec)) {
            for (name, action, nth) in points {
                m.insert(name, (action, nth, 0));
            }
        }
        if !m.is_empty() {
            ANY.store(true, Ordering::Relaxed);
        }
        Mutex::new(m)
    })
}

/// Arms `name` in this process.
pub fn arm(name: &str, action: Action) {
    points()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), (action, 0, 0));
    ANY.store(true, Ordering::Relaxed);
}

/// Disarms `name`.
pub fn disarm(name: &str) {
    points()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
}

/// What an armed point with the `error` action returns; it converts into
/// `Error::Injected` (so `?` works in the runtime), and this module depends
/// on no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected(pub String);

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failure injected at '{}'", self.0)
    }
}

impl std::error::Error for Injected {}

/// Passes through the point `name`: fails as armed, else returns `Ok`.
#[inline]
pub fn hit(name: &str) -> Result<(), Injected> {
    let points = points();
    if !ANY.load(Ordering::Relaxed) {
        return Ok(());
    }
    let action = {
        let mut p = points.lock().unwrap_or_else(|p| p.into_inner());
        match p.get_mut(name) {
            Some((action, nth, hits)) => {
                *hits += 1;
                (*nth == 0 || *hits == *nth).then_some(*action)
            }
            None => None,
        }
    };
    match action {
        None => Ok(()),
        Some(Action::Error) => Err(Injected(name.to_string())),
        Some(Action::Panic) => panic!("failure injected at '{name}'"),
        Some(Action::Exit) => {
            eprintln!("failure injected at '{name}': exiting");
            std::process::exit(86)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_specs_parse_and_bad_ones_name_the_problem() {
        assert_eq!(
            parse_spec("sync-snapshot=exit@3, during-upload,sink-commit=panic").unwrap(),
            vec![
                ("sync-snapshot".to_string(), Action::Exit, 3),
                ("during-upload".to_string(), Action::Error, 0),
                ("sink-commit".to_string(), Action::Panic, 0),
            ]
        );
        assert_eq!(parse_spec("").unwrap(), vec![]);
        let err = parse_spec("sync-snapshot=exitt").unwrap_err();
        assert!(err.contains("unknown action 'exitt'"), "{err}");
        let err = parse_spec("sync-snapshot=exit@x").unwrap_err();
        assert!(err.contains("bad hit count '@x'"), "{err}");
        let err = parse_spec("sync-snapshot=exit@0").unwrap_err();
        assert!(err.contains("bad hit count '@0'"), "{err}");
        let err = parse_spec("sync-snapshots=exit").unwrap_err();
        assert!(
            err.contains("unknown failure point 'sync-snapshots'")
                && err.contains("sync-snapshot,"),
            "{err}"
        );
    }
}
