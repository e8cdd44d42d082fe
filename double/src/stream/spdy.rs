//! SPDY/3.1 as Kubernetes uses it, server side: the client opens streams
//! (SYN_STREAM with headers such as `streamtype`), the server answers each
//! with an empty SYN_REPLY, data flows in DATA frames, FIN half-closes.
//! Header blocks are zlib-compressed against the SPDY/3 dictionary with one
//! compression context per direction for the whole connection. There is no
//! flow control (spdystream has none either).

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};
use kubegate_spdy::{Deflater, Frame, Inflater};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A stream the client opened.
pub struct SpdyStream {
    /// The stream id.
    pub id: u32,
    /// Its headers (names lowercase).
    pub headers: HashMap<String, String>,
    /// Data from the client; ends at the client's FIN or RST.
    pub incoming: mpsc::Receiver<Bytes>,
    /// Writes to the client.
    pub writer: StreamWriter,
}

/// The sending half of one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    frames: mpsc::Sender<Outgoing>,
}

impl StreamWriter {
    /// Sends data on the stream.
    pub async fn send(&self, data: Bytes) -> bool {
        self.frames
            .send(Outgoing::Data {
                id: self.id,
                data,
                fin: false,
            })
            .await
            .is_ok()
    }

    /// Half-closes the stream from the server's side.
    pub async fn finish(&self) {
        let _ = self
            .frames
            .send(Outgoing::Data {
                id: self.id,
                data: Bytes::new(),
                fin: true,
            })
            .await;
    }

    /// Resets the stream.
    pub async fn reset(&self) {
        let _ = self.frames.send(Outgoing::Reset { id: self.id }).await;
    }
}

enum Outgoing {
    Reply { id: u32 },
    Data { id: u32, data: Bytes, fin: bool },
    Reset { id: u32 },
    Ping { id: u32 },
}

/// Serves SPDY on `io`: every stream the client opens is answered with a
/// SYN_REPLY and handed out on the returned receiver. The token is
/// cancelled when the client goes away; cancelling `cut` drops the
/// connection.
pub fn serve<IO>(io: IO, cut: CancellationToken) -> (mpsc::Receiver<SpdyStream>, CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let (frames, outgoing) = mpsc::channel(64);
    let (streams, accepted) = mpsc::channel(16);
    let closed = CancellationToken::new();
    let writer_cut = cut.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = write_frames(writer, outgoing) => {}
            () = writer_cut.cancelled() => {}
        }
    });
    let on_close = closed.clone();
    tokio::spawn(async move {
        tokio::select! {
            read = read_frames(reader, frames, streams) => {
                if let Err(error) = read {
                    tracing::debug!(%error, "SPDY connection ended");
                }
            }
            () = cut.cancelled() => {}
        }
        on_close.cancel();
    });
    (accepted, closed)
}

async fn read_frames<R: AsyncRead + Unpin>(
    mut reader: R,
    frames: mpsc::Sender<Outgoing>,
    streams: mpsc::Sender<SpdyStream>,
) -> io::Result<()> {
    let mut inflate = Inflater::default();
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    loop {
        let Some(frame) = kubegate_spdy::parse(&mut buffer)? else {
            if reader.read_buf(&mut buffer).await? == 0 {
                return Ok(());
            }
            continue;
        };
        match frame {
            Frame::Data { stream, fin, data } => {
                if let Some(sender) = open.get(&stream)
                    && !data.is_empty()
                {
                    let _ = sender.send(data).await;
                }
                if fin {
                    open.remove(&stream);
                }
            }
            Frame::SynStream { stream, fin, block } => {
                let headers = inflate.headers(&block)?.into_iter().collect();
                let (data, incoming) = mpsc::channel(64);
                if !fin {
                    open.insert(stream, data);
                }
                let _ = frames.send(Outgoing::Reply { id: stream }).await;
                let stream = SpdyStream {
                    id: stream,
                    headers,
                    incoming,
                    writer: StreamWriter {
                        id: stream,
                        frames: frames.clone(),
                    },
                };
                if streams.send(stream).await.is_err() {
                    return Ok(());
                }
            }
            // Extra headers change nothing here, but must be inflated to
            // keep the shared compression context in step.
            Frame::Headers { block, .. } | Frame::SynReply { block, .. } => {
                inflate.headers(&block)?;
            }
            Frame::RstStream { stream, .. } => {
                open.remove(&stream);
            }
            Frame::Ping(id) => {
                let _ = frames.send(Outgoing::Ping { id }).await;
            }
            Frame::GoAway { .. } => return Ok(()),
            Frame::Ignored => {}
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut outgoing: mpsc::Receiver<Outgoing>,
) {
    let mut deflate = Deflater::default();
    let mut frame = BytesMut::new();
    while let Some(next) = outgoing.recv().await {
        frame.clear();
        match next {
            Outgoing::Reply { id } => {
                kubegate_spdy::put_syn_reply(&mut frame, id, false, &deflate.block(&[]));
            }
            Outgoing::Data { id, data, fin } => kubegate_spdy::put_data(&mut frame, id, fin, &data),
            Outgoing::Reset { id } => {
                kubegate_spdy::put_rst_stream(&mut frame, id, kubegate_spdy::reset::CANCEL);
            }
            Outgoing::Ping { id } => kubegate_spdy::put_ping(&mut frame, id),
        }
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}
