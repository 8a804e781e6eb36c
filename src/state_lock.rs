//! One agent per state dir: an exclusive `flock` on `<state_dir>/agent.lock`,
//! held for the agent's whole life.
//!
//! The socket check (`api::server::refuse_if_answered`) sees an agent that
//! already serves; it cannot see one that is still recovering, nor one
//! configured with another socket over the same state dir, libvirt and
//! address pool. Two such agents would both sweep, recover and hand out
//! addresses. The kernel's lock closes both gaps and is released when the
//! process dies, however it dies: no stale lock to clean up.

use nix::fcntl::{Flock, FlockArg};
use std::{
    fs::File,
    io::{Read, Seek, Write},
    path::{Path, PathBuf},
};

/// The lock file's name in the state dir.
pub const LOCK_FILE: &str = "agent.lock";

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    /// Another process holds the lock.
    #[error(
        "another agent is already running on state dir {dir} (pid {holder}, holding {LOCK_FILE}); \
         stop it first (this one touched nothing)"
    )]
    Held {
        /// The state dir.
        dir: String,
        /// The holder's pid as it wrote it, or "unknown".
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock without waiting, then records this process's pid in
    /// the file for the next agent's message.
    pub fn acquire(state_dir: &Path) -> Result<Self, StateLockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| StateLockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid: String = pid.trim().chars().take(12).collect();
                return Err(StateLockError::Held {
                    dir: state_dir.display().to_string(),
                    holder: if pid.is_empty() {
                        "unknown".into()
                    } else {
                        pid
                    },
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_state_dir_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("already running") && shown.contains(&std::process::id().to_string()),
            "{shown}"
        );
        drop(first);
        StateLock::acquire(dir.path()).expect("free again once released");
    }
}
