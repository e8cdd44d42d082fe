//! The one reading of a request: its canonical path ([`path`]) and what the
//! apiserver will take it to mean, by the rules of k8s.io/apiserver's
//! `RequestInfoFactory` (`pkg/endpoints/request/requestinfo.go`): verb, API
//! group and version, namespace, resource, subresource, name, and whether it
//! is long-running. Policy, audit, metrics and the request log all read this
//! one value; nothing else parses a path.
//!
//! Reading borrows from the request; it allocates only for a path with
//! escapes and for a collection read's `fieldSelector`.

pub mod path;

use std::borrow::Cow;

pub use path::{NormalPath, PathError, normalize};

/// The Kubernetes verb of a request, as authorization and audit name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `GET` of a named object, or a non-resource `GET`.
    Get,
    /// `GET` of a collection.
    List,
    /// `GET` with `watch`, or under the legacy `/watch/` prefix.
    Watch,
    /// `POST` to a resource, and an exec, attach or port-forward however
    /// it is opened: SPDY's `POST` is a `create`, and since 1.35 the
    /// apiserver also requires `create` of a WebSocket `GET` upgrade (a
    /// second check; its own request info keeps `get`).
    Create,
    /// `PUT` to a resource.
    Update,
    /// `PATCH`.
    Patch,
    /// `DELETE` of a named object, or a non-resource `DELETE`.
    Delete,
    /// `DELETE` of a collection.
    DeleteCollection,
    /// The legacy `/api/v1/proxy/...` paths.
    Proxy,
    /// A non-resource `POST`.
    Post,
    /// A non-resource `PUT`.
    Put,
    /// A non-resource `HEAD`.
    Head,
    /// A non-resource `OPTIONS`.
    Options,
    /// Any other method: the apiserver's verb is then `""` for a resource
    /// request and the lower-cased method otherwise.
    Other,
}

impl Verb {
    /// The verb of a non-resource request: the method, lower-cased.
    pub fn of_method(method: &str) -> Verb {
        match method {
            "GET" => Verb::Get,
            "POST" => Verb::Post,
            "PUT" => Verb::Put,
            "PATCH" => Verb::Patch,
            "DELETE" => Verb::Delete,
            "HEAD" => Verb::Head,
            "OPTIONS" => Verb::Options,
            _ => Verb::Other,
        }
    }

    /// The verb as Kubernetes writes it (`other` for [`Verb::Other`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::DeleteCollection => "deletecollection",
            Verb::Proxy => "proxy",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Head => "head",
            Verb::Options => "options",
            Verb::Other => "other",
        }
    }
}

/// What a resource request is about; empty strings for what the path does
/// not name (the core group is `""`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resource<'r> {
    /// The API group.
    pub group: &'r str,
    /// The API version.
    pub version: &'r str,
    /// The namespace.
    pub namespace: &'r str,
    /// The resource (`pods`).
    pub resource: &'r str,
    /// The subresource (`log`, `exec`, `status`).
    pub subresource: &'r str,
    /// The object's name.
    pub name: &'r str,
}

/// A request as the apiserver reads it.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    path: NormalPath<'a>,
    method: &'a str,
    verb: Verb,
    resource: Option<Spans>,
    /// A collection read narrowed to one object by
    /// `fieldSelector=metadata.name=NAME`: the apiserver takes NAME as the
    /// request's name.
    selected_name: Option<String>,
    long_running: bool,
    upgrade: bool,
}

/// Where each part of a resource request is in the canonical path.
#[derive(Debug, Clone, Copy, Default)]
struct Spans {
    group: Span,
    version: Span,
    namespace: Span,
    resource: Span,
    subresource: Span,
    name: Span,
}

/// A byte range of the canonical path (at most [`path::MAX_PATH_BYTES`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u16,
    end: u16,
}

impl Span {
    fn of(self, text: &str) -> &str {
        text.get(usize::from(self.start)..usize::from(self.end))
            .unwrap_or_default()
    }
}

/// The paths the apiserver treats as API groups; `api` has no group.
const API_PREFIX: &str = "api";
const APIS_PREFIX: &str = "apis";
/// Verbs spelled as a path segment before the resource.
const SPECIAL_VERBS: [&str; 2] = ["proxy", "watch"];
/// Segments after `namespaces/NAME` that are subresources of the
/// namespace, not resources in it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];
/// The pod subresources that open a stream: exec, attach, port-forward.
pub const STREAM_SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];
/// Subresources the apiserver serves as long-running requests.
const LONG_RUNNING_SUBRESOURCES: [&str; 5] = ["attach", "exec", "proxy", "log", "portforward"];
/// How many leading segments decide a request's meaning: prefix, group,
/// version, special verb, `namespaces/NAME`, then resource, name and
/// subresource.
const MEANINGFUL_SEGMENTS: usize = 9;

impl<'a> RequestInfo<'a> {
    /// Reads a request: `path` is the path the apiserver will see (after
    /// `--api-prefix`), `upgrade` whether it asks to switch protocols.
    ///
    /// # Errors
    ///
    /// A [`PathError`] when the path could be read two ways, or names a
    /// special verb (`watch`, `proxy`) with nothing after it, which the
    /// apiserver cannot read either.
    pub fn read(
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        upgrade: bool,
    ) -> Result<RequestInfo<'a>, PathError> {
        let path = normalize(path)?;
        let mut info = RequestInfo {
            method,
            verb: Verb::of_method(method),
            resource: None,
            selected_name: None,
            long_running: false,
            upgrade,
            path,
        };
        let text = info.path.as_str();
        let (parts, count) = segments(text);
        let part = |i: usize| parts.get(i).map_or("", |span| span.of(text));
        let mut spans = Spans::default();
        let mut next = match part(0) {
            API_PREFIX if count >= 3 => 1,
            APIS_PREFIX if count >= 4 => {
                spans.group = parts[1];
                2
            }
            _ => {
                info.long_running = text.starts_with("/debug/pprof/");
                return Ok(info);
            }
        };
        spans.version = parts[next];
        next += 1;
        let special = SPECIAL_VERBS.contains(&part(next));
        let mut verb = match part(next) {
            special if SPECIAL_VERBS.contains(&special) => {
                let (verb, name) = match special {
                    "watch" => (Verb::Watch, "watch"),
                    _ => (Verb::Proxy, "proxy"),
                };
                if count - next < 2 {
                    return Err(PathError::NoResource(name));
                }
                next += 1;
                verb
            }
            _ => resource_verb(method),
        };
        if part(next) == "namespaces" && count - next > 1 {
            spans.namespace = parts[next + 1];
            if count - next > 2 && !NAMESPACE_SUBRESOURCES.contains(&part(next + 2)) {
                next += 2;
            }
        }
        let rest = count - next;
        if rest >= 3 && verb != Verb::Proxy {
            spans.subresource = parts[next + 2];
        }
        if rest >= 2 {
            spans.name = parts[next + 1];
        }
        spans.resource = parts[next];
        let named = spans.name != Span::default();
        if !named && verb == Verb::Get {
            let (watch, selected) = read_query(query);
            verb = if watch { Verb::Watch } else { Verb::List };
            info.selected_name = selected;
        }
        if !named && verb == Verb::Delete {
            verb = Verb::DeleteCollection;
        }
        info.long_running = matches!(verb, Verb::Watch | Verb::Proxy)
            || LONG_RUNNING_SUBRESOURCES.contains(&spans.subresource.of(text));
        // exec, attach and port-forward need `create`: SPDY's POST is one,
        // and since 1.35 the apiserver also requires it of a WebSocket GET.
        // Any other upgrade keeps its method's verb (a WebSocket watch is a
        // watch; a DELETE with an Upgrade header is still a delete).
        let subresource = spans.subresource.of(text);
        if upgrade
            && !special
            && matches!(method, "GET" | "POST")
            && spans.resource.of(text) == "pods"
            && STREAM_SUBRESOURCES.contains(&subresource)
        {
            verb = Verb::Create;
        }
        info.verb = verb;
        info.resource = Some(spans);
        Ok(info)
    }

    /// The canonical path.
    pub fn path(&self) -> &NormalPath<'a> {
        &self.path
    }

    /// The verb.
    pub fn verb(&self) -> Verb {
        self.verb
    }

    /// The verb as the apiserver writes it in audit events: for a method
    /// outside the API's verbs, `""` on a resource and the lower-cased
    /// method elsewhere.
    pub fn verb_text(&self) -> Cow<'static, str> {
        match (self.verb, &self.resource) {
            (Verb::Other, Some(_)) => Cow::Borrowed(""),
            (Verb::Other, None) => Cow::Owned(self.method.to_ascii_lowercase()),
            (verb, _) => Cow::Borrowed(verb.as_str()),
        }
    }

    /// The resource, for a resource request; `None` for discovery and
    /// other non-resource paths.
    pub fn resource(&self) -> Option<Resource<'_>> {
        let spans = self.resource?;
        let text = self.path.as_str();
        Some(Resource {
            group: spans.group.of(text),
            version: spans.version.of(text),
            namespace: spans.namespace.of(text),
            resource: spans.resource.of(text),
            subresource: spans.subresource.of(text),
            name: match &self.selected_name {
                Some(name) => name,
                None => spans.name.of(text),
            },
        })
    }

    /// Whether the apiserver serves it as long-running (watch, proxy, exec,
    /// attach, port-forward, logs): it then writes `ResponseStarted`.
    pub fn long_running(&self) -> bool {
        self.long_running
    }

    /// Whether the request asks to switch protocols.
    pub fn upgrade(&self) -> bool {
        self.upgrade
    }
}

/// The verb of a resource request, before list, watch and deletecollection
/// are told apart.
fn resource_verb(method: &str) -> Verb {
    match method {
        "GET" | "HEAD" => Verb::Get,
        "POST" => Verb::Create,
        "PUT" => Verb::Update,
        "PATCH" => Verb::Patch,
        "DELETE" => Verb::Delete,
        _ => Verb::Other,
    }
}

/// The first [`MEANINGFUL_SEGMENTS`] segments of a canonical path, and how
/// many there are in all.
fn segments(text: &str) -> ([Span; MEANINGFUL_SEGMENTS], usize) {
    let mut spans = [Span::default(); MEANINGFUL_SEGMENTS];
    let mut count = 0;
    if text.len() <= 1 {
        return (spans, 0);
    }
    let mut start = 1;
    for segment in text[1..].split('/') {
        let end = start + segment.len();
        if let Some(span) = spans.get_mut(count) {
            // Canonical paths are at most MAX_PATH_BYTES, so offsets fit.
            *span = Span {
                start: u16::try_from(start).unwrap_or(u16::MAX),
                end: u16::try_from(end).unwrap_or(u16::MAX),
            };
        }
        count += 1;
        start = end + 1;
    }
    (spans, count)
}

/// From the query of a collection read: whether it is a watch, and the
/// name a `fieldSelector` narrows it to.
///
/// `watch` is true for any first value but `0` and `false` (any case), as
/// the apiserver converts a query value to a bool, so `?watch` is a watch.
/// A query the apiserver cannot decode as list options (a bad field
/// selector, a `limit` or `timeoutSeconds` that is not a number) names no
/// object.
fn read_query(query: Option<&str>) -> (bool, Option<String>) {
    let (mut watch, mut selector, mut limit, mut timeout) = (None, None, None, None);
    for (key, value) in query_pairs(query) {
        let first = match key.as_ref() {
            "watch" => &mut watch,
            "fieldSelector" => &mut selector,
            "limit" => &mut limit,
            "timeoutSeconds" => &mut timeout,
            _ => continue,
        };
        first.get_or_insert(value);
    }
    let number =
        |value: &Option<Cow<'_, str>>| value.as_ref().is_none_or(|v| v.parse::<i64>().is_ok());
    let decodable = number(&limit) && number(&timeout);
    let watch = watch.is_some_and(|v| !(v == "0" || v.eq_ignore_ascii_case("false")));
    let name = selector
        .filter(|_| decodable)
        .and_then(|selector| selected_name(&selector));
    (watch, name)
}

/// The decoded `key=value` pairs of a query as Go's `url.ParseQuery` yields
/// them: `+` is a space, and a pair with a `;` or a malformed escape is
/// skipped, so that kubegate never reads a parameter the apiserver does not.
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';') && escapes_are_whole(pair))
        .filter_map(|pair| form_urlencoded::parse(pair.as_bytes()).next())
}

/// Whether every `%` starts a two-hex-digit escape.
fn escapes_are_whole(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

/// The name a field selector requires exactly, as the apiserver's
/// `fields.ParseSelector` and `RequiresExactMatch("metadata.name")` read
/// it: a `metadata.name=NAME` or `metadata.name==NAME` term (the first in
/// sorted order), and only when the whole selector parses and NAME is a
/// valid path segment.
fn selected_name(selector: &str) -> Option<String> {
    let mut found: Option<(&str, String)> = None;
    for term in split_unescaped(selector, ',').filter(|t| !t.is_empty()) {
        let (field, operator, value) = split_term(term)?;
        let value = unescape(value)?;
        if field == "metadata.name"
            && operator != "!="
            && found.as_ref().is_none_or(|(first, _)| term < *first)
        {
            found = Some((term, value));
        }
    }
    let (_, name) = found?;
    let valid = !matches!(name.as_str(), "" | "." | "..") && !name.contains(['/', '%']);
    valid.then_some(name)
}

/// Splits on `separator` where it is not escaped with `\`.
fn split_unescaped(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut escaped = false;
    text.split(move |c| {
        let split = c == separator && !escaped;
        escaped = c == '\\' && !escaped;
        split
    })
}

/// A selector term's field, operator and raw value: the first operator
/// from the left, `!=` before `==` before `=`.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    (0..term.len())
        .filter(|&i| term.is_char_boundary(i))
        .find_map(|i| {
            let rest = &term[i..];
            ["!=", "==", "="]
                .into_iter()
                .find(|operator| rest.starts_with(operator))
                .map(|operator| (&term[..i], operator, &rest[operator.len()..]))
        })
}

/// A selector value with its `\\`, `\,` and `\=` escapes removed; `None`
/// for any other escape or an unescaped `,` or `=`, which the apiserver
/// refuses.
fn unescape(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => out.push(escaped),
                _ => return None,
            },
            ',' | '=' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
