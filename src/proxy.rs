//! The request handler, in stages: read the request once
//! ([`crate::request`]), admit it (origin, preflight, access token), route
//! it (`--www-prefix`, `--api-prefix`), check the filters, forward or relay
//! it, and finish (audit, metrics, the request line, CORS). Every failure is
//! answered through [`crate::status`]. One [`Shared`] (read-only after
//! start-up) serves every connection.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::access::AccessToken;
use crate::audit::{Audit, Record};
use crate::body::{Capture, ProxyBody};
use crate::client::ClientOrigin;
use crate::connection::{Activity, Busy, Limit, Served};
use crate::cors::{self, OriginPolicy};
use crate::filters::Filters;
use crate::forward::{self, Outbound};
use crate::handshake::{adopt_extended_connect, is_upgrade};
use crate::policy::Policy;
use crate::portforward::{Multiplexed, Multiplexer, Plan};
use crate::request::{PathError, RequestInfo, Verb};
use crate::status::ProxyError;
use crate::telemetry::{Decision, PortForwardEvent, Telemetry};
use crate::upgrade::Relays;
use crate::upstream::clusters::{Cluster, Clusters, Route};
use crate::www;

/// How long an exec, attach or port-forward session waits for a
/// `--max-connections` slot while every connection is busy.
const SESSION_SLOT_WAIT: Duration = Duration::from_secs(5);

/// How request paths are split between the API and static files.
#[derive(Debug, Clone)]
pub struct Routes {
    /// `--api-prefix`, always ending in `/`.
    pub api_prefix: String,
    /// Whether the prefix is removed before filtering and forwarding; kubectl
    /// keeps prefixes that start with `/api`.
    pub strip_api_prefix: bool,
    /// `--www` and `--www-prefix` (ending in `/`).
    pub www: Option<(PathBuf, String)>,
}

/// Everything a request needs, built once and never changed.
pub struct Shared {
    /// Where paths go.
    pub routes: Routes,
    /// The filters.
    pub filters: Filters,
    /// `--policy-file` and `--read-only`, when set.
    pub policy: Option<Policy>,
    /// Which browser origins may use kubegate.
    pub origins: OriginPolicy,
    /// The local access token, when one is required.
    pub access_token: Option<AccessToken>,
    /// The apiservers: one at `/`, or one per context.
    pub clusters: Clusters,
    /// `--forward-client-credentials`.
    pub forward_client_credentials: bool,
    /// Upgraded connections being relayed.
    pub relays: Relays,
    /// Shared port-forward sessions, unless `--port-forward-multiplex=false`.
    pub port_forward: Option<Arc<Multiplexer>>,
    /// `--max-connections`: a slot per client connection, and per relayed
    /// session (which outlives its connection in hyper).
    pub limit: Limit,
    /// The audit trail, when on.
    pub audit: Option<Arc<Audit>>,
    /// `--record-sessions-dir`, when set.
    pub recorder: Option<Arc<crate::recording::Recorder>>,
    /// What `/metrics` reports: counted here and in every subsystem.
    pub metrics: Arc<Telemetry>,
    /// Whether `/readyz` says kubegate is shutting down.
    pub readiness: Arc<crate::admin::Readiness>,
}

/// The hyper service for one client connection.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    origin: ClientOrigin,
    activity: Arc<Activity>,
}

/// Where a request goes, read from its path once.
enum Target<'a> {
    /// A `--www` file: the directory and the path under `--www-prefix`.
    Www(&'a PathBuf, &'a str),
    /// The API of `cluster`, as its apiserver will read the request.
    Api(RequestInfo<'a>, &'a Cluster),
    /// `GET /clusters` with `--contexts`: the served contexts.
    ClusterList,
    /// `--serve-recordings`: what follows `/kubegate/recordings`.
    Recordings(&'a str),
    /// An API path kubegate cannot read as the apiserver would.
    Unreadable(PathError),
    /// Outside both prefixes.
    NotFound,
    /// With `--contexts`, a path that names no served context.
    UnknownContext,
}

impl<'a> Target<'a> {
    fn read(
        routes: &'a Routes,
        clusters: &'a Clusters,
        method: &'a Method,
        uri: &'a Uri,
        upgrade: bool,
        recordings: bool,
    ) -> Self {
        let raw = uri.path();
        if let Some((dir, prefix)) = &routes.www
            && let Some(rest) = raw.strip_prefix(prefix.as_str())
        {
            // Keep the prefix's closing slash: the file path is absolute.
            return Target::Www(dir, &raw[raw.len() - rest.len() - 1..]);
        }
        if recordings
            && let Some(rest) = raw.strip_prefix(crate::recording::SERVED)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return Target::Recordings(rest);
        }
        let Some(rest) = raw.strip_prefix(routes.api_prefix.as_str()) else {
            return Target::NotFound;
        };
        // kubectl strips the prefix but keeps the slash after it, and keeps
        // prefixes that start with /api whole.
        let api_path = match routes.strip_api_prefix {
            true => &raw[raw.len() - rest.len() - 1..],
            false => raw,
        };
        let (cluster, api_path) = match clusters.route(api_path) {
            Route::To(cluster, inside) => (cluster, inside),
            Route::List => return Target::ClusterList,
            Route::Unknown => return Target::UnknownContext,
        };
        match RequestInfo::read(method.as_str(), api_path, uri.query(), upgrade) {
            Ok(info) => Target::Api(info, cluster),
            Err(error) => Target::Unreadable(error),
        }
    }

    fn info(&self) -> Option<&RequestInfo<'a>> {
        match self {
            Target::Api(info, _) => Some(info),
            _ => None,
        }
    }

    /// The verb metrics count the request under: for a request that is
    /// not one the apiserver could read, its method.
    fn verb(&self, method: &Method) -> Verb {
        self.info()
            .map_or_else(|| Verb::of_method(method.as_str()), RequestInfo::verb)
    }
}

/// What the finishing stage needs once the request itself is gone.
struct Exchange {
    began: Instant,
    method: Method,
    verb: Verb,
    origin: Option<HeaderValue>,
    record: Option<Record>,
    /// The path for the request line, copied only when that line is on.
    logged_path: Option<String>,
}

impl ProxyService {
    /// A service for a connection from `origin`, counting its requests in
    /// `activity`.
    pub fn new(shared: Arc<Shared>, origin: ClientOrigin, activity: Arc<Activity>) -> Self {
        ProxyService {
            shared,
            origin,
            activity,
        }
    }

    async fn handle(self, request: Request<Incoming>) -> Response<ProxyBody> {
        let began = Instant::now();
        let (mut head, body) = request.into_parts();
        // The request is read from its own copy of the method and URI, so
        // that the head can move on while the reading is in use.
        let uri = std::mem::take(&mut head.uri);
        if head.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
            // The apiserver lower-cases the method to find the verb, so
            // `delete` deletes: every stage here reads it as `DELETE`.
            if let Ok(upper) =
                Method::from_bytes(head.method.as_str().to_ascii_uppercase().as_bytes())
            {
                head.method = upper;
            }
        }
        if adopt_extended_connect(&mut head) {
            self.shared
                .metrics
                .port_forward(PortForwardEvent::WebSocketOverHttp2);
        }
        let method = head.method.clone();
        let target = Target::read(
            &self.shared.routes,
            &self.shared.clusters,
            &method,
            &uri,
            is_upgrade(&head.headers),
            self.shared.recorder.as_ref().is_some_and(|r| r.serves()),
        );
        let record = match &self.shared.audit {
            // A request refused because the log cannot be written has no
            // record to queue behind the ones waiting for the disk.
            Some(audit) if !audit.refusing() => {
                audit
                    .begin(&head, &uri, target.info(), &self.origin.peer)
                    .await
            }
            _ => None,
        };
        if let (Some(record), Target::Api(_, cluster)) = (&record, &target)
            && !cluster.name.is_empty()
        {
            record.annotate(CONTEXT_ANNOTATION, cluster.name.clone());
        }
        let exchange = Exchange {
            began,
            verb: target.verb(&method),
            origin: head.headers.get(header::ORIGIN).cloned(),
            logged_path: tracing::enabled!(target: "kubegate::request", tracing::Level::INFO)
                .then(|| uri.path().to_string()),
            method: method.clone(),
            record,
        };
        let result = self
            .respond(head, body, &uri, target, exchange.record.as_ref())
            .await;
        self.finish(exchange, result).await
    }

    /// Every stage between reading the request and finishing it.
    async fn respond(
        &self,
        mut head: Parts,
        body: Incoming,
        uri: &Uri,
        target: Target<'_>,
        record: Option<&Record>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let host = host(&head.headers, uri);
        if let Some(preflight) = self.admit(&head, host)? {
            return Ok(preflight);
        }
        if head.method == Method::CONNECT {
            // A tunnel to anywhere is not the API's to give.
            return Err(ProxyError::MethodNotAllowed("CONNECT"));
        }
        let (info, cluster) = match target {
            Target::Www(dir, path) => {
                self.shared.filters.check_host(host)?;
                // Boxed, as each path only some requests take: a request's
                // future is held by every request in flight (each watch
                // while it opens), so it is kept to what all of them need.
                return Box::pin(www::serve(dir, path, &head.method)).await;
            }
            _ if !self.authenticated(&head.headers) => return Err(ProxyError::Unauthorized),
            Target::NotFound => return Err(ProxyError::NotFound(uri.path().to_string())),
            Target::UnknownContext => {
                return Err(ProxyError::UnknownContext(uri.path().to_string()));
            }
            Target::Unreadable(error) => return Err(error.into()),
            Target::ClusterList => {
                // The list names the apiservers: no DNS-rebinding page reads it.
                self.shared.filters.check_host(host)?;
                return Ok(cluster_list(&self.shared.clusters));
            }
            Target::Recordings(path) => {
                self.shared.filters.check_host(host)?;
                let Some(recorder) = &self.shared.recorder else {
                    return Err(ProxyError::NotFound(uri.path().to_string()));
                };
                return Ok(Box::pin(recorder.serve(path, &head.method)).await);
            }
            Target::Api(info, cluster) => (info, cluster),
        };
        self.shared
            .filters
            .check(head.method.as_str(), host, &info)?;
        if let Some(policy) = &self.shared.policy {
            match record {
                // An audited request records which rule let it through.
                Some(record) => record.annotate(
                    crate::audit::REASON,
                    format!("kubegate: {}", policy.explain(&info)?),
                ),
                None => policy.check(&info)?,
            }
        }
        let path_and_query = upstream_path(&info, uri)?;
        if self.shared.access_token.is_some() {
            // The access token is kubegate's own; it never goes upstream.
            head.headers.remove(header::AUTHORIZATION);
        }
        let outbound = Outbound {
            upstream: &cluster.upstream,
            client: &self.origin,
            forward_client_credentials: self.shared.forward_client_credentials,
            // kubegate's audit ID goes upstream, where the apiserver adopts
            // it, so both logs join on one ID; the client's is annotated.
            audit_id: record.and_then(Record::header),
        };
        if info.upgrade() {
            if carries_body(&head.headers) {
                // The relay sends none, and the apiserver would wait for it.
                return Err(ProxyError::UpgradeWithBody);
            }
            let record = record.cloned();
            head.extensions.insert(Busy::of(&self.activity));
            let limit = &self.shared.limit;
            // At the limit, room is made for the session as for a new
            // connection; only if every connection stays busy is it refused.
            let slot = tokio::time::timeout(SESSION_SLOT_WAIT, limit.take())
                .await
                .map_err(|_| ProxyError::AtConnectionLimit(limit.max()))?;
            // A session is shared only when kubegate's identity is the one
            // that goes upstream.
            if let Some(multiplexer) = &self.shared.port_forward
                && !self.shared.forward_client_credentials
                && let Some(plan) = Plan::of(&cluster.name, &info, &head, path_and_query.clone())?
            {
                let relays = &self.shared.relays;
                let serving =
                    multiplexer.serve(&cluster.upstream, relays, plan, head, record, slot);
                let (returned_head, returned_record, returned_slot) =
                    match Box::pin(serving).await? {
                        Multiplexed::Answered(answer) => return Ok(answer),
                        Multiplexed::Relay(returned) => *returned,
                    };
                let relay = self.shared.relays.relay(
                    &outbound,
                    returned_head,
                    path_and_query,
                    (returned_record, None),
                    returned_slot,
                );
                let answer = Box::pin(relay).await?;
                let server = cluster.upstream.authority().as_str();
                multiplexer.relayed(&cluster.name, answer.status(), server);
                return Ok(answer);
            }
            let recording = match (&self.shared.recorder, info.resource()) {
                (Some(recorder), Some(resource)) => recorder.plan(
                    &resource,
                    path_and_query.query().unwrap_or_default(),
                    record.as_ref().map(Record::id),
                )?,
                _ => None,
            };
            let relay = self.shared.relays.relay(
                &outbound,
                head,
                path_and_query,
                (record, recording),
                slot,
            );
            return Box::pin(relay).await;
        }
        forward(&outbound, head, body, path_and_query, record).await
    }

    /// Admission: audit able to record, a browser origin allowed, and a
    /// preflight answered here (`Some`).
    fn admit(
        &self,
        head: &Parts,
        host: Option<&str>,
    ) -> Result<Option<Response<ProxyBody>>, ProxyError> {
        if self.shared.audit.as_ref().is_some_and(|a| a.refusing()) {
            return Err(ProxyError::AuditUnavailable);
        }
        let Some(origin) = head.headers.get(header::ORIGIN) else {
            cors::check_fetch_site(&head.headers)?;
            return Ok(None);
        };
        self.shared
            .origins
            .check(origin, host, self.origin.proto_str())?;
        Ok(cors::is_preflight(&head.method, &head.headers)
            .then(|| cors::preflight(origin, &head.headers)))
    }

    /// Whether the request carries the local access token, when one is
    /// required.
    fn authenticated(&self, headers: &HeaderMap) -> bool {
        self.shared
            .access_token
            .as_ref()
            .is_none_or(|token| token.presented(headers))
    }

    /// The last stage: audit's answer, metrics, the request line and CORS.
    async fn finish(
        &self,
        exchange: Exchange,
        result: Result<Response<ProxyBody>, ProxyError>,
    ) -> Response<ProxyBody> {
        let Exchange {
            began,
            method,
            verb,
            origin,
            record,
            logged_path,
        } = exchange;
        let refused_origin =
            matches!(&result, Err(ProxyError::Denied(d)) if d.flag == "accept-origins");
        if let Err(ProxyError::Forbidden(refusal)) = &result {
            self.shared.metrics.policy_refusal(&refusal.rule);
        }
        let decision = match &result {
            Err(error) if error.is_refusal() => Decision::forbid,
            _ => Decision::allow,
        };
        let mut response = match result {
            Ok(response) => match &record {
                Some(record) if response.status() != StatusCode::SWITCHING_PROTOCOLS => {
                    record.allowed();
                    let code = response.status();
                    record.started(code).await;
                    response.map(|body| record.complete_with_body(code, body))
                }
                _ => response,
            },
            Err(error) => {
                let (code, _) = error.code_and_reason();
                if code.is_server_error() {
                    tracing::warn!(%method, %code, %error, "request failed");
                } else {
                    tracing::info!(%method, %code, %error, "request refused");
                }
                if let Some(record) = &record {
                    record.refused(&error).await;
                }
                error.to_response()
            }
        };
        if let Some(id) = record.as_ref().and_then(Record::header) {
            response.headers_mut().insert("audit-id", id);
        }
        let elapsed = began.elapsed();
        self.shared
            .metrics
            .request(verb.as_str(), response.status().as_u16(), decision, elapsed);
        if let Some(path) = logged_path {
            tracing::info!(
                target: "kubegate::request",
                method = %method,
                path,
                verb = verb.as_str(),
                status = response.status().as_u16(),
                ms = elapsed.as_secs_f64() * 1e3,
                audit_id = record.as_ref().map_or("", |r| r.id()),
                "request"
            );
        }
        if let Some(origin) = origin.filter(|_| !refused_origin)
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            cors::allow(response.headers_mut(), &origin);
        }
        response
    }
}

/// The audit annotation naming the context a request went to.
const CONTEXT_ANNOTATION: &str = "kubegate.io/context";

/// `GET /clusters`: the served contexts as JSON.
fn cluster_list(clusters: &Clusters) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(clusters.listing()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Sends an ordinary request to the apiserver and streams its answer back.
async fn forward(
    outbound: &Outbound<'_>,
    mut head: Parts,
    body: Incoming,
    path_and_query: PathAndQuery,
    record: Option<&Record>,
) -> Result<Response<ProxyBody>, ProxyError> {
    head.uri = outbound.upstream.uri_for(path_and_query)?;
    outbound.request_headers(&mut head.headers);
    // At levels Request and above, audit keeps a bounded copy of the body
    // as it streams past.
    let body = match record {
        Some(record) if record.wants_request_body() => {
            let record = record.clone();
            let limit = record.max_body_bytes();
            let done = Box::new(move |seen| record.request_body(seen));
            Either::Right(Either::Right(Capture::new(body, limit, done)))
        }
        _ => Either::Left(body),
    };
    let mut response = outbound
        .upstream
        .send(Request::from_parts(head, body))
        .await?;
    forward::response_headers(response.headers_mut());
    Ok(response)
}

/// Whether a request announces a body (`Content-Length` above 0, or any
/// `Transfer-Encoding`).
fn carries_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// The `Host` header, or the HTTP/2 `:authority`.
fn host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// The path and query to send: the request's own when it was already
/// canonical and unprefixed (no allocation), else rebuilt.
fn upstream_path(info: &RequestInfo<'_>, uri: &Uri) -> Result<PathAndQuery, ProxyError> {
    let encoded = info.path().encoded();
    if encoded == uri.path()
        && let Some(original) = uri.path_and_query()
    {
        return Ok(original.clone());
    }
    let text = match uri.query() {
        Some(query) => format!("{encoded}?{query}"),
        None => encoded.into_owned(),
    };
    PathAndQuery::try_from(text).map_err(|e| ProxyError::Upstream {
        server: String::new(),
        reason: format!("cannot form the upstream path: {e}"),
    })
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<Served>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        let in_flight = self.activity.begin();
        Box::pin(async move {
            let response = this.handle(request).await;
            Ok(response.map(|body| Served::new(body, in_flight)))
        })
    }
}
