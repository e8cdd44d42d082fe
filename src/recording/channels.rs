//! The channels of an exec or attach session, read from a copy of the
//! bytes the relay moves: WebSocket frames of the `*.channel.k8s.io`
//! protocols (binary, or base64 text), or SPDY/3.1 streams told apart by
//! their `streamType` header. Reading never changes what is relayed.

use std::collections::HashMap;
use std::io::Cursor;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use kubegate_spdy::{Frame, Inflater};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// A WebSocket message or SPDY frame larger than this is not recorded.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Which way bytes moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client to the apiserver.
    ToServer,
    /// From the apiserver to the client.
    ToClient,
}

/// The channels of the remote command protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Stdin,
    Stdout,
    Stderr,
    Error,
    Resize,
}

impl Channel {
    /// Whether the channel flows `direction`: a peer's bytes on another
    /// peer's channel are not what the session showed.
    fn flows(self, direction: Direction) -> bool {
        match self {
            Channel::Stdin | Channel::Resize => direction == Direction::ToServer,
            Channel::Stdout | Channel::Stderr | Channel::Error => direction == Direction::ToClient,
        }
    }

    fn of_number(number: u8) -> Option<Channel> {
        Some(match number {
            0 => Channel::Stdin,
            1 => Channel::Stdout,
            2 => Channel::Stderr,
            3 => Channel::Error,
            4 => Channel::Resize,
            _ => return None,
        })
    }

    fn of_stream_type(name: &str) -> Option<Channel> {
        Some(match name {
            "stdin" => Channel::Stdin,
            "stdout" => Channel::Stdout,
            "stderr" => Channel::Stderr,
            "error" => Channel::Error,
            "resize" => Channel::Resize,
            _ => return None,
        })
    }
}

/// Why a session's bytes cannot be read as channels.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(String);

/// How the session frames its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// WebSocket, a channel byte first (`v4.channel.k8s.io` …).
    WebSocket,
    /// WebSocket text, a channel digit and base64 (`*.base64.channel.k8s.io`).
    WebSocketBase64,
    /// SPDY/3.1, a stream per channel.
    Spdy,
}

impl Framing {
    /// The framing of a negotiated upgrade: `upgrade` is the `Upgrade`
    /// header of the apiserver's 101, `protocol` its subprotocol.
    pub fn of(upgrade: &str, protocol: &str) -> Option<Framing> {
        if upgrade.eq_ignore_ascii_case("websocket") {
            return Some(if protocol.contains(".base64.") {
                Framing::WebSocketBase64
            } else {
                Framing::WebSocket
            });
        }
        upgrade
            .eq_ignore_ascii_case("SPDY/3.1")
            .then_some(Framing::Spdy)
    }
}

/// Turns both directions' bytes into channel data, in the order fed.
pub struct Demux {
    framing: Framing,
    to_server: Side,
    to_client: Side,
    /// SPDY: which channel each stream is, from the client's `SYN_STREAM`.
    streams: HashMap<u32, Channel>,
    /// SPDY: the client's header compression (the apiserver's is its own
    /// and never needed).
    inflater: Inflater,
    /// Whether the client's stdin is wanted.
    stdin: bool,
}

#[derive(Default)]
struct Side {
    buffer: BytesMut,
    /// Bytes still to pass over: the rest of a payload no one wants.
    skip: usize,
    /// A fragmented WebSocket message so far, when wanted.
    message: Option<Vec<u8>>,
    /// Whether that message is text.
    text: bool,
}

impl Demux {
    /// Nothing read yet; the client's stdin is read when `stdin`.
    pub fn new(framing: Framing, stdin: bool) -> Self {
        Demux {
            framing,
            stdin,
            to_server: Side::default(),
            to_client: Side::default(),
            streams: HashMap::new(),
            inflater: Inflater::default(),
        }
    }

    /// Reads `bytes` that moved `direction`, calling `deliver` with each
    /// channel's data as it completes.
    ///
    /// # Errors
    ///
    /// [`Unreadable`] if the bytes are not the framing's.
    pub fn feed(
        &mut self,
        direction: Direction,
        bytes: &[u8],
        deliver: &mut impl FnMut(Channel, &[u8]),
    ) -> Result<(), Unreadable> {
        let side = match direction {
            Direction::ToServer => &mut self.to_server,
            Direction::ToClient => &mut self.to_client,
        };
        side.buffer.extend_from_slice(bytes);
        match self.framing {
            Framing::WebSocket | Framing::WebSocketBase64 => {
                let base64 = self.framing == Framing::WebSocketBase64;
                // The client's stdin is read only to be recorded.
                let stdin = self.stdin;
                let wanted = |channel: Channel| {
                    channel.flows(direction) && (channel != Channel::Stdin || stdin)
                };
                while let Some((text, message)) = side.next_message(base64, wanted)? {
                    deliver_message(base64, text, &message, &mut |channel, data| {
                        if wanted(channel) {
                            deliver(channel, data);
                        }
                    });
                }
                Ok(())
            }
            Framing::Spdy => {
                loop {
                    let frame = kubegate_spdy::parse(&mut side.buffer)
                        .map_err(|error| Unreadable(format!("SPDY: {error}")))?;
                    let Some(frame) = frame else { return Ok(()) };
                    match (direction, frame) {
                        (Direction::ToServer, Frame::SynStream { stream, block, .. }) => {
                            let headers = self
                                .inflater
                                .headers(&block)
                                .map_err(|error| Unreadable(format!("SPDY headers: {error}")))?;
                            let kind = headers.iter().find_map(|(name, value)| {
                                name.eq_ignore_ascii_case("streamtype")
                                    .then(|| Channel::of_stream_type(value))
                                    .flatten()
                            });
                            if let Some(kind) = kind {
                                self.streams.insert(stream, kind);
                            }
                        }
                        (Direction::ToServer, Frame::Headers { block, .. }) => {
                            // Keeps the compression state in step.
                            self.inflater
                                .headers(&block)
                                .map_err(|error| Unreadable(format!("SPDY headers: {error}")))?;
                        }
                        (_, Frame::Data { stream, data, .. }) => {
                            if let Some(&channel) = self.streams.get(&stream)
                                && channel.flows(direction)
                            {
                                deliver(channel, &data);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl Side {
    /// The next whole data message on a channel `wanted` (and whether it
    /// was text); the payloads of others are passed over unread.
    fn next_message(
        &mut self,
        base64: bool,
        wanted: impl Fn(Channel) -> bool,
    ) -> Result<Option<(bool, Bytes)>, Unreadable> {
        loop {
            if self.skip > 0 {
                let passed = self.skip.min(self.buffer.len());
                self.buffer.advance(passed);
                self.skip -= passed;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let mut cursor = Cursor::new(&self.buffer[..]);
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|error| Unreadable(format!("WebSocket: {error}")))?;
            let Some((header, length)) = parsed else {
                return Ok(None);
            };
            if header.rsv1 {
                return Err(Unreadable("compressed WebSocket frames".into()));
            }
            let start = cursor.position() as usize;
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            if length > 0 && self.buffer.len() == start {
                // Which channel it is comes with the payload's first byte.
                return Ok(None);
            }
            let keep = match header.opcode {
                OpCode::Data(Data::Text | Data::Binary) => {
                    // The channel is the payload's first byte.
                    let first = self
                        .buffer
                        .get(start)
                        .map(|b| b ^ header.mask.map_or(0, |m| m[0]));
                    let number = first.map(|b| if base64 { b.wrapping_sub(b'0') } else { b });
                    let keep = number.and_then(Channel::of_number).is_some_and(&wanted);
                    self.message = (!header.is_final && keep).then(Vec::new);
                    keep
                }
                OpCode::Data(Data::Continue) => self.message.is_some(),
                // Control frames, and reserved ones no peer sends.
                _ => false,
            };
            if !keep {
                self.buffer.advance(start);
                self.skip = length;
                continue;
            }
            if length > MAX_MESSAGE {
                return Err(Unreadable("a WebSocket frame larger than 16 MiB".into()));
            }
            if self.buffer.len() < start + length {
                self.buffer.reserve(start + length - self.buffer.len());
                return Ok(None);
            }
            self.buffer.advance(start);
            let mut payload = self.buffer.split_to(length);
            if let Some(mask) = header.mask {
                for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
                    *byte ^= key;
                }
            }
            let text = matches!(header.opcode, OpCode::Data(Data::Text));
            match (&mut self.message, header.opcode) {
                (None, _) => return Ok(Some((text, payload.freeze()))),
                (Some(so_far), OpCode::Data(Data::Continue)) => {
                    if so_far.len() + payload.len() > MAX_MESSAGE {
                        return Err(Unreadable("a WebSocket message larger than 16 MiB".into()));
                    }
                    so_far.extend_from_slice(&payload);
                    if header.is_final {
                        let whole = self.message.take().unwrap_or_default();
                        return Ok(Some((self.text, Bytes::from(whole))));
                    }
                }
                (Some(so_far), _) => {
                    // The first fragment.
                    so_far.extend_from_slice(&payload);
                    self.text = text;
                }
            }
        }
    }
}

/// One message's channel and bytes to `deliver`.
fn deliver_message(
    base64: bool,
    text: bool,
    message: &[u8],
    deliver: &mut impl FnMut(Channel, &[u8]),
) {
    let Some((&first, rest)) = message.split_first() else {
        return;
    };
    if base64 && text {
        let Some(channel) = first.checked_sub(b'0').and_then(Channel::of_number) else {
            return;
        };
        if let Ok(data) = base64::engine::general_purpose::STANDARD.decode(rest) {
            deliver(channel, &data);
        }
    } else if let Some(channel) = Channel::of_number(first) {
        deliver(channel, rest);
    }
}

/// A terminal size, as the resize channel carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Size {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Reads the JSON sizes the resize channel carries, however its bytes
/// were split.
#[derive(Default)]
pub struct Sizes {
    buffer: Vec<u8>,
}

impl Sizes {
    /// The sizes `bytes` complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Size> {
        self.buffer.extend_from_slice(bytes);
        let mut sizes = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buffer).into_iter::<Size>();
        let consumed = loop {
            match stream.next() {
                Some(Ok(size)) => sizes.push(size),
                Some(Err(error)) if error.is_eof() => break stream.byte_offset(),
                // Not a size: what is left is dropped.
                Some(Err(_)) => break self.buffer.len(),
                None => break self.buffer.len(),
            }
        };
        self.buffer.drain(..consumed);
        if self.buffer.len() > 4096 {
            self.buffer.clear();
        }
        sizes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kubegate_spdy::Deflater;

    /// A WebSocket frame: `opcode`, final or not, masked with `mask`.
    pub(crate) fn websocket_frame(
        opcode: u8,
        fin: bool,
        payload: &[u8],
        mask: Option<[u8; 4]>,
    ) -> Vec<u8> {
        let mut frame = vec![opcode | if fin { 0x80 } else { 0 }];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n < 65536 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(mask) => {
                frame.extend_from_slice(&mask);
                frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            }
            None => frame.extend_from_slice(payload),
        }
        frame
    }

    fn read_all(demux: &mut Demux, chunks: &[(Direction, Vec<u8>)]) -> Vec<(Channel, Vec<u8>)> {
        let mut got = Vec::new();
        for (direction, bytes) in chunks {
            demux
                .feed(*direction, bytes, &mut |channel, data| {
                    got.push((channel, data.to_vec()))
                })
                .unwrap();
        }
        got
    }

    #[test]
    fn websocket_channels_in_any_chunking() {
        let mut wire = websocket_frame(2, true, b"\x01hello", None);
        wire.extend(websocket_frame(9, true, b"ping", None));
        wire.extend(websocket_frame(2, false, b"\x02err", None));
        wire.extend(websocket_frame(0, true, b"or", None));
        let client = websocket_frame(
            2,
            true,
            b"\x04{\"Width\":100,\"Height\":30}",
            Some([1, 2, 3, 4]),
        );
        for split in 0..wire.len() {
            let mut demux = Demux::new(Framing::WebSocket, true);
            let got = read_all(
                &mut demux,
                &[
                    (Direction::ToClient, wire[..split].to_vec()),
                    (Direction::ToServer, client.clone()),
                    (Direction::ToClient, wire[split..].to_vec()),
                ],
            );
            let mut outputs: Vec<_> = got.iter().filter(|(c, _)| *c != Channel::Resize).collect();
            outputs.sort_by_key(|(c, _)| *c as u8);
            assert_eq!(
                outputs,
                [
                    &(Channel::Stdout, b"hello".to_vec()),
                    &(Channel::Stderr, b"error".to_vec())
                ],
                "split at {split}"
            );
            assert!(got.contains(&(Channel::Resize, br#"{"Width":100,"Height":30}"#.to_vec())));
        }
    }

    #[test]
    fn a_client_cannot_write_into_the_pods_channels() {
        let mask = Some([9, 8, 7, 6]);
        // Stdout from the client, plain and behind an empty first fragment.
        let mut forged = websocket_frame(2, true, b"\x01forged", mask);
        forged.extend(websocket_frame(2, false, b"", mask));
        forged.extend(websocket_frame(0, true, b"\x01forged", mask));
        forged.extend(websocket_frame(2, true, b"\x00typed", mask));
        let mut demux = Demux::new(Framing::WebSocket, true);
        let got = read_all(&mut demux, &[(Direction::ToServer, forged)]);
        assert_eq!(got, [(Channel::Stdin, b"typed".to_vec())]);
        // Over SPDY the client opens every stream: its data on stdout is not
        // the pod's.
        let mut deflater = Deflater::default();
        let mut client = BytesMut::new();
        let block = deflater.block(&[("streamtype", "stdout")]);
        kubegate_spdy::put_syn_stream(&mut client, 1, false, &block);
        kubegate_spdy::put_data(&mut client, 1, false, b"forged");
        let mut demux = Demux::new(Framing::Spdy, true);
        assert!(read_all(&mut demux, &[(Direction::ToServer, client.to_vec())]).is_empty());
        // Nor is the pod's on stdin the client's.
        let mut wire = websocket_frame(2, true, b"\x00echo", None);
        wire.extend(websocket_frame(2, true, b"\x04{}", None));
        let mut demux = Demux::new(Framing::WebSocket, true);
        assert!(read_all(&mut demux, &[(Direction::ToClient, wire)]).is_empty());
    }

    #[test]
    fn base64_channels_are_decoded() {
        let mut demux = Demux::new(Framing::WebSocketBase64, true);
        let wire = websocket_frame(1, true, b"1aGk=", None);
        let got = read_all(&mut demux, &[(Direction::ToClient, wire)]);
        assert_eq!(got, [(Channel::Stdout, b"hi".to_vec())]);
    }

    #[test]
    fn spdy_streams_are_told_apart_by_their_stream_type() {
        let mut deflater = Deflater::default();
        let mut client = BytesMut::new();
        for (stream, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
            let block = deflater.block(&[("streamtype", kind)]);
            kubegate_spdy::put_syn_stream(&mut client, stream, false, &block);
        }
        kubegate_spdy::put_data(&mut client, 7, false, br#"{"Width":1,"Height":2}"#);
        kubegate_spdy::put_data(&mut client, 3, false, b"typed");
        let mut server = BytesMut::new();
        kubegate_spdy::put_data(&mut server, 5, false, b"out");
        kubegate_spdy::put_data(&mut server, 1, true, br#"{"status":"Success"}"#);
        let mut demux = Demux::new(Framing::Spdy, true);
        let got = read_all(
            &mut demux,
            &[
                (Direction::ToServer, client[..7].to_vec()),
                (Direction::ToServer, client[7..].to_vec()),
                (Direction::ToClient, server.to_vec()),
            ],
        );
        assert_eq!(
            got,
            [
                (Channel::Resize, br#"{"Width":1,"Height":2}"#.to_vec()),
                (Channel::Stdin, b"typed".to_vec()),
                (Channel::Stdout, b"out".to_vec()),
                (Channel::Error, br#"{"status":"Success"}"#.to_vec()),
            ]
        );
    }

    #[test]
    fn sizes_split_anywhere_and_several_at_once() {
        let mut sizes = Sizes::default();
        assert!(sizes.feed(br#"{"Width":132,"#).is_empty());
        let got = sizes.feed(br#""Height":43}{"Width":80,"Height":24}"#);
        assert_eq!(
            got,
            [
                Size {
                    width: 132,
                    height: 43
                },
                Size {
                    width: 80,
                    height: 24
                }
            ]
        );
    }
}
