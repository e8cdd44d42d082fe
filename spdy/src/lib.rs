//! SPDY/3.1 as Kubernetes speaks it (moby/spdystream's dialect): frames
//! read from and written to a buffer, and header blocks compressed against
//! the SPDY/3 dictionary with one compression context per direction for
//! the whole connection. Both kubegate's port-forward sessions (the client
//! side) and the apiserver double (the server side) use it.
//!
//! There is no flow control: spdystream parses `WINDOW_UPDATE` and
//! `SETTINGS` and ignores them, so they are read as [`Frame::Ignored`].

use std::io;
use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const VERSION: u16 = 3;
const FLAG_FIN: u8 = 0x01;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const HEAD: usize = 8;

/// The largest payload a frame can carry (a 24-bit length).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// The largest header block kubegate and the double inflate: a bound on
/// what a compressed block can cost.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// `RST_STREAM` status codes used here.
pub mod reset {
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The stream was refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The sender no longer wants the stream.
    pub const CANCEL: u32 = 5;
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Stream data; `fin` half-closes the sender's side.
    Data {
        /// The stream.
        stream: u32,
        /// The sender is done with the stream.
        fin: bool,
        /// The bytes.
        data: Bytes,
    },
    /// A new stream, with its compressed header block.
    SynStream {
        /// The stream.
        stream: u32,
        /// Opened already half-closed.
        fin: bool,
        /// The compressed header block.
        block: Bytes,
    },
    /// The answer to a `SynStream`; `fin` set means refused (spdystream).
    SynReply {
        /// The stream.
        stream: u32,
        /// The replier is done with the stream.
        fin: bool,
        /// The compressed header block.
        block: Bytes,
    },
    /// A stream ended abnormally.
    RstStream {
        /// The stream.
        stream: u32,
        /// Why (see [`reset`]).
        status: u32,
    },
    /// A ping, or the answer to one (same id).
    Ping(u32),
    /// The sender is closing the connection.
    GoAway {
        /// The last stream the sender processed.
        last_stream: u32,
    },
    /// More headers for a stream (they still move the shared inflater).
    Headers {
        /// The stream.
        stream: u32,
        /// The compressed header block.
        block: Bytes,
    },
    /// `SETTINGS`, `WINDOW_UPDATE` or an unknown type: ignored.
    Ignored,
}

/// Reads the next whole frame off the front of `buffer`, or `None` until
/// more bytes arrive.
///
/// # Errors
///
/// A control frame of another SPDY version, or one too short for its type.
pub fn parse(buffer: &mut BytesMut) -> io::Result<Option<Frame>> {
    if buffer.len() < HEAD {
        return Ok(None);
    }
    let length = u32::from_be_bytes([0, buffer[5], buffer[6], buffer[7]]) as usize;
    if buffer.len() < HEAD + length {
        buffer.reserve(HEAD + length - buffer.len());
        return Ok(None);
    }
    let mut frame = buffer.split_to(HEAD + length).freeze();
    let word = frame.get_u32();
    let flags = frame.get_u8();
    frame.advance(3);
    let fin = flags & FLAG_FIN != 0;
    if word & 0x8000_0000 == 0 {
        return Ok(Some(Frame::Data {
            stream: word,
            fin,
            data: frame,
        }));
    }
    if (word >> 16) & 0x7fff != u32::from(VERSION) {
        return Err(invalid("not SPDY/3"));
    }
    let short = |needed: usize| {
        if length < needed {
            Err(invalid("a SPDY control frame too short for its type"))
        } else {
            Ok(())
        }
    };
    let stream_id = |frame: &mut Bytes| frame.get_u32() & 0x7fff_ffff;
    Ok(Some(match (word & 0xffff) as u16 {
        SYN_STREAM => {
            short(10)?;
            let stream = stream_id(&mut frame);
            frame.advance(6); // associated stream, priority, slot
            Frame::SynStream {
                stream,
                fin,
                block: frame,
            }
        }
        SYN_REPLY => {
            short(4)?;
            let stream = stream_id(&mut frame);
            Frame::SynReply {
                stream,
                fin,
                block: frame,
            }
        }
        RST_STREAM => {
            short(8)?;
            let stream = stream_id(&mut frame);
            Frame::RstStream {
                stream,
                status: frame.get_u32(),
            }
        }
        PING => {
            short(4)?;
            Frame::Ping(frame.get_u32())
        }
        GOAWAY => {
            short(4)?;
            Frame::GoAway {
                last_stream: stream_id(&mut frame),
            }
        }
        HEADERS => {
            short(4)?;
            let stream = stream_id(&mut frame);
            Frame::Headers {
                stream,
                block: frame,
            }
        }
        _ => Frame::Ignored,
    }))
}

fn invalid(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, length: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u8(flags);
    out.put_uint(length as u64, 3);
}

fn fin_flag(fin: bool) -> u8 {
    if fin { FLAG_FIN } else { 0 }
}

/// Appends `data` as `DATA` frames of at most [`MAX_PAYLOAD`] bytes each
/// (a length must fit its 24 bits); `fin` goes on the last.
pub fn put_data(out: &mut BytesMut, stream: u32, fin: bool, data: &[u8]) {
    let mut chunks = data.chunks(MAX_PAYLOAD).peekable();
    if chunks.peek().is_none() {
        put_data_frame(out, stream, fin, &[]);
    }
    while let Some(chunk) = chunks.next() {
        put_data_frame(out, stream, fin && chunks.peek().is_none(), chunk);
    }
}

fn put_data_frame(out: &mut BytesMut, stream: u32, fin: bool, data: &[u8]) {
    out.reserve(HEAD + data.len());
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u8(fin_flag(fin));
    out.put_uint(data.len() as u64, 3);
    out.extend_from_slice(data);
}

/// Appends a `SYN_STREAM` frame opening `stream` with a compressed block.
pub fn put_syn_stream(out: &mut BytesMut, stream: u32, fin: bool, block: &[u8]) {
    control(out, SYN_STREAM, fin_flag(fin), 10 + block.len());
    out.put_u32(stream);
    out.put_u32(0); // no associated stream
    out.put_u16(0); // priority 0, slot 0
    out.extend_from_slice(block);
}

/// Appends a `SYN_REPLY` frame; `fin` refuses the stream.
pub fn put_syn_reply(out: &mut BytesMut, stream: u32, fin: bool, block: &[u8]) {
    control(out, SYN_REPLY, fin_flag(fin), 4 + block.len());
    out.put_u32(stream);
    out.extend_from_slice(block);
}

/// Appends a `RST_STREAM` frame.
pub fn put_rst_stream(out: &mut BytesMut, stream: u32, status: u32) {
    control(out, RST_STREAM, 0, 8);
    out.put_u32(stream);
    out.put_u32(status);
}

/// Appends a `PING` frame.
pub fn put_ping(out: &mut BytesMut, id: u32) {
    control(out, PING, 0, 4);
    out.put_u32(id);
}

/// Appends a `GOAWAY` frame with status OK.
pub fn put_goaway(out: &mut BytesMut, last_stream: u32) {
    control(out, GOAWAY, 0, 8);
    out.put_u32(last_stream);
    out.put_u32(0);
}

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

/// The sending side's header compression: one context per connection.
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        let mut compress = Compress::new(Compression::default(), true);
        // Setting a dictionary on a fresh stream cannot fail.
        let _ = compress.set_dictionary(dictionary());
        Deflater(compress)
    }
}

impl Deflater {
    /// Compresses a header block (names lowercase), ending in a sync flush.
    pub fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut block = Vec::new();
        block.put_u32(headers.len() as u32);
        for (name, value) in headers {
            block.put_u32(name.len() as u32);
            block.extend_from_slice(name.as_bytes());
            block.put_u32(value.len() as u32);
            block.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = &block[..];
        loop {
            out.reserve(256);
            let before = self.0.total_in();
            if self
                .0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                break;
            }
            input = &input[(self.0.total_in() - before) as usize..];
            // A sync flush is complete once all input is taken and room is left.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

/// The receiving side's header decompression: one context per connection.
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Inflater(Decompress::new(true))
    }
}

impl Inflater {
    /// Inflates and parses one header block. Every block must pass through
    /// here in order, even those whose headers are not wanted.
    ///
    /// # Errors
    ///
    /// A block that does not inflate, inflates past 256 KiB, or is
    /// malformed.
    pub fn headers(&mut self, compressed: &[u8]) -> io::Result<Vec<(String, String)>> {
        let mut block = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut input = compressed;
        loop {
            if block.len() > MAX_HEADER_BLOCK {
                return Err(invalid("a SPDY header block larger than 256 KiB"));
            }
            block.reserve(1024);
            let before = self.0.total_in();
            let result = self
                .0
                .decompress_vec(input, &mut block, FlushDecompress::Sync);
            input = &input[(self.0.total_in() - before) as usize..];
            match result {
                Ok(Status::Ok | Status::BufError)
                    if input.is_empty() && block.len() < block.capacity() =>
                {
                    break;
                }
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(error) if error.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(dictionary())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
                Err(error) => return Err(io::Error::new(io::ErrorKind::InvalidData, error)),
            }
        }
        parse_block(&block)
    }
}

fn parse_block(mut block: &[u8]) -> io::Result<Vec<(String, String)>> {
    let take = |block: &mut &[u8]| -> io::Result<String> {
        if block.len() < 4 {
            return Err(invalid("malformed SPDY header block"));
        }
        let length = block.get_u32() as usize;
        if block.len() < length {
            return Err(invalid("malformed SPDY header block"));
        }
        let text = String::from_utf8_lossy(&block[..length]).to_ascii_lowercase();
        block.advance(length);
        Ok(text)
    };
    if block.len() < 4 {
        return Err(invalid("malformed SPDY header block"));
    }
    let count = block.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut block)?;
        let value = take(&mut block)?;
        headers.push((name, value));
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
        let (mut deflate, mut inflate) = (Deflater::default(), Inflater::default());
        for round in 0..3 {
            let round = round.to_string();
            let block = deflate.block(&[
                ("streamtype", "data"),
                ("port", "8080"),
                ("requestid", &round),
            ]);
            let headers = inflate.headers(&block).unwrap();
            assert_eq!(headers[0], ("streamtype".into(), "data".into()));
            assert_eq!(headers[2], ("requestid".into(), round));
        }
    }

    #[test]
    fn frames_read_back_as_written_and_wait_for_their_last_byte() {
        let mut out = BytesMut::new();
        put_syn_stream(&mut out, 1, false, b"block");
        put_data(&mut out, 1, true, b"hello");
        put_rst_stream(&mut out, 3, reset::CANCEL);
        put_ping(&mut out, 7);
        put_goaway(&mut out, 5);
        put_syn_reply(&mut out, 2, true, b"");
        let whole = out.clone();
        // Fed a byte at a time, nothing is read early.
        let mut buffer = BytesMut::new();
        let mut frames = Vec::new();
        for byte in whole.iter() {
            buffer.put_u8(*byte);
            while let Some(frame) = parse(&mut buffer).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    stream: 1,
                    fin: false,
                    block: Bytes::from_static(b"block")
                },
                Frame::Data {
                    stream: 1,
                    fin: true,
                    data: Bytes::from_static(b"hello")
                },
                Frame::RstStream {
                    stream: 3,
                    status: reset::CANCEL
                },
                Frame::Ping(7),
                Frame::GoAway { last_stream: 5 },
                Frame::SynReply {
                    stream: 2,
                    fin: true,
                    block: Bytes::new()
                },
            ]
        );
    }

    #[test]
    fn data_past_a_frames_length_is_split_and_fin_ends_the_last() {
        let data = vec![7u8; MAX_PAYLOAD + 10];
        let mut out = BytesMut::new();
        put_data(&mut out, 5, true, &data);
        let first = parse(&mut out).unwrap().unwrap();
        let second = parse(&mut out).unwrap().unwrap();
        assert!(
            matches!(first, Frame::Data { stream: 5, fin: false, ref data } if data.len() == MAX_PAYLOAD)
        );
        assert!(
            matches!(second, Frame::Data { stream: 5, fin: true, ref data } if data.len() == 10)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn short_control_frames_and_other_versions_are_errors() {
        let mut buffer = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0][..]);
        assert!(parse(&mut buffer).is_err());
        let mut buffer = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(parse(&mut buffer).is_err());
    }

    #[test]
    fn a_header_bomb_is_refused() {
        let mut deflate = Deflater::default();
        let huge = "x".repeat(512 * 1024);
        let block = deflate.block(&[("name", &huge)]);
        assert!(Inflater::default().headers(&block).is_err());
    }
}
