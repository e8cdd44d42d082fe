//! The one response body type kubegate hands to hyper: either the apiserver's
//! body, streamed frame by frame, or a small body kubegate wrote itself.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

/// Error type of every body kubegate produces.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body: streamed from upstream, or generated here.
///
/// Concrete rather than boxed so that no response allocates for its body.
#[derive(Debug)]
pub enum ProxyBody {
    /// The apiserver's body, with a guard that is released when the body
    /// ends or is dropped (the HTTP/2 pool counts streams with it).
    Upstream(Incoming, Option<StreamGuard>),
    /// A body kubegate wrote: a `metav1.Status`, a static file.
    Full(Full<Bytes>),
}

impl ProxyBody {
    /// A body holding `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Full::new(bytes.into()))
    }

    /// A body with nothing in it.
    pub fn empty() -> Self {
        ProxyBody::Full(Full::new(Bytes::new()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body, guard) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(None) = polled {
                    // The stream is over: give its slot back now, not when
                    // hyper gets round to dropping the body.
                    guard.take();
                }
                polled.map_err(Into::into)
            }
            ProxyBody::Full(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body, _) => body.is_end_stream(),
            ProxyBody::Full(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body, _) => body.size_hint(),
            ProxyBody::Full(body) => body.size_hint(),
        }
    }
}

/// One open stream on a pooled upstream connection: dropping it gives the
/// connection's stream slot back.
#[derive(Debug)]
pub struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    /// Takes a slot of `in_flight`, which the caller has already counted.
    pub fn new(in_flight: Arc<AtomicUsize>) -> Self {
        StreamGuard(in_flight)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
