//! The signal that starts a graceful shutdown: SIGINT or SIGTERM.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Installs the SIGINT and SIGTERM handlers now (so that a signal sent right
/// after the start-up line is not fatal) and returns a future that resolves
/// at the first of them.
pub fn signal() -> impl Future<Output = ()> {
    let handlers = (
        unix_signal(SignalKind::interrupt()),
        unix_signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = handlers else {
            // Without handlers, never ask to stop; the signals' default
            // action (exit) still applies.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
}
