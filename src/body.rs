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
    /// A body being audited: counted, kept up to a limit, its end reported.
    Audited(Box<Capture<ProxyBody>>),
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
            ProxyBody::Audited(body) => Pin::new(&mut **body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body, _) => body.is_end_stream(),
            ProxyBody::Full(body) => body.is_end_stream(),
            ProxyBody::Audited(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body, _) => body.size_hint(),
            ProxyBody::Full(body) => body.size_hint(),
            ProxyBody::Audited(body) => body.size_hint(),
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

/// What a [`Capture`] saw of a body.
#[derive(Debug, Default)]
pub struct Captured {
    /// Bytes that passed.
    pub bytes: u64,
    /// The body, if it was kept and fit in the limit.
    pub body: Option<Vec<u8>>,
    /// The body was larger than the limit (so not kept).
    pub truncated: bool,
    /// The body ended normally (not dropped or failed halfway).
    pub complete: bool,
}

/// Called once with what a [`Capture`] saw.
pub type OnCaptured = Box<dyn FnOnce(Captured) + Send + Sync>;

/// Passes a body through unchanged while counting it and keeping a copy of
/// at most `limit` bytes (for audit); tells `done` when it ends or is
/// dropped. A larger body is marked truncated, never buffered whole.
pub struct Capture<B> {
    inner: B,
    seen: Captured,
    limit: usize,
    done: Option<OnCaptured>,
}

impl<B> Capture<B> {
    /// Wraps `inner`; keeps a copy only if `limit` > 0.
    pub fn new(inner: B, limit: usize, done: OnCaptured) -> Self {
        Capture {
            inner,
            seen: Captured {
                body: (limit > 0).then(Vec::new),
                ..Captured::default()
            },
            limit,
            done: Some(done),
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(done) = self.done.take() {
            let mut seen = std::mem::take(&mut self.seen);
            seen.complete = complete;
            done(seen);
        }
    }
}

impl<B> Drop for Capture<B> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

impl<B> std::fmt::Debug for Capture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("bytes", &self.seen.bytes)
            .finish_non_exhaustive()
    }
}

impl<B> Body for Capture<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen.bytes += data.len() as u64;
                    if let Some(kept) = &mut this.seen.body {
                        if kept.len() + data.len() <= this.limit {
                            kept.extend_from_slice(data);
                        } else {
                            this.seen.body = None;
                            this.seen.truncated = true;
                        }
                    }
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.finish(false);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                this.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Only once the end has been recorded: otherwise hyper could end the
    /// response on this answer alone and drop the body later, out of order
    /// with shutdown, so the end is always seen through `poll_frame`.
    fn is_end_stream(&self) -> bool {
        self.done.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
