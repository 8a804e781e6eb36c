//! The lifecycle's blocking work (libvirt calls, filesystems, quotas,
//! certificates, cgroups, and the processes these run) on threads of its
//! own, [`WORK_NICENESS`] nice levels below the agent's API threads.
//!
//! Why: during a storm of creates the lifecycle's threads and their
//! `btrfs`/`nft` processes are runnable by the dozen. At one priority with
//! the two threads that serve the API they took the CPU from the reads
//! (measured: p99 of GetSegment 340 ms during 50 concurrent creates), and
//! every step queued on the one blocking pool's lock. Here the API's
//! threads win the CPU whenever they have a request, and the lifecycle
//! keeps all the rest; nothing is slower on an idle host. Within a
//! systemd service the niceness only orders the agent's own threads: the
//! service's share of the host against the segments is its cgroup's.

use std::future::Future;
use tokio::task::JoinError;
use tracing::debug;

/// How many nice levels below the agent's own the lifecycle's threads run
/// (CFS weight 1024 against 110 for each of them at 10).
pub const WORK_NICENESS: i32 = 10;

/// Threads for the lifecycle's blocking calls; see the module.
#[derive(Debug)]
pub struct WorkPool {
    /// Only its blocking pool is used; taken out on drop, which must not
    /// block (a manager may go inside an async test).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Default for WorkPool {
    fn default() -> Self {
        Self::new(WORK_NICENESS)
    }
}

impl WorkPool {
    /// A pool whose threads run `niceness` levels below the creating
    /// thread (lowering one's priority needs no privilege).
    pub fn new(niceness: i32) -> Self {
        let base = rustix::process::getpriority_process(None).unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name("segment-work")
            .on_thread_start(move || {
                // Per thread on Linux: `who` 0 is the calling thread.
                if let Err(e) = rustix::process::setpriority_process(None, base + niceness) {
                    debug!(error = %e, "could not lower a work thread's priority");
                }
            })
            .build()
            .expect("a runtime for the lifecycle's blocking work");
        Self {
            runtime: Some(runtime),
        }
    }

    /// Runs `f` on one of the pool's threads.
    pub fn run<T, F>(&self, f: F) -> impl Future<Output = Result<T, JoinError>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.runtime
            .as_ref()
            .expect("the work pool lives as long as its manager")
            .spawn_blocking(f)
    }
}

impl Drop for WorkPool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_below_the_callers_priority() {
        let pool = WorkPool::new(3);
        let mine = rustix::process::getpriority_process(None).unwrap();
        let theirs = pool
            .run(|| rustix::process::getpriority_process(None).unwrap())
            .await
            .unwrap();
        assert_eq!(theirs, (mine + 3).min(19));
        // The caller's own priority is untouched.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), mine);
        drop(pool);
    }
}
