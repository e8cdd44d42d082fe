//! SPDY/3.1 as Kubernetes uses it, server side: the client opens streams
//! (SYN_STREAM with headers such as `streamtype`), the server answers each
//! with an empty SYN_REPLY, data flows in DATA frames, FIN half-closes.
//! Header blocks are zlib-compressed against the SPDY/3 dictionary with one
//! compression context per direction for the whole connection. There is no
//! flow control (spdystream has none either).

use std::collections::HashMap;
use std::io;
use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
/// Largest frame payload the double accepts (SPDY allows 2^24 - 1).
const MAX_FRAME: usize = 1 << 24;

/// The SPDY/3 header-compression dictionary (SPDY/3 draft §2.6.10.1): the
/// listed words, each with a 32-bit length in front, then a fixed tail.
pub fn dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
            "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
            "content-base", "content-encoding", "content-language", "content-length", "content-location",
            "content-md5", "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host",
            "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified",
            "location", "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
            "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via",
            "warning", "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url",
            "public", "set-cookie", "keep-alive", "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut bytes = Vec::with_capacity(1423);
        for word in WORDS {
            bytes.extend_from_slice(&(word.len() as u32).to_be_bytes());
            bytes.extend_from_slice(word.as_bytes());
        }
        bytes.extend_from_slice(TAIL.as_bytes());
        bytes
    })
}

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
/// cancelled when the client goes away.
pub fn serve<IO>(io: IO) -> (mpsc::Receiver<SpdyStream>, CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (reader, writer) = tokio::io::split(io);
    let (frames, outgoing) = mpsc::channel(64);
    let (streams, accepted) = mpsc::channel(16);
    let closed = CancellationToken::new();
    tokio::spawn(write_frames(writer, outgoing));
    let on_close = closed.clone();
    tokio::spawn(async move {
        if let Err(error) = read_frames(reader, frames, streams).await {
            tracing::debug!(%error, "SPDY connection ended");
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
    let mut inflate = Decompress::new(true);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    loop {
        let mut head = [0u8; 8];
        if reader.read_exact(&mut head).await.is_err() {
            return Ok(());
        }
        let flags = head[4];
        let length = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if length > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "SPDY frame too large",
            ));
        }
        let mut payload = vec![0u8; length];
        reader.read_exact(&mut payload).await?;
        let mut payload = Bytes::from(payload);
        if head[0] & 0x80 == 0 {
            let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            if let Some(sender) = open.get(&id)
                && !payload.is_empty()
            {
                // A handler that stopped reading must not stall the others.
                let _ = sender.send(payload).await;
            }
            if flags & FLAG_FIN != 0 {
                open.remove(&id);
            }
            continue;
        }
        let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
        let kind = u16::from_be_bytes([head[2], head[3]]);
        if version != VERSION {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not SPDY/3"));
        }
        match kind {
            SYN_STREAM if payload.len() >= 10 => {
                let id = payload.get_u32() & 0x7fff_ffff;
                payload.advance(6);
                let headers = decode_headers(&mut inflate, &payload)?;
                let (data, incoming) = mpsc::channel(64);
                if flags & FLAG_FIN == 0 {
                    open.insert(id, data);
                }
                let _ = frames.send(Outgoing::Reply { id }).await;
                let stream = SpdyStream {
                    id,
                    headers,
                    incoming,
                    writer: StreamWriter {
                        id,
                        frames: frames.clone(),
                    },
                };
                if streams.send(stream).await.is_err() {
                    return Ok(());
                }
            }
            HEADERS if payload.len() >= 4 => {
                // Extra headers change nothing here, but must be inflated to
                // keep the shared compression context in step.
                payload.advance(4);
                decode_headers(&mut inflate, &payload)?;
            }
            RST_STREAM if payload.len() >= 4 => {
                open.remove(&(payload.get_u32() & 0x7fff_ffff));
            }
            PING if payload.len() >= 4 => {
                let _ = frames
                    .send(Outgoing::Ping {
                        id: payload.get_u32(),
                    })
                    .await;
            }
            GOAWAY => return Ok(()),
            _ => {}
        }
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut outgoing: mpsc::Receiver<Outgoing>,
) {
    let mut deflate = Compress::new(Compression::default(), true);
    if deflate.set_dictionary(dictionary()).is_err() {
        return;
    }
    let mut frame = BytesMut::new();
    while let Some(next) = outgoing.recv().await {
        frame.clear();
        match next {
            Outgoing::Reply { id } => {
                let block = encode_headers(&mut deflate, &[]);
                control(&mut frame, SYN_REPLY, 0, 4 + block.len());
                frame.put_u32(id);
                frame.extend_from_slice(&block);
            }
            Outgoing::Data { id, data, fin } => {
                frame.put_u32(id & 0x7fff_ffff);
                frame.put_u8(if fin { FLAG_FIN } else { 0 });
                frame.put_uint(data.len() as u64, 3);
                frame.extend_from_slice(&data);
            }
            Outgoing::Reset { id } => {
                control(&mut frame, RST_STREAM, 0, 8);
                frame.put_u32(id);
                frame.put_u32(5); // CANCEL
            }
            Outgoing::Ping { id } => {
                control(&mut frame, PING, 0, 4);
                frame.put_u32(id);
            }
        }
        if writer.write_all(&frame).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

fn control(frame: &mut BytesMut, kind: u16, flags: u8, length: usize) {
    frame.put_u16(0x8000 | VERSION);
    frame.put_u16(kind);
    frame.put_u8(flags);
    frame.put_uint(length as u64, 3);
}

fn encode_headers(deflate: &mut Compress, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    block.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        block.extend_from_slice(&(name.len() as u32).to_be_bytes());
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(&(value.len() as u32).to_be_bytes());
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = Vec::with_capacity(block.len() + 64);
    let mut input = &block[..];
    loop {
        out.reserve(256);
        let before = deflate.total_in();
        if deflate
            .compress_vec(input, &mut out, FlushCompress::Sync)
            .is_err()
        {
            break;
        }
        input = &input[(deflate.total_in() - before) as usize..];
        // A sync flush is complete once all input is taken and room is left.
        if input.is_empty() && out.len() < out.capacity() {
            break;
        }
    }
    out
}

fn decode_headers(
    inflate: &mut Decompress,
    compressed: &[u8],
) -> io::Result<HashMap<String, String>> {
    let mut block = Vec::with_capacity(compressed.len() * 4 + 64);
    let mut input = compressed;
    loop {
        block.reserve(1024);
        let before = inflate.total_in();
        let result = inflate.decompress_vec(input, &mut block, FlushDecompress::Sync);
        input = &input[(inflate.total_in() - before) as usize..];
        match result {
            Ok(Status::Ok | Status::BufError)
                if input.is_empty() && block.len() < block.capacity() =>
            {
                break;
            }
            Ok(Status::StreamEnd) => break,
            Ok(_) => {}
            Err(error) if error.needs_dictionary().is_some() => {
                inflate
                    .set_dictionary(dictionary())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
        }
    }
    parse_block(&block)
}

fn parse_block(mut block: &[u8]) -> io::Result<HashMap<String, String>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed SPDY header block");
    let take = |block: &mut &[u8]| -> io::Result<String> {
        if block.len() < 4 {
            return Err(bad());
        }
        let length = block.get_u32() as usize;
        if block.len() < length {
            return Err(bad());
        }
        let text = String::from_utf8_lossy(&block[..length]).into_owned();
        block.advance(length);
        Ok(text)
    };
    if block.len() < 4 {
        return Err(bad());
    }
    let count = block.get_u32();
    let mut headers = HashMap::new();
    for _ in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        headers.insert(name.to_ascii_lowercase(), value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        let digest = ring::digest::digest(&ring::digest::SHA256, d);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[test]
    fn header_blocks_survive_a_shared_compression_context() {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate.set_dictionary(dictionary()).unwrap();
        let mut inflate = Decompress::new(true);
        for round in 0..3 {
            let round = round.to_string();
            let block = encode_headers(
                &mut deflate,
                &[
                    ("streamtype", "data"),
                    ("port", "8080"),
                    ("requestid", &round),
                ],
            );
            let headers = decode_headers(&mut inflate, &block).unwrap();
            assert_eq!(headers["streamtype"], "data");
            assert_eq!(headers["requestid"], round);
        }
    }
}
