//! The request handler: route, canonicalise, check, forward; every failure
//! answered through [`crate::status`]. One [`Shared`] (read-only after
//! start-up) serves every connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Request, Response, header};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::access::AccessToken;
use crate::admin::{self, Decision, Metrics};
use crate::audit::{Audit, Record};
use crate::body::{Capture, ProxyBody};
use crate::config::Routes;
use crate::cors::{self, OriginPolicy};
use crate::forward::{self, ClientOrigin};
use crate::policy::{NormalPath, Policy, normalize};
use crate::status::ProxyError;
use crate::upgrade::{self, Relays, is_upgrade};
use crate::upstream::Upstream;
use crate::www;

/// Everything a request needs, built once and never changed.
pub struct Shared {
    /// Where paths go.
    pub routes: Routes,
    /// The filters.
    pub policy: Policy,
    /// Which browser origins may use kubegate.
    pub origins: OriginPolicy,
    /// The local access token, when one is required.
    pub access_token: Option<AccessToken>,
    /// The apiserver.
    pub upstream: Upstream,
    /// `--forward-client-credentials`.
    pub forward_client_credentials: bool,
    /// Upgraded connections being relayed.
    pub relays: Relays,
    /// The audit trail, when on.
    pub audit: Option<Arc<Audit>>,
    /// What `/metrics` and `/readyz` report.
    pub metrics: Arc<Metrics>,
}

/// The hyper service for one client connection.
#[derive(Clone)]
pub struct ProxyService {
    shared: Arc<Shared>,
    origin: ClientOrigin,
}

impl ProxyService {
    /// A service for a connection from `origin`.
    pub fn new(shared: Arc<Shared>, origin: ClientOrigin) -> Self {
        ProxyService { shared, origin }
    }

    async fn handle(self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let began = std::time::Instant::now();
        let upgrade = is_upgrade(request.headers());
        let verb = admin::verb(
            request.method(),
            request.uri().path(),
            request.uri().query(),
            upgrade,
        );
        // The request line (at -v=1 and up) needs the path after the request
        // is gone; copy it only when that line is written.
        let logged_path = tracing::enabled!(target: "kubegate::request", tracing::Level::INFO)
            .then(|| request.uri().path().to_string());
        let method = request.method().clone();
        let origin = request.headers().get(header::ORIGIN).cloned();
        let record = match &self.shared.audit {
            Some(audit) => {
                audit
                    .begin(&request, &self.origin.peer, is_upgrade(request.headers()))
                    .await
            }
            None => None,
        };
        if let Some(record) = &record {
            // kubegate's audit ID goes upstream, where the apiserver adopts
            // it, so both logs join on one ID; the client's is annotated.
            request.headers_mut().remove("audit-id");
            if let Some(id) = record.header() {
                request.headers_mut().insert("audit-id", id);
            }
            request.extensions_mut().insert(record.clone());
        }
        let checked = match &origin {
            Some(origin) => {
                self.shared
                    .origins
                    .check(origin, host(&request), self.origin.proto_str())
            }
            None => Ok(()),
        };
        let refusing = self
            .shared
            .audit
            .as_ref()
            .is_some_and(|audit| audit.refusing());
        let result = match (checked, &origin) {
            _ if refusing => Err(ProxyError::AuditUnavailable),
            (Err(denial), _) => Err(ProxyError::from(denial)),
            (Ok(()), Some(origin)) if cors::is_preflight(&method, request.headers()) => {
                Ok(cors::preflight(origin, request.headers()))
            }
            (Ok(()), _) => self.route(request).await,
        };
        let allowed = result
            .as_ref()
            .err()
            .is_none_or(|e| !matches!(e, ProxyError::Denied(d) if d.flag == "accept-origins"));
        let decision = match &result {
            Err(ProxyError::Denied(_) | ProxyError::Unauthorized | ProxyError::BadPath(_)) => {
                Decision::forbid
            }
            _ => Decision::allow,
        };
        let mut response = match result {
            Ok(response) => match &record {
                Some(record) if response.status() != http::StatusCode::SWITCHING_PROTOCOLS => {
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
            .request(verb, response.status(), decision, elapsed);
        if let Some(path) = logged_path {
            tracing::info!(
                target: "kubegate::request",
                method = %method,
                path,
                status = response.status().as_u16(),
                ms = elapsed.as_secs_f64() * 1e3,
                audit_id = record.as_ref().map_or("", |r| r.id()),
                "request"
            );
        }
        if let Some(origin) = origin.filter(|_| allowed)
            && response.status() != http::StatusCode::SWITCHING_PROTOCOLS
        {
            cors::allow(response.headers_mut(), &origin);
        }
        response
    }

    async fn route(
        &self,
        mut request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let routes = &self.shared.routes;
        let raw = request.uri().path();
        if let Some((dir, prefix)) = &routes.www
            && raw.starts_with(prefix.as_str())
        {
            return www::serve(dir, &raw[prefix.len() - 1..], request.method()).await;
        }
        if let Some(token) = &self.shared.access_token {
            if !token.presented(request.headers()) {
                return Err(ProxyError::Unauthorized);
            }
            // The access token is kubegate's own; it never goes upstream.
            request.headers_mut().remove(header::AUTHORIZATION);
        }
        let raw = request.uri().path();
        let Some(rest) = raw.strip_prefix(routes.api_prefix.as_str()) else {
            return Err(ProxyError::NotFound(raw.to_string()));
        };
        // kubectl strips the prefix but keeps the slash after it, and keeps
        // prefixes that start with /api whole.
        let api_path = match routes.strip_api_prefix {
            true => &raw[raw.len() - rest.len() - 1..],
            false => raw,
        };
        let path = normalize(api_path)?;
        let host = host(&request);
        let upgrade = is_upgrade(request.headers());
        self.shared
            .policy
            .check(request.method().as_str(), upgrade, host, &path)?;
        let path_and_query = upstream_path(&path, request.uri().query(), api_path, request.uri())?;
        if upgrade {
            let shared = &self.shared;
            return upgrade::relay(
                &shared.upstream,
                &shared.relays,
                &shared.metrics,
                &self.origin,
                shared.forward_client_credentials,
                request,
                path_and_query,
            )
            .await;
        }
        self.forward(request, path_and_query).await
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        path_and_query: PathAndQuery,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upstream = &self.shared.upstream;
        let (mut parts, body) = request.into_parts();
        parts.uri = upstream.uri_for(path_and_query)?;
        forward::request_headers(
            &mut parts.headers,
            &self.origin,
            self.shared.forward_client_credentials,
        );
        upstream.authorize(&mut parts.headers);
        // At levels Request and above, audit keeps a bounded copy of the body
        // as it streams past.
        let body = match parts.extensions.get::<Record>() {
            Some(record) if record.wants_request_body() => {
                let record = record.clone();
                let limit = record.max_body_bytes();
                let done = Box::new(move |seen| record.request_body(seen));
                Either::Right(Either::Right(Capture::new(body, limit, done)))
            }
            _ => Either::Left(body),
        };
        let mut response = upstream.send(Request::from_parts(parts, body)).await?;
        forward::response_headers(response.headers_mut());
        Ok(response)
    }
}

/// The `Host` header, or the HTTP/2 `:authority`.
fn host(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

/// The path and query to send: the request's own when it was already
/// canonical and unprefixed (no allocation), else rebuilt.
fn upstream_path(
    path: &NormalPath<'_>,
    query: Option<&str>,
    api_path: &str,
    uri: &http::Uri,
) -> Result<PathAndQuery, ProxyError> {
    let encoded = path.encoded();
    if encoded == uri.path()
        && encoded == api_path
        && let Some(original) = uri.path_and_query()
    {
        return Ok(original.clone());
    }
    let text = match query {
        Some(query) => format!("{encoded}?{query}"),
        None => encoded.into_owned(),
    };
    PathAndQuery::try_from(text).map_err(|e| ProxyError::Upstream {
        server: String::new(),
        reason: format!("cannot form the upstream path: {e}"),
    })
}

impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}
