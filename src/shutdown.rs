//! The signal that starts a graceful shutdown: SIGINT or SIGTERM.

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// Resolves at the first SIGINT or SIGTERM.
pub async fn signal() {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        unix_signal(SignalKind::interrupt()),
        unix_signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers, never ask to stop; the default action
        // of the signals (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
