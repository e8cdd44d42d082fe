//! The double's HTTP API: discovery, pods (list, get, create, patch,
//! delete, watch), logs with `follow`, and the test endpoints (`/echo`,
//! `/bytes`, `/faults/*`). Responses follow the apiserver's shapes,
//! `metav1.Status` errors included.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::apiserver::{State, User};
use super::store::{StoreError, now};
use super::stream::{self, Kind};
use super::table;

/// The double's response body.
pub type DoubleBody = BoxBody<Bytes, io::Error>;

/// A body fed by a task through a channel: how watches, followed logs and
/// big downloads stream. Dropping it (the client went away) ends the task.
struct ChannelBody(mpsc::Receiver<Result<Bytes, io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|chunk| chunk.map(Frame::data)))
    }
}

fn streaming() -> (mpsc::Sender<Result<Bytes, io::Error>>, DoubleBody) {
    let (sender, receiver) = mpsc::channel(16);
    (sender, ChannelBody(receiver).boxed())
}

/// An empty body.
pub fn empty() -> DoubleBody {
    full(Bytes::new())
}

fn full(bytes: impl Into<Bytes>) -> DoubleBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn json_response(code: StatusCode, value: &Value) -> Response<DoubleBody> {
    let mut response = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A `metav1.Status` failure, as the apiserver writes it.
pub fn status(code: StatusCode, reason: &str, message: &str) -> Response<DoubleBody> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

fn not_found(what: &str) -> Response<DoubleBody> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{what} not found"),
    )
}

/// Query parameters, decoded.
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1" | ""))
    }
}

/// Serves one request for an authenticated `user`.
pub async fn handle(
    state: Arc<State>,
    user: User,
    request: Request<Incoming>,
) -> Response<DoubleBody> {
    let path = request.uri().path().to_string();
    let query = Query::parse(request.uri().query());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    let table = table::wanted(request.headers());
    match (method.clone(), segments.as_slice()) {
        (Method::GET, [""]) => json_response(StatusCode::OK, &root_paths()),
        (Method::GET, ["version"]) => json_response(
            StatusCode::OK,
            &json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-kubegate-double",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
                "platform": "linux/amd64",
            }),
        ),
        (Method::GET, ["api"]) => json_response(
            StatusCode::OK,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": state.address.to_string() }],
            }),
        ),
        (Method::GET, ["apis"]) => json_response(
            StatusCode::OK,
            &json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [] }),
        ),
        (Method::GET, ["api", "v1"]) => json_response(StatusCode::OK, &resource_list()),
        (_, ["api", "v1", "pods"]) if method == Method::GET => {
            list_or_watch(&state, None, &query, table)
        }
        (Method::GET, ["api", "v1", "events"] | ["api", "v1", "namespaces", _, "events"]) => {
            // The double records no events; kubectl describe lists them.
            let rv = state.store.resource_version().to_string();
            json_response(
                StatusCode::OK,
                &json!({ "kind": "EventList", "apiVersion": "v1", "metadata": { "resourceVersion": rv }, "items": [] }),
            )
        }
        (_, ["api", "v1", "namespaces", ns, "pods"]) => match method {
            Method::GET => list_or_watch(&state, Some(ns), &query, table),
            Method::POST => create(&state, ns, request).await,
            _ => method_not_allowed(),
        },
        (_, ["api", "v1", "namespaces", ns, "pods", name]) => match method {
            Method::GET => match state.store.get(ns, name) {
                Some(pod) if table => {
                    let rv = pod["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default();
                    json_response(StatusCode::OK, &table::pods([&*pod], rv))
                }
                Some(pod) => json_response(StatusCode::OK, &pod),
                None => not_found(&format!("pods \"{name}\"")),
            },
            Method::DELETE => match state.store.delete(ns, name) {
                Ok(pod) => json_response(StatusCode::OK, &pod),
                Err(_) => not_found(&format!("pods \"{name}\"")),
            },
            Method::PATCH | Method::PUT => patch(&state, ns, name, request).await,
            _ => method_not_allowed(),
        },
        (Method::GET, ["api", "v1", "namespaces", ns, "pods", name, "log"]) => {
            log(&state, ns, name, &query)
        }
        (Method::GET | Method::POST, ["api", "v1", "namespaces", ns, "pods", name, sub]) => {
            let kind = match *sub {
                "exec" => Kind::Exec,
                "attach" => Kind::Attach,
                "portforward" => Kind::PortForward,
                _ => return not_found(&format!("pods/{sub}")),
            };
            stream::handle(&state, kind, ns, name, request)
        }
        (Method::POST, ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"]) => {
            json_response(
                StatusCode::CREATED,
                &json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                    "metadata": { "creationTimestamp": null },
                    "status": { "userInfo": { "username": user.name, "groups": user.groups } },
                }),
            )
        }
        (_, [.., "echo"] | ["echo", ..]) => echo(user, request).await,
        (Method::GET, ["bytes"]) => {
            download(query.get("size").and_then(|s| s.parse().ok()).unwrap_or(0))
        }
        (_, ["faults", "slow"]) => {
            let ms = query.get("ms").and_then(|s| s.parse().ok()).unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            json_response(StatusCode::OK, &json!({ "slept": ms }))
        }
        (_, ["faults", "drop"]) => drop_mid_stream(),
        (Method::POST, ["audit-collector"]) => collect_audit(&state, request).await,
        _ => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({method} {path})"),
        ),
    }
}

fn method_not_allowed() -> Response<DoubleBody> {
    status(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

/// What a real apiserver lists at `/`: the paths it serves.
fn root_paths() -> Value {
    json!({
        "paths": [
            "/api", "/api/v1", "/apis", "/apis/authentication.k8s.io",
            "/apis/authentication.k8s.io/v1", "/healthz", "/livez", "/readyz", "/version",
        ],
    })
}

fn resource_list() -> Value {
    let resource = |name: &str, kind: &str, verbs: &[&str]| json!({ "name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs });
    json!({
        "kind": "APIResourceList", "groupVersion": "v1",
        "resources": [
            {
                "name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["po"],
            },
            resource("pods/log", "Pod", &["get"]),
            {
                "name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
                "verbs": ["list"], "shortNames": ["ev"],
            },
            resource("pods/exec", "PodExecOptions", &["create", "get"]),
            resource("pods/attach", "PodAttachOptions", &["create", "get"]),
            resource("pods/portforward", "PodPortForwardOptions", &["create", "get"]),
        ],
    })
}

fn name_selector(query: &Query) -> Option<&str> {
    query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
}

fn list_or_watch(
    state: &Arc<State>,
    namespace: Option<&str>,
    query: &Query,
    table: bool,
) -> Response<DoubleBody> {
    if query.flag("watch") {
        return watch(state, namespace, query, table);
    }
    let (pods, rv) = state.store.list(namespace, name_selector(query));
    let items: Vec<&Value> = pods.iter().map(|p| &**p).collect();
    if table {
        return json_response(StatusCode::OK, &table::pods(items, &rv.to_string()));
    }
    json_response(
        StatusCode::OK,
        &json!({ "kind": "PodList", "apiVersion": "v1", "metadata": { "resourceVersion": rv.to_string() }, "items": items }),
    )
}

fn watch(
    state: &Arc<State>,
    namespace: Option<&str>,
    query: &Query,
    table: bool,
) -> Response<DoubleBody> {
    let since = query.get("resourceVersion").and_then(|rv| rv.parse().ok());
    let (backlog, mut events) = match state.store.watch(since) {
        Ok(started) => started,
        Err(_) => {
            return status(StatusCode::GONE, "Expired", "too old resource version");
        }
    };
    let namespace = namespace.map(str::to_string);
    let name = name_selector(query).map(str::to_string);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs);
    let (sender, body) = streaming();
    let open = state.stats.open_watches.clone();
    open.fetch_add(1, Ordering::AcqRel);
    tokio::spawn(async move {
        let matches = |e: &super::store::Event| e.matches(namespace.as_deref(), name.as_deref());
        let line = |e: &super::store::Event| -> Vec<u8> {
            if !table {
                return e.to_line();
            }
            let object = table::pods([&*e.object], &e.rv.to_string());
            let mut line = serde_json::to_vec(&json!({ "type": e.kind, "object": object }))
                .unwrap_or_default();
            line.push(b'\n');
            line
        };
        let stream = async {
            for event in backlog.iter().filter(|e| matches(e)) {
                if sender.send(Ok(line(event).into())).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    received = events.recv() => match received {
                        Ok(event) if matches(&event) => {
                            if sender.send(Ok(line(&event).into())).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = sender.closed() => return,
                }
            }
        };
        match timeout {
            Some(limit) => {
                let _ = tokio::time::timeout(limit, stream).await;
            }
            None => stream.await,
        }
        open.fetch_sub(1, Ordering::AcqRel);
    });
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn read_json(request: Request<Incoming>) -> Result<Value, Box<Response<DoubleBody>>> {
    let body = request
        .into_body()
        .collect()
        .await
        .map_err(|e| {
            Box::new(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &e.to_string(),
            ))
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("the body is not JSON: {e}"),
        ))
    })
}

async fn create(
    state: &Arc<State>,
    namespace: &str,
    request: Request<Incoming>,
) -> Response<DoubleBody> {
    let pod = match read_json(request).await {
        Ok(pod) => pod,
        Err(response) => return *response,
    };
    match state.store.create(namespace, pod) {
        Ok(pod) => json_response(StatusCode::CREATED, &pod),
        Err(StoreError::AlreadyExists) => {
            status(StatusCode::CONFLICT, "AlreadyExists", "pods already exists")
        }
        Err(StoreError::Invalid(message)) => {
            status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &message)
        }
        Err(other) => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            &format!("{other:?}"),
        ),
    }
}

async fn patch(
    state: &Arc<State>,
    namespace: &str,
    name: &str,
    request: Request<Incoming>,
) -> Response<DoubleBody> {
    let patch = match read_json(request).await {
        Ok(patch) => patch,
        Err(response) => return *response,
    };
    match state.store.patch(namespace, name, &patch) {
        Ok(pod) => json_response(StatusCode::OK, &pod),
        Err(_) => not_found(&format!("pods \"{name}\"")),
    }
}

fn log(state: &Arc<State>, namespace: &str, name: &str, query: &Query) -> Response<DoubleBody> {
    let Some((lines, mut follow)) = state.store.follow_log(namespace, name) else {
        return not_found(&format!("pods \"{name}\""));
    };
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut response = if !query.flag("follow") {
        Response::new(full(text))
    } else {
        let (sender, body) = streaming();
        let key = (namespace.to_string(), name.to_string());
        tokio::spawn(async move {
            if sender.send(Ok(text.into())).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    received = follow.recv() => match received {
                        Ok((from, line)) if from == key => {
                            if sender.send(Ok(format!("{line}\n").into())).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = sender.closed() => return,
                }
            }
        });
        Response::new(body)
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// Reports what arrived: method, path, query, headers, identity, and how
/// many body bytes (counted, never held).
async fn echo(user: User, request: Request<Incoming>) -> Response<DoubleBody> {
    let (parts, mut body) = request.into_parts();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => body_bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        }
    }
    json_response(
        StatusCode::OK,
        &json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "user": { "username": user.name, "groups": user.groups },
            "bodyBytes": body_bytes,
            "time": now(),
        }),
    )
}

/// `size` bytes of a repeating pattern, streamed in 64 KiB chunks.
fn download(size: u64) -> Response<DoubleBody> {
    let chunk = Bytes::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let (sender, body) = streaming();
    tokio::spawn(async move {
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if sender.send(Ok(chunk.slice(..n))).await.is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, size.into());
    response
}

/// Starts a body and then breaks the connection under it.
fn drop_mid_stream() -> Response<DoubleBody> {
    let (sender, body) = streaming();
    tokio::spawn(async move {
        let _ = sender.send(Ok(Bytes::from_static(b"{\"partial\":"))).await;
        let _ = sender
            .send(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "fault: dropped mid-stream",
            )))
            .await;
    });
    Response::new(body)
}

/// An audit webhook collector, for the benchmark's soak: counts the events
/// of each `EventList`; while `collector_down` is set, answers 503 as a
/// collector that is down does.
async fn collect_audit(state: &State, request: Request<Incoming>) -> Response<DoubleBody> {
    if state.stats.collector_down.load(Ordering::Acquire) {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the collector is down",
        );
    }
    let Ok(body) = request.into_body().collect().await else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "the body broke");
    };
    let list: Value = serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
    let events = list["items"].as_array().map_or(0, Vec::len);
    state
        .stats
        .audit_events
        .fetch_add(events, Ordering::Relaxed);
    json_response(StatusCode::OK, &json!({}))
}
