//! The lock of a running job, and the sweep of dead jobs' leftovers.
//!
//! Invariant kept here: **nothing of a running job is ever swept.** A job
//! writes `<job-dir>/.running` when it starts and deletes it when it ends
//! (finished, cancelled or failed: see `JobState::clean_up_after_failure`).
//! A crash (SIGKILL, OOM kill, power loss) leaves the lock, and with it
//! whatever the crash interrupted: an incomplete `chk-<n>`, a temporary
//! file, shared files no complete checkpoint references. Those are what
//! [`super::storage::orphans`] finds; this module decides *whose* directory
//! may be swept.
//!
//! The lock names its owner ([`LockOwner`]): the process id, and the
//! namespace that process id means something in: the host name, the
//! kernel's boot id and the process-id namespace. Whether the owner is alive
//! can only be known from the same namespace (a pid on another machine, or
//! in another container, says nothing here), so [`judge`] answers:
//!
//! | lock | owner | state |
//! |------|-------|-------|
//! | none | | [`LockState::Unlocked`]: the job ended, or never started |
//! | present | same namespace, pid alive | [`LockState::Running`] |
//! | present | same namespace, pid gone | [`LockState::Dead`]: it crashed |
//! | present | another namespace | [`LockState::Elsewhere`]: unknown |
//! | present, a bare pid (weir before the namespace was recorded) | pid alive / gone on this machine | `Running` / `Dead` |
//!
//! (A dead job's pid reused by another process reads as `Running`: the
//! mistake goes the safe way.)
//!
//! **When a job starts**, `storage::sweep_dead_jobs` walks the other job
//! directories under the same base directory, on a background thread (the
//! job does not wait for it), and sweeps the ones whose lock is `Dead` with
//! a recorded namespace: their orphans go, then the stale lock (their
//! complete checkpoints stay, to restore from). A directory without a lock
//! is not walked: its job cleaned up at its end. `Elsewhere` is never
//! touched: with Kubernetes, each pod has its own namespace, so the
//! leftovers of a crashed pod's job are collected by `weir checkpoints gc`
//! (which reports such directories and takes `--force` when the job is known
//! to be stopped) or by the next run of a job in the same pod.

use std::path::Path;

use super::store;

/// The lock file a running job keeps in its directory.
pub const LOCK_FILE: &str = ".running";

/// Who holds a job directory's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwner {
    /// Its process id.
    pub pid: u32,
    /// The host name (empty in a lock of an older weir).
    pub host: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// The process-id namespace (`/proc/self/ns/pid`).
    pub pid_ns: String,
}

impl LockOwner {
    /// This process, in its namespace.
    pub fn this_process() -> LockOwner {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let pid_ns = std::fs::read_link("/proc/self/ns/pid")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        LockOwner {
            pid: std::process::id(),
            host: read("/proc/sys/kernel/hostname"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            pid_ns,
        }
    }

    /// The lock file's text: the pid on the first line (what older weir
    /// versions wrote, and read), then `key=value` lines.
    pub fn encode(&self) -> String {
        format!(
            "{}\nhost={}\nboot_id={}\npid_ns={}\n",
            self.pid, self.host, self.boot_id, self.pid_ns
        )
    }

    /// Reads a lock file's text; `None` when it names no process.
    pub fn parse(text: &str) -> Option<LockOwner> {
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let mut owner = LockOwner {
            pid,
            host: String::new(),
            boot_id: String::new(),
            pid_ns: String::new(),
        };
        for l in lines {
            match l.split_once('=') {
                Some(("host", v)) => owner.host = v.to_string(),
                Some(("boot_id", v)) => owner.boot_id = v.to_string(),
                Some(("pid_ns", v)) => owner.pid_ns = v.to_string(),
                _ => {}
            }
        }
        Some(owner)
    }

    /// Whether its namespace was recorded (weir before that wrote the pid only).
    pub fn has_namespace(&self) -> bool {
        !self.boot_id.is_empty() && !self.pid_ns.is_empty()
    }

    fn same_namespace(&self, other: &LockOwner) -> bool {
        self.has_namespace()
            && self.host == other.host
            && self.boot_id == other.boot_id
            && self.pid_ns == other.pid_ns
    }
}

/// What a job directory's lock says (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockState {
    /// No lock: the job ended (or never started).
    Unlocked,
    /// Its owner runs.
    Running(LockOwner),
    /// Its owner is gone: the job crashed.
    Dead(LockOwner),
    /// Its owner is in another machine's or container's namespace: unknown.
    Elsewhere(LockOwner),
}

/// The state of a lock read as `lock` (`None`: no lock file, or unreadable
/// text), judged from `me`'s namespace, `alive` telling whether a process id
/// runs in it.
pub fn judge(lock: Option<LockOwner>, me: &LockOwner, alive: impl Fn(u32) -> bool) -> LockState {
    let Some(owner) = lock else {
        return LockState::Unlocked;
    };
    let here = if owner.has_namespace() {
        owner.same_namespace(me)
    } else {
        true // a bare pid: as older weir versions judged it, on this machine
    };
    match (here, alive(owner.pid)) {
        (false, _) => LockState::Elsewhere(owner),
        (true, true) => LockState::Running(owner),
        (true, false) => LockState::Dead(owner),
    }
}

/// The state of `job_dir`'s lock, judged from `me`'s namespace
/// ([`LockOwner::this_process`], read once by a caller that looks at many
/// directories).
pub fn lock_state(job_dir: &Path, me: &LockOwner) -> LockState {
    let text = store::resolve(&job_dir.join(LOCK_FILE))
        .and_then(|(st, key)| st.get(&key))
        .ok();
    let lock = text.map(|bytes| {
        LockOwner::parse(&String::from_utf8_lossy(&bytes)).unwrap_or(LockOwner {
            // Unreadable: some process holds it; nothing says it is gone.
            pid: 0,
            host: "?".into(),
            boot_id: "?".into(),
            pid_ns: "?".into(),
        })
    });
    judge(lock, me, |pid| {
        pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32, host: &str, boot: &str, ns: &str) -> LockOwner {
        LockOwner {
            pid,
            host: host.into(),
            boot_id: boot.into(),
            pid_ns: ns.into(),
        }
    }

    #[test]
    fn judged_by_namespace_then_pid() {
        let me = owner(1, "a", "b1", "pid:[1]");
        let alive = |pid: u32| pid == 10;
        assert_eq!(judge(None, &me, alive), LockState::Unlocked);
        let here = owner(10, "a", "b1", "pid:[1]");
        assert_eq!(
            judge(Some(here.clone()), &me, alive),
            LockState::Running(here)
        );
        let crashed = owner(11, "a", "b1", "pid:[1]");
        assert_eq!(
            judge(Some(crashed.clone()), &me, alive),
            LockState::Dead(crashed)
        );
        // Another boot, container or machine: its pid means nothing here.
        for other in [
            owner(11, "a", "b2", "pid:[1]"),
            owner(11, "a", "b1", "pid:[2]"),
            owner(11, "pod-0", "b1", "pid:[1]"),
        ] {
            assert_eq!(
                judge(Some(other.clone()), &me, alive),
                LockState::Elsewhere(other)
            );
        }
        // An older weir's bare pid: judged on this machine.
        let bare = LockOwner::parse("11").unwrap();
        assert!(!bare.has_namespace());
        assert_eq!(judge(Some(bare.clone()), &me, alive), LockState::Dead(bare));
    }

    #[test]
    fn the_lock_text_round_trips_and_starts_with_the_pid() {
        let me = LockOwner::this_process();
        assert!(me.has_namespace(), "{me:?}");
        let text = me.encode();
        assert_eq!(text.lines().next(), Some(me.pid.to_string().as_str()));
        assert_eq!(LockOwner::parse(&text), Some(me.clone()));
        assert_eq!(
            judge(Some(me.clone()), &me, |p| p == me.pid),
            LockState::Running(me)
        );
        assert_eq!(LockOwner::parse("not a pid"), None);
    }
}
