//! One place for kubegate's background tasks: the admin server, the
//! readiness probe, the file reloaders (certificates, the policy file,
//! token files) and the credential refreshers. Each is registered here,
//! and all stop together when kubegate does, after the proxy port has
//! stopped accepting, drained, closed and flushed.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The background tasks, and the signal that stops them.
#[derive(Debug, Default)]
pub struct Lifecycle {
    stopping: CancellationToken,
    tasks: TaskTracker,
}

impl Lifecycle {
    /// Cancelled when kubegate stops: a task that serves connections of
    /// its own closes them on it.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// The tracker a task that spawns tasks of its own spawns them in.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Runs `task` until it ends or kubegate stops; the handle aborts it
    /// sooner, when its owner goes.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let stopping = self.stopping.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stopping.cancelled() => {}
            }
        })
    }

    /// Stops every task and waits until each has ended.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_waits_for_them() {
        let lifecycle = Lifecycle::default();
        let (ended, mut ends) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..3 {
            let guard = Ended(ended.clone());
            lifecycle.spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            });
        }
        drop(ended);
        lifecycle.stop().await;
        for _ in 0..3 {
            assert!(ends.try_recv().is_ok());
        }
        assert!(ends.try_recv().is_err());
    }

    /// Says so when its task ends (dropped).
    struct Ended(tokio::sync::mpsc::UnboundedSender<()>);

    impl Drop for Ended {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
}
