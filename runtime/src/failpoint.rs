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
//!
//! Arm points with [`arm`] in-process, or for a whole process with the
//! environment variable `WEIR_FAILPOINTS=name=action[@n][,name=action...]`
//! where action is `error` (the operation returns an error), `panic`, or
//! `exit` (the process exits at once with status 86, like a crash: nothing is
//! flushed or cleaned up), and `@n` fires only on the n-th time the point is
//! passed (default: every time). An unarmed point costs one relaxed atomic load.

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

fn points() -> &'static Mutex<HashMap<String, Armed>> {
    static P: OnceLock<Mutex<HashMap<String, Armed>>> = OnceLock::new();
    P.get_or_init(|| {
        let mut m = HashMap::new();
        if let Ok(spec) = std::env::var(ENV) {
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                let (name, action) = item.split_once('=').unwrap_or((item, "error"));
                let (action, nth) = match action.split_once('@') {
                    Some((a, n)) => (a, n.parse().unwrap_or(0)),
                    None => (action, 0),
                };
                let action = match action {
                    "panic" => Action::Panic,
                    "exit" => Action::Exit,
                    _ => Action::Error,
                };
                m.insert(name.to_string(), (action, nth, 0));
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
