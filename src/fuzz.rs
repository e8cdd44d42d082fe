//! Fuzz-style property tests over everything kubegate parses itself from
//! clients and files: request paths and queries, `Host`, the WebSocket
//! subprotocol list, the policy file and the audit policy file; and what
//! kubegate reads off the wire itself: SPDY frames and header blocks from
//! the apiserver, a port-forward client's WebSocket messages, and the
//! exec and attach sessions a recording reads. Input is
//! random bytes, or valid input mutated byte by byte, so the parsers' error
//! paths are walked too. Nothing may panic, and what each parser promises
//! must hold for whatever it accepts.
//!
//! CI runs 2,048 cases per property; `KUBEGATE_FUZZ_CASES=1000000 cargo
//! test --lib fuzz` runs as many as asked. (cargo-fuzz needs a nightly
//! toolchain, so proptest drives this on stable.)

use http::{HeaderMap, HeaderValue, header};
use proptest::prelude::*;

use crate::access::{BEARER_SUBPROTOCOL_PREFIX, drop_bearer_subprotocol};
use crate::filters::host_without_port;
use crate::portforward::client::Framing;
use crate::recording::Events;
use crate::recording::cast::{Cast, Session, Utf8Stream};
use crate::recording::channels::tests::websocket_frame;
use crate::recording::channels::{Demux, Direction, Framing as Channels, Sizes};
use crate::request::{RequestInfo, normalize};

fn config() -> ProptestConfig {
    let cases = std::env::var("KUBEGATE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2048);
    ProptestConfig::with_cases(cases)
}

/// Valid input with up to eight byte-level edits: a byte replaced, bytes
/// inserted from `alphabet`, or a range deleted.
fn mutated(
    seeds: &'static [&'static str],
    alphabet: &'static [u8],
) -> impl Strategy<Value = String> {
    let edit = (
        any::<prop::sample::Index>(),
        0u8..3,
        prop::collection::vec(prop::sample::select(alphabet), 1..6),
    );
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit, 0..8),
    )
        .prop_map(|(seed, edits)| {
            let mut bytes = seed.as_bytes().to_vec();
            for (at, kind, insert) in edits {
                let at = at.index(bytes.len() + 1);
                match kind {
                    0 if at < bytes.len() => bytes[at] = insert[0],
                    1 => {
                        bytes.splice(at..at, insert);
                    }
                    _ => {
                        let end = (at + insert.len()).min(bytes.len());
                        bytes.drain(at..end);
                    }
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        })
}

const PATHS: &[&str] = &[
    "/api/v1/namespaces/default/pods/web/exec",
    "/apis/apps/v1/namespaces/kube-system/deployments/coredns/scale",
    "/api/v1/watch/namespaces/default/pods",
    "/api/v1/namespaces/default/services/web:80/proxy/a/b",
    "/version",
];
const PATH_BYTES: &[u8] = b"/%.:2Fe5cC0aAz-_~\\?#[]@!$&'()*+,;= \t\n\x00";

const QUERIES: &[&str] = &[
    "watch=true&resourceVersion=10",
    "fieldSelector=metadata.name%3Dweb&limit=500",
    "command=sh&command=-c&command=ls&stdin=true&tty=true",
    "ports=80,8080&timeoutSeconds=30",
];
const QUERY_BYTES: &[u8] = b"=&%3D2Cmetadata.name,watch1true0-+ ";

const POLICIES: &[&str] = &[
    include_str!("../examples/policy/agent-guard.yaml"),
    include_str!("../examples/policy/never-secrets.yaml"),
    include_str!("../examples/policy/sidecar-one-namespace.yaml"),
];
const AUDIT_POLICIES: &[&str] = &[
    "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"RequestReceived\"]\nrules:\n  - level: None\n    nonResourceURLs: [\"/version\", \"/healthz*\"]\n  - level: RequestResponse\n    verbs: [\"create\", \"delete\"]\n    resources: [{ group: \"\", resources: [\"pods\", \"pods/exec\"] }]\n    namespaces: [\"default\"]\n  - level: Metadata\n    users: [\"admin\"]\n    userGroups: [\"system:masters\"]\n    omitStages: [\"ResponseStarted\"]\n",
];
const YAML_BYTES: &[u8] = b" \n-:[]{}\"'*#&!|>,.0123456789aAzZ/\t\\";

/// Real SPDY frames of every kind the apiserver sends, header blocks from
/// a real compressor, then up to eight bytes overwritten.
fn spdy_wire() -> impl Strategy<Value = Vec<u8>> {
    let frame = (
        0u8..6,
        any::<u32>(),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..64),
    );
    (
        prop::collection::vec(frame, 1..12),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    )
        .prop_map(|(frames, edits)| {
            let mut deflater = kubegate_spdy::Deflater::default();
            let mut out = bytes::BytesMut::new();
            for (kind, id, fin, data) in frames {
                let text = String::from_utf8_lossy(&data).into_owned();
                match kind {
                    0 => kubegate_spdy::put_data(&mut out, id, fin, &data),
                    1 => {
                        let block = deflater.block(&[("streamtype", &text)]);
                        kubegate_spdy::put_syn_reply(&mut out, id, fin, &block);
                    }
                    2 => {
                        let block = deflater.block(&[("port", &text), ("x", "y")]);
                        kubegate_spdy::put_syn_stream(&mut out, id, fin, &block);
                    }
                    3 => kubegate_spdy::put_rst_stream(&mut out, id, id % 12),
                    4 => kubegate_spdy::put_ping(&mut out, id),
                    _ => kubegate_spdy::put_goaway(&mut out, id),
                }
            }
            let mut bytes = out.to_vec();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            bytes
        })
}

/// Reads `wire` as the session's reader does, `chunk` bytes at a time:
/// the frames, and whether it stopped at an error.
fn read_spdy(wire: &[u8], chunk: usize) -> (Vec<kubegate_spdy::Frame>, bool) {
    let mut inflater = kubegate_spdy::Inflater::default();
    let mut buffer = bytes::BytesMut::new();
    let mut frames = Vec::new();
    for piece in wire.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match kubegate_spdy::parse(&mut buffer) {
                Ok(Some(frame)) => {
                    if let kubegate_spdy::Frame::SynReply { block, .. }
                    | kubegate_spdy::Frame::SynStream { block, .. }
                    | kubegate_spdy::Frame::Headers { block, .. } = &frame
                        && inflater.headers(block).is_err()
                    {
                        return (frames, true);
                    }
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

proptest! {
    #![proptest_config(config())]

    /// A path and query, random or mutated from real ones: read without
    /// panicking; an accepted path is canonical (encoding it and reading
    /// it again changes nothing) and has no empty or dot segment.
    #[test]
    fn request_paths_and_queries(
        path in prop_oneof![mutated(PATHS, PATH_BYTES), any::<String>()],
        query in prop_oneof![mutated(QUERIES, QUERY_BYTES), any::<String>()],
        method in prop_oneof![Just("GET".to_string()), Just("POST".to_string()), "[A-Za-z]{0,8}"],
        upgrade in any::<bool>(),
    ) {
        if let Ok(info) = RequestInfo::read(&method, &path, Some(&query), upgrade) {
            let _ = (info.verb_text(), info.resource(), info.long_running());
        }
        if let Ok(canonical) = normalize(&path) {
            let decoded = canonical.as_str();
            let encoded = canonical.encoded();
            match normalize(&encoded) {
                Ok(again) => prop_assert_eq!(again.as_str(), decoded),
                Err(error) => prop_assert!(false, "{path:?} encodes to {encoded:?}, refused: {error}"),
            }
            prop_assert!(decoded == "/" || !decoded.split('/').skip(1).any(|s| s.is_empty() || s == "." || s == ".."));
        }
    }

    /// `Host`: the name is a prefix of the header, and a port is cut only
    /// when it is all digits.
    #[test]
    fn host_headers(host in prop_oneof![any::<String>(), "\\[?[0-9a-z:.]{0,12}\\]?(:[0-9a-z@]{0,6})?"]) {
        let name = host_without_port(&host);
        prop_assert!(host.starts_with(name));
        let rest = &host[name.len()..];
        prop_assert!(rest.is_empty() || (rest.len() > 1 && rest[1..].bytes().all(|b| b.is_ascii_digit())));
    }

    /// The subprotocol list, however it is split over header lines and
    /// whatever bytes it holds: no bearer entry goes upstream.
    #[test]
    fn websocket_subprotocol_lists(
        lines in prop::collection::vec(
            prop::collection::vec(prop_oneof![
                Just(format!("{BEARER_SUBPROTOCOL_PREFIX}dG9rZW4")),
                Just("v5.channel.k8s.io".to_string()),
                "[ -~\u{80}-\u{ff}]{0,12}",
            ], 1..4),
            1..3,
        ),
    ) {
        let mut headers = HeaderMap::new();
        for line in &lines {
            let bytes: Vec<u8> = line.join(", ").chars().map(|c| c as u32 as u8).collect();
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                headers.append(header::SEC_WEBSOCKET_PROTOCOL, value);
            }
        }
        drop_bearer_subprotocol(&mut headers);
        for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
            let text = String::from_utf8_lossy(value.as_bytes());
            prop_assert!(!text.contains(BEARER_SUBPROTOCOL_PREFIX), "{text:?} goes upstream");
        }
    }

    /// The policy file: any text is read or refused with a message.
    #[test]
    fn policy_files(text in prop_oneof![mutated(POLICIES, YAML_BYTES), any::<String>()]) {
        if let Err(message) = crate::policy::parse(&text) {
            prop_assert!(!message.is_empty());
        }
    }

    /// The audit policy file, likewise.
    #[test]
    fn audit_policy_files(text in prop_oneof![mutated(AUDIT_POLICIES, YAML_BYTES), any::<String>()]) {
        if let Err(message) = crate::audit::policy::Policy::parse(&text) {
            prop_assert!(!message.is_empty());
        }
    }

    /// SPDY from the apiserver, real frames damaged or random bytes, read
    /// in any chunks: never a panic, and the same frames however the bytes
    /// arrive.
    #[test]
    fn spdy_frames(
        wire in prop_oneof![spdy_wire(), prop::collection::vec(any::<u8>(), 0..512)],
        chunk in 1usize..64,
    ) {
        let whole = read_spdy(&wire, wire.len().max(1));
        prop_assert_eq!(read_spdy(&wire, chunk), whole);
    }

    /// A port-forward client's WebSocket messages, binary or text, in
    /// either framing: never a panic, and a channel and bytes sent are
    /// read back as sent.
    #[test]
    fn port_forward_client_messages(
        channel in any::<u8>(),
        data in prop::collection::vec(any::<u8>(), 0..256),
        text in any::<String>(),
        raw in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        use tokio_tungstenite::tungstenite::Message;
        for framing in [Framing::Binary, Framing::Base64] {
            let _ = framing.decode(Message::text(text.clone()));
            let _ = framing.decode(Message::binary(raw.clone()));
            let sent = framing.encode(channel, &data);
            // A base64 channel past 'DEL' is no longer one byte of text.
            if framing == Framing::Binary || b'0'.wrapping_add(channel) < 0x80 {
                prop_assert_eq!(framing.decode(sent), Some((channel, bytes::Bytes::from(data.clone()))));
            }
        }
    }

    /// Random bytes in any framing, split anywhere, either way: the
    /// recorder's readers never panic.
    #[test]
    fn recorded_session_bytes(
        wire in prop::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..64,
        sizes in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        for framing in [Channels::WebSocket, Channels::WebSocketBase64, Channels::Spdy] {
            let mut demux = Demux::new(framing, true);
            for (i, piece) in wire.chunks(chunk).enumerate() {
                let direction = if i % 2 == 0 { Direction::ToClient } else { Direction::ToServer };
                if demux.feed(direction, piece, &mut |_, _| {}).is_err() {
                    break;
                }
            }
        }
        let _ = Sizes::default().feed(&sizes);
    }

    /// A session's bytes give the same recording however they were split
    /// into reads.
    #[test]
    fn recordings_do_not_depend_on_chunking(
        messages in prop::collection::vec((0u8..5, prop::collection::vec(any::<u8>(), 0..300), any::<bool>()), 1..16),
        chunk in 1usize..97,
        tty in any::<bool>(),
    ) {
        let mut to_client = Vec::new();
        let mut to_server = Vec::new();
        for (channel, data, split) in &messages {
            let mut payload = vec![*channel];
            if *channel == 4 {
                payload.extend_from_slice(format!("{{\"Width\":{},\"Height\":{}}}", data.len() + 1, data.len() % 50 + 1).as_bytes());
            } else {
                payload.extend_from_slice(data);
            }
            let (wire, mask) = if *channel == 0 || *channel == 4 {
                (&mut to_server, Some([7, 1, 9, 3]))
            } else {
                (&mut to_client, None)
            };
            // Some messages in two fragments.
            let cut = if *split { payload.len() / 2 } else { payload.len() };
            wire.extend(websocket_frame(2, cut == payload.len(), &payload[..cut], mask));
            if cut < payload.len() {
                wire.extend(websocket_frame(0, true, &payload[cut..], mask));
            }
        }
        let record = |chunk: usize| {
            let session = Session { tty, ..Session::default() };
            let mut cast = Cast::new(Vec::new(), session, 0);
            let mut events = Events::new(Channels::WebSocket, true);
            for piece in to_server.chunks(chunk) {
                events.feed(&mut cast, 1.0, Direction::ToServer, piece).unwrap();
            }
            for piece in to_client.chunks(chunk) {
                events.feed(&mut cast, 1.0, Direction::ToClient, piece).unwrap();
            }
            cast.finish(1.0).unwrap()
        };
        prop_assert_eq!(record(chunk), record(usize::MAX));
    }

    /// UTF-8 decoded read by read is the whole decoded at once.
    #[test]
    fn utf8_across_reads(bytes in prop::collection::vec(any::<u8>(), 0..256), chunk in 1usize..8) {
        let mut decoder = Utf8Stream::default();
        let mut text: String = bytes.chunks(chunk).map(|piece| decoder.decode(piece)).collect();
        text.push_str(&decoder.flush());
        prop_assert_eq!(text, String::from_utf8_lossy(&bytes).into_owned());
    }
}
