//! The audit trail: `audit.k8s.io/v1` events as kube-apiserver writes them,
//! so tools that read apiserver audit logs (Falco's k8saudit, audit2rbac)
//! read kubegate's, plus what only the proxy knows, as annotations.
//!
//! - [`event`]: the Event type and the request's verb and object.
//! - [`policy`]: the apiserver's audit Policy file.
//! - [`log`]: the log backend (file or stdout, rotated).
//! - [`webhook`]: the webhook backend (EventList batches to a collector).
//!
//! Each request gets a [`Record`] that writes its events in stage order:
//! `RequestReceived`, `ResponseStarted` (long-running requests), and
//! `ResponseComplete` when the response body ends. A full queue makes the
//! request wait; nothing is dropped on the way to a backend.

pub mod event;
pub mod identity;
pub mod log;
pub mod policy;
pub mod webhook;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::request::Parts;
use http::{HeaderValue, StatusCode, Uri, header};
use serde_json::value::RawValue;

use crate::body::{Captured, ProxyBody};
use crate::client::Peer;
use crate::error::{StartupError, io_reason};
use crate::lifecycle::Lifecycle;
use crate::request::RequestInfo;
use crate::status::ProxyError;
use crate::telemetry::AuditCounters;
use crate::upstream::Upstream;
use event::{Event, Level, Micros, ObjectRef, ResponseStatus, Stage, UserInfo};

/// Annotation: the policy decision, as the apiserver's authorizer writes it.
pub const DECISION: &str = "authorization.k8s.io/decision";
/// Annotation: why.
pub const REASON: &str = "authorization.k8s.io/reason";
/// Annotation: how a response that did not end normally ended.
const RESPONSE: &str = "kubegate.io/response";
/// Annotation: fields cut to their bound, with their sizes.
const TRUNCATED: &str = "kubegate.io/truncated";

/// Longest client header value (`User-Agent`, a client's `Audit-ID`), verb
/// or `objectRef` field an event records: a Kubernetes name is at most 253
/// bytes, a method a word.
const MAX_CLIENT_VALUE: usize = 1024;
/// Longest `requestURI` an event records.
const MAX_REQUEST_URI: usize = 16 * 1024;
/// Largest event the webhook sends whole: a larger one goes without its
/// request and response bodies, marked as the apiserver's truncating
/// backend marks it (its default `--audit-webhook-truncate-max-event-size`).
const WEBHOOK_MAX_EVENT: usize = 100 * 1024;
/// Longest annotation, message or `requestURI` in an event that is over
/// [`WEBHOOK_MAX_EVENT`] even without its bodies.
const WEBHOOK_MAX_FIELD: usize = 512;
/// Longest annotation or refusal message an event records: a command line
/// or a message that names a path is cut here.
const MAX_ANNOTATION: usize = 16 * 1024;

/// What to do when the log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Answer 503 until the log can be written again.
    Refuse,
    /// Serve on, and say loudly that events are being lost.
    Continue,
}

/// What to audit and where to send it, from the command line.
#[derive(Debug)]
pub struct Settings {
    /// The log backend, if `--audit-log-path` is set.
    pub log: Option<log::Target>,
    /// The webhook backend, if `--audit-webhook-config-file` is set.
    pub webhook: Option<webhook::Settings>,
    /// `--audit-policy-file`; none means `Metadata` for everything.
    pub policy: Option<policy::Policy>,
    /// `--audit-failure`.
    pub failure: FailureMode,
    /// `--audit-max-body-bytes`.
    pub max_body_bytes: usize,
}

/// The audit system: policy, backends, identity.
pub struct Audit {
    policy: Option<policy::Policy>,
    log: Option<log::LogBackend>,
    webhook: Option<webhook::WebhookBackend>,
    user: UserInfo,
    /// `user` as JSON: it is in every event and never changes.
    user_json: Box<RawValue>,
    failure: FailureMode,
    max_body_bytes: usize,
    ids: Ids,
    /// Set when kubegate starts shutting down: a request cut short from
    /// then on was closed by the shutdown, not by its client.
    shutting_down: AtomicBool,
}

impl Audit {
    /// Starts the backends, learning first who kubegate is upstream (from a
    /// `SelfSubjectReview`, else `fallback`, the client certificate's user).
    ///
    /// # Errors
    ///
    /// A [`StartupError`] when the log cannot be opened or the webhook's
    /// collector cannot be used.
    pub async fn start(
        settings: Settings,
        upstream: &Upstream,
        fallback: UserInfo,
        counters: &AuditCounters,
        lifecycle: &Lifecycle,
    ) -> Result<Audit, StartupError> {
        let user = match identity::self_subject_review(upstream).await {
            Some(user) => user,
            None => {
                tracing::info!(
                    "the apiserver answered no SelfSubjectReview; audit events name the client certificate's user"
                );
                fallback
            }
        };
        let webhook = match settings.webhook {
            Some(webhook) => {
                Some(webhook::WebhookBackend::start(webhook, counters, lifecycle).await?)
            }
            None => None,
        };
        let log = match settings.log {
            Some(target) => Some(
                log::LogBackend::start(
                    target.clone(),
                    settings.failure == FailureMode::Continue,
                    counters,
                )
                .map_err(|error| StartupError::File {
                    what: "audit log",
                    path: target.to_string(),
                    message: format!("{}; fix --audit-log-path", io_reason(&error)),
                })?,
            ),
            None => None,
        };
        let user_json = serde_json::value::to_raw_value(&user).map_err(|error| {
            StartupError::Unsupported(format!("cannot write kubegate's user as JSON: {error}"))
        })?;
        Ok(Audit {
            policy: settings.policy,
            log,
            webhook,
            user,
            user_json,
            failure: settings.failure,
            max_body_bytes: settings.max_body_bytes,
            ids: Ids::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Whether requests must be refused because the log cannot be written.
    pub fn refusing(&self) -> bool {
        self.failure == FailureMode::Refuse
            && self
                .log
                .as_ref()
                .is_some_and(|log| log.health.failing.load(Ordering::Acquire))
    }

    /// Opens the record of a request and writes its `RequestReceived`
    /// event; `None` when the policy says level `None`. `info` is the
    /// request as the apiserver will read it, when it is an API request
    /// kubegate could read.
    pub async fn begin(
        self: &Arc<Self>,
        head: &Parts,
        uri: &Uri,
        info: Option<&RequestInfo<'_>>,
        peer: &Peer,
    ) -> Option<Record> {
        let path = info.map_or(uri.path(), |info| info.path().as_str());
        let verb = match info {
            Some(info) => info.verb_text(),
            None => Cow::Owned(head.method.as_str().to_ascii_lowercase()),
        };
        let resource = info.and_then(RequestInfo::resource);
        let (level, omit) = match &self.policy {
            Some(policy) => policy.decide(&policy::Attributes {
                user: &self.user,
                verb: &verb,
                resource,
                path,
            }),
            None => (Level::Metadata, Vec::new()),
        };
        if level == Level::None {
            return None;
        }
        let received = jiff::Timestamp::now();
        let mut annotations = BTreeMap::new();
        let mut truncated = Vec::new();
        annotations.insert("kubegate.io/client", Cow::Owned(peer.description.clone()));
        if let Some(client_id) = head.headers.get("audit-id").and_then(|v| v.to_str().ok()) {
            let client_id = bounded(client_id, MAX_CLIENT_VALUE, "Audit-ID", &mut truncated);
            annotations.insert(
                "kubegate.io/client-audit-id",
                Cow::Owned(client_id.to_string()),
            );
        }
        let request_uri = uri.path_and_query().map_or(path, |pq| pq.as_str());
        let request_uri = bounded(request_uri, MAX_REQUEST_URI, "requestURI", &mut truncated);
        let user_agent = head
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|agent| bounded(agent, MAX_CLIENT_VALUE, "userAgent", &mut truncated).to_string());
        let verb = bounded(&verb, MAX_CLIENT_VALUE, "verb", &mut truncated).to_string();
        let object = resource
            .map(|resource| bounded_object(ObjectRef::from(resource), &mut truncated))
            .and_then(|object| serde_json::value::to_raw_value(&object).ok());
        if !truncated.is_empty() {
            annotations.insert(TRUNCATED, Cow::Owned(truncated.join(", ")));
        }
        let record = Record(Arc::new(RecordInner {
            audit: self.clone(),
            level,
            omit,
            long_running: info.is_some_and(RequestInfo::long_running),
            id: self.ids.next(),
            request_uri: request_uri.to_string(),
            verb,
            object,
            source_ips: peer.ip.iter().cloned().collect(),
            user_agent,
            received,
            completed: AtomicBool::new(false),
            state: Mutex::new(RecordState {
                annotations,
                request_object: None,
                response_object: None,
            }),
        }));
        record.emit(Stage::RequestReceived, None).await;
        Some(record)
    }

    /// The event's line, after handing the webhook its copy: the same
    /// line, or for an event over [`WEBHOOK_MAX_EVENT`] a smaller one.
    fn render(&self, event: Event<'_>) -> Option<Vec<u8>> {
        let line = line_of(&event)?;
        if let Some(webhook) = &self.webhook {
            match line.len() <= WEBHOOK_MAX_EVENT {
                true => webhook.send(&line),
                false => match within_webhook_limit(event) {
                    Some(smaller) => webhook.send(&smaller),
                    None => tracing::error!(
                        "audit webhook: an event could not be cut to its size limit and was not sent"
                    ),
                },
            }
        }
        Some(line)
    }

    /// Notes that kubegate is shutting down, so that requests cut short
    /// from now on say so in their `ResponseComplete`.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Why a request ended before its response did: `before` names what
    /// it had not reached.
    fn cut_short(&self, before: &str) -> String {
        if self.closed_by_shutdown() {
            format!("closed by kubegate's shutdown before {before}")
        } else {
            format!("ended before {before}")
        }
    }

    fn closed_by_shutdown(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Writes everything queued and stops the backends (at shutdown).
    pub async fn close(&self) {
        if let Some(log) = &self.log {
            log.close().await;
        }
        if let Some(webhook) = &self.webhook {
            webhook.close().await;
        }
    }
}

/// Audit IDs: UUIDs made from a random per-process prefix and a counter,
/// unique without a system call per request.
struct Ids {
    prefix: u64,
    counter: AtomicU64,
}

impl Ids {
    fn new() -> Self {
        let mut bytes = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        Ids {
            prefix: u64::from_be_bytes(bytes),
            counter: AtomicU64::new(u64::from_be_bytes(bytes).rotate_left(17)),
        }
    }

    fn next(&self) -> AuditId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Version 4 and the RFC 4122 variant in their places.
        let high = (self.prefix & 0xffff_ffff_ffff_0fff) | 0x4000;
        let low = (n & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
        let mut id = *b"00000000-0000-0000-0000-000000000000";
        let digits = id.iter_mut().filter(|c| **c != b'-');
        let nibbles = (0..16).rev().map(|i| (high >> (4 * i)) & 0xf);
        let nibbles = nibbles.chain((0..16).rev().map(|i| (low >> (4 * i)) & 0xf));
        for (digit, nibble) in digits.zip(nibbles) {
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        AuditId(id)
    }
}

/// An audit ID: a UUID's 36 characters, held without an allocation.
#[derive(Clone, Copy)]
struct AuditId([u8; 36]);

impl AuditId {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// One request's audit record; cheap to clone.
#[derive(Clone)]
pub struct Record(Arc<RecordInner>);

struct RecordInner {
    audit: Arc<Audit>,
    level: Level,
    omit: Vec<Stage>,
    long_running: bool,
    id: AuditId,
    request_uri: String,
    verb: String,
    /// `objectRef`, as JSON: the same in every event.
    object: Option<Box<RawValue>>,
    source_ips: Vec<String>,
    user_agent: Option<String>,
    received: jiff::Timestamp,
    /// `ResponseComplete` has been written (or was due and omitted).
    completed: AtomicBool,
    state: Mutex<RecordState>,
}

struct RecordState {
    annotations: BTreeMap<&'static str, Cow<'static, str>>,
    request_object: Option<Box<RawValue>>,
    response_object: Option<Box<RawValue>>,
}

impl Record {
    /// The audit ID.
    pub fn id(&self) -> &str {
        self.0.id.as_str()
    }

    /// The user the audit log names.
    pub fn username(&self) -> Option<String> {
        let name = &self.0.audit.user.username;
        (!name.is_empty()).then(|| name.clone())
    }

    /// The ID as a header value. Marked never to be indexed by HPACK: a
    /// value sent once would only evict from the upstream connection's
    /// table the headers that repeat on every request.
    pub fn header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_bytes(&self.0.id.0).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Whether request bodies are recorded.
    pub fn wants_request_body(&self) -> bool {
        self.0.level >= Level::Request && self.0.object.is_some()
    }

    /// Whether response bodies are recorded.
    pub fn wants_response_body(&self) -> bool {
        self.0.level >= Level::RequestResponse && self.0.object.is_some()
    }

    /// The body limit.
    pub fn max_body_bytes(&self) -> usize {
        self.0.audit.max_body_bytes
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecordState> {
        self.0.state()
    }

    /// Adds an annotation, cut to [`MAX_ANNOTATION`].
    pub fn annotate(&self, key: &'static str, value: impl Into<Cow<'static, str>>) {
        let value = self.bounded(key, value.into());
        self.state().annotations.insert(key, value);
    }

    /// `value`, or its first [`MAX_ANNOTATION`] bytes with `field` and its
    /// full size noted in the event.
    fn bounded(&self, field: &str, value: Cow<'static, str>) -> Cow<'static, str> {
        if value.len() <= MAX_ANNOTATION {
            return value;
        }
        let note = format!("{field} ({} bytes)", value.len());
        match self.state().annotations.entry(TRUNCATED) {
            Entry::Occupied(mut notes) => {
                let notes = notes.get_mut().to_mut();
                notes.push_str(", ");
                notes.push_str(&note);
            }
            Entry::Vacant(notes) => {
                notes.insert(Cow::Owned(note));
            }
        }
        Cow::Owned(prefix(&value, MAX_ANNOTATION).to_string())
    }

    /// Records the policy decision for a request that was let through.
    pub fn allowed(&self) {
        let mut state = self.state();
        state
            .annotations
            .entry(DECISION)
            .or_insert(Cow::Borrowed("allow"));
        state
            .annotations
            .entry(REASON)
            .or_insert(Cow::Borrowed("kubegate: allowed by --accept-hosts, --accept-paths, --reject-paths and --reject-methods"));
    }

    /// Records a refusal (or failure) and writes `ResponseComplete` for it.
    pub async fn refused(&self, error: &ProxyError) {
        let (code, reason) = error.code_and_reason();
        if error.is_refusal() {
            self.annotate(DECISION, "forbid");
            self.annotate(REASON, format!("kubegate: {error}"));
        } else {
            self.allowed();
        }
        let status = ResponseStatus {
            status: Some("Failure"),
            message: Some(
                self.bounded("responseStatus.message", error.to_string().into())
                    .into_owned(),
            ),
            reason: Some(reason.to_string()),
            code: code.as_u16(),
            ..ResponseStatus::default()
        };
        self.emit(Stage::ResponseComplete, Some(status)).await;
    }

    /// Writes `ResponseStarted` (for long-running requests).
    pub async fn started(&self, code: StatusCode) {
        if self.0.long_running {
            self.emit(Stage::ResponseStarted, Some(code_status(code)))
                .await;
        }
    }

    /// Keeps the request body's capture for the `ResponseComplete` event.
    pub fn request_body(&self, captured: Captured) {
        let object = self.object_from(captured, "kubegate.io/request-body");
        self.state().request_object = object;
    }

    fn object_from(&self, captured: Captured, annotation: &'static str) -> Option<Box<RawValue>> {
        if captured.truncated {
            self.annotate(
                annotation,
                format!(
                    "truncated: {} bytes, over --audit-max-body-bytes",
                    captured.bytes
                ),
            );
            return None;
        }
        let body = captured.body.filter(|b| !b.is_empty())?;
        match serde_json::from_slice::<Box<RawValue>>(&body) {
            Ok(object) => Some(object),
            Err(_) => {
                self.annotate(annotation, format!("not JSON: {} bytes", captured.bytes));
                None
            }
        }
    }

    /// Wraps a response body so that its end writes `ResponseComplete`
    /// (with the body, at `RequestResponse`).
    pub fn complete_with_body(&self, code: StatusCode, body: ProxyBody) -> ProxyBody {
        let record = self.clone();
        let limit = if self.wants_response_body() {
            self.max_body_bytes()
        } else {
            0
        };
        ProxyBody::Audited(Box::new(crate::body::Capture::new(
            body,
            limit,
            Box::new(move |captured: Captured| {
                if !captured.complete {
                    let why = record.0.audit.cut_short("its body was complete");
                    record.annotate(RESPONSE, why);
                }
                if record.wants_response_body() {
                    let object = record.object_from(captured, "kubegate.io/response-body");
                    record.state().response_object = object;
                }
                record.emit_soon(Stage::ResponseComplete, Some(code_status(code)));
            }),
        )))
    }

    /// Writes `ResponseComplete` now.
    pub async fn complete(&self, code: StatusCode) {
        self.emit(Stage::ResponseComplete, Some(code_status(code)))
            .await;
    }

    async fn emit(&self, stage: Stage, status: Option<ResponseStatus>) {
        if let Some(line) = self.0.line(stage, status)
            && let Some(log) = &self.0.audit.log
        {
            log.send(line).await;
        }
    }

    fn emit_soon(&self, stage: Stage, status: Option<ResponseStatus>) {
        self.0.emit_soon(stage, status);
    }
}

impl RecordInner {
    fn state(&self) -> std::sync::MutexGuard<'_, RecordState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stage's event, written for the webhook and returned as the
    /// log's line; `None` when the policy omits the stage or no log takes
    /// it.
    fn line(&self, stage: Stage, status: Option<ResponseStatus>) -> Option<Vec<u8>> {
        let complete = stage == Stage::ResponseComplete;
        if complete {
            self.completed.store(true, Ordering::Release);
        }
        if self.omit.contains(&stage) {
            return None;
        }
        let state = self.state();
        // Bodies go in the last event only.
        fn body(object: &Option<Box<RawValue>>, complete: bool) -> Option<&RawValue> {
            object.as_deref().filter(|_| complete)
        }
        self.audit.render(Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: self.level,
            audit_id: self.id.as_str(),
            stage,
            request_uri: &self.request_uri,
            verb: &self.verb,
            user: &self.audit.user_json,
            source_ips: &self.source_ips,
            user_agent: self.user_agent.as_deref(),
            object_ref: self.object.as_deref(),
            response_status: status,
            request_object: body(&state.request_object, complete),
            response_object: body(&state.response_object, complete),
            request_received_timestamp: Micros(self.received),
            stage_timestamp: Micros(jiff::Timestamp::now()),
            annotations: &state.annotations,
        })
    }

    fn emit_soon(&self, stage: Stage, status: Option<ResponseStatus>) {
        if let Some(line) = self.line(stage, status)
            && let Some(log) = &self.audit.log
        {
            log.send_soon(line);
        }
    }
}

/// A request that reached kubegate always gets its `ResponseComplete`:
/// one dropped before its response (the client went away, an HTTP/2
/// stream was reset, shutdown closed it) gets it here, saying so.
impl Drop for RecordInner {
    fn drop(&mut self) {
        if self.completed.load(Ordering::Acquire) {
            return;
        }
        let why = self.audit.cut_short("the response");
        // No response was sent: 499, nginx's "client closed request", or
        // 503 when kubegate's shutdown closed it.
        let code = match self.audit.closed_by_shutdown() {
            true => StatusCode::SERVICE_UNAVAILABLE,
            false => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        };
        let status = ResponseStatus {
            status: Some("Failure"),
            message: Some(format!("the request {why}")),
            code: code.as_u16(),
            ..ResponseStatus::default()
        };
        self.state().annotations.insert(RESPONSE, Cow::Owned(why));
        self.emit_soon(Stage::ResponseComplete, Some(status));
    }
}

/// One JSON line.
fn line_of(event: &Event<'_>) -> Option<Vec<u8>> {
    let mut line = Vec::with_capacity(1024);
    serde_json::to_writer(&mut line, event).ok()?;
    line.push(b'\n');
    Some(line)
}

/// An event over the webhook's limit made to fit it: first without its
/// bodies, marked as the apiserver's truncating backend marks it; if that
/// is still too large (client-chosen paths, commands and messages), with
/// each of those cut to [`WEBHOOK_MAX_FIELD`] as well.
fn within_webhook_limit(event: Event<'_>) -> Option<Vec<u8>> {
    let mut annotations = event.annotations.clone();
    annotations.insert("audit.k8s.io/truncated", Cow::Borrowed("true"));
    let without_bodies = Event {
        request_object: None,
        response_object: None,
        response_status: event.response_status.clone(),
        annotations: &annotations,
        ..event
    };
    let line = line_of(&without_bodies)?;
    if line.len() <= WEBHOOK_MAX_EVENT {
        return Some(line);
    }
    for value in annotations.values_mut() {
        if value.len() > WEBHOOK_MAX_FIELD {
            *value = Cow::Owned(prefix(value, WEBHOOK_MAX_FIELD).to_string());
        }
    }
    let mut status = event.response_status;
    if let Some(message) = status.as_mut().and_then(|s| s.message.as_mut()) {
        message.truncate(prefix(message, WEBHOOK_MAX_FIELD).len());
    }
    let cut = Event {
        request_uri: prefix(event.request_uri, WEBHOOK_MAX_FIELD),
        request_object: None,
        response_object: None,
        response_status: status,
        annotations: &annotations,
        ..event
    };
    line_of(&cut).filter(|line| line.len() <= WEBHOOK_MAX_EVENT)
}

/// `value`, or its first `limit` bytes (at a character boundary) with the
/// field and its full size noted in `truncated`.
fn bounded<'a>(value: &'a str, limit: usize, field: &str, truncated: &mut Vec<String>) -> &'a str {
    if value.len() > limit {
        truncated.push(format!("{field} ({} bytes)", value.len()));
    }
    prefix(value, limit)
}

/// `object` with each field bounded to [`MAX_CLIENT_VALUE`].
fn bounded_object<'a>(object: ObjectRef<'a>, truncated: &mut Vec<String>) -> ObjectRef<'a> {
    let mut cut = |value: &'a str, field: &str| bounded(value, MAX_CLIENT_VALUE, field, truncated);
    ObjectRef {
        resource: cut(object.resource, "objectRef.resource"),
        namespace: cut(object.namespace, "objectRef.namespace"),
        name: cut(object.name, "objectRef.name"),
        api_group: cut(object.api_group, "objectRef.apiGroup"),
        api_version: cut(object.api_version, "objectRef.apiVersion"),
        subresource: cut(object.subresource, "objectRef.subresource"),
    }
}

/// The first `limit` bytes of `value`, at a character boundary.
fn prefix(value: &str, limit: usize) -> &str {
    if value.len() <= limit {
        return value;
    }
    let mut end = limit;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

fn code_status(code: StatusCode) -> ResponseStatus {
    ResponseStatus {
        code: code.as_u16(),
        ..ResponseStatus::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_ids_are_unique_version_4_uuids() {
        let ids = Ids::new();
        let (a, b) = (ids.next(), ids.next());
        let (a, b) = (a.as_str(), b.as_str());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
    }

    #[test]
    fn an_event_too_large_without_its_bodies_has_its_client_fields_cut_to_fit() {
        // Control characters take six bytes each once escaped in JSON.
        let huge = "\u{1}".repeat(MAX_ANNOTATION);
        let annotations: BTreeMap<&'static str, Cow<'static, str>> = [
            ("kubegate.io/command", Cow::Owned(huge.clone())),
            (REASON, Cow::Owned(huge.clone())),
        ]
        .into();
        let user = serde_json::value::to_raw_value(&UserInfo::default()).unwrap();
        let now = Micros(jiff::Timestamp::now());
        let event = Event {
            kind: "Event",
            api_version: "audit.k8s.io/v1",
            level: Level::Metadata,
            audit_id: "id",
            stage: Stage::ResponseComplete,
            request_uri: &huge,
            verb: "get",
            user: &user,
            source_ips: &[],
            user_agent: None,
            object_ref: None,
            response_status: Some(ResponseStatus {
                message: Some(huge.clone()),
                code: 403,
                ..ResponseStatus::default()
            }),
            request_object: None,
            response_object: None,
            request_received_timestamp: now,
            stage_timestamp: now,
            annotations: &annotations,
        };
        assert!(line_of(&event).unwrap().len() > 3 * WEBHOOK_MAX_EVENT);
        let line = within_webhook_limit(event).unwrap();
        assert!(line.len() <= WEBHOOK_MAX_EVENT);
        let cut: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(cut["annotations"]["audit.k8s.io/truncated"], "true");
        assert_eq!(cut["requestURI"].as_str().unwrap().len(), WEBHOOK_MAX_FIELD);
        let message = cut["responseStatus"]["message"].as_str().unwrap();
        assert_eq!(message.len(), WEBHOOK_MAX_FIELD);
        assert_eq!(
            cut["annotations"][REASON].as_str().unwrap().len(),
            WEBHOOK_MAX_FIELD
        );
    }
}
