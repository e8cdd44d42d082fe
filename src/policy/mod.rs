//! Policy in Kubernetes terms: `--policy-file` rules (verbs, resources,
//! namespaces, non-resource URLs; `Allow` or `Deny`, the first match wins,
//! and what no rule matches is refused) and `--read-only`, decided on the
//! request as the apiserver reads it ([`crate::request`]). The file is read
//! again when it changes; reading the current rules takes no lock.
//!
//! - [`selector`]: which requests a rule covers (shared with audit).

pub mod selector;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::error::{StartupError, io_reason};
use crate::lifecycle::Lifecycle;
use crate::reload;
use crate::request::{RequestInfo, Resource, STREAM_SUBRESOURCES, Verb};
use selector::{GroupResources, Selector};

/// `--policy-file` and `--read-only`.
#[derive(Debug)]
pub struct Policy {
    file: Option<Arc<PolicyFile>>,
    read_only: bool,
}

/// The policy file and its current rules.
#[derive(Debug)]
struct PolicyFile {
    path: PathBuf,
    rules: ArcSwap<Vec<Rule>>,
}

/// One rule of the file.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    allow: bool,
    selector: Selector,
}

/// The verbs a rule may name.
const VERBS: [&str; 14] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
    "post",
    "put",
    "head",
    "options",
    "*",
];

/// The non-resource paths `--read-only` lets tools read: discovery,
/// OpenAPI, the version and health (not `/logs`, `/debug` or `/metrics`).
const DISCOVERY: [&str; 10] = [
    "/",
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/openapi/*",
    "/.well-known/*",
    "/healthz*",
    "/readyz*",
];

/// The requests `--read-only` allows besides reads: the reviews tools send
/// to learn who they are and what they may do, before they act.
const SELF_REVIEWS: [(&str, &str); 3] = [
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
];

impl Policy {
    /// Reads `--policy-file`, if given; `None` when there is neither a file
    /// nor `--read-only`.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] naming the file, the rule and what is wrong.
    pub fn load(file: Option<&Path>, read_only: bool) -> Result<Option<Policy>, StartupError> {
        let file = match file {
            Some(path) => Some(Arc::new(PolicyFile {
                rules: ArcSwap::from_pointee(read_rules(path)?),
                path: path.to_path_buf(),
            })),
            None if !read_only => return Ok(None),
            None => None,
        };
        Ok(Some(Policy { file, read_only }))
    }

    /// Reads the file again whenever it changes (checked every
    /// `interval`); a file that no longer parses keeps the rules it had.
    pub fn watch(&self, interval: Duration, lifecycle: &Lifecycle) {
        let Some(file) = &self.file else {
            return;
        };
        let files = vec![file.path.clone()];
        reload::watch(
            files,
            interval,
            Arc::downgrade(file),
            |file: &PolicyFile| {
                let rules = read_rules(&file.path)?;
                tracing::info!(file = %file.path.display(), rules = rules.len(), "policy file changed; the next request sees the new rules");
                file.rules.store(Arc::new(rules));
                Ok::<_, StartupError>(())
            },
            lifecycle,
        );
    }

    /// Decides a request the filters let through: the file's first
    /// matching rule, and with `--read-only`, reads only (a file's `Deny`
    /// still refuses).
    ///
    /// # Errors
    ///
    /// The [`Refusal`], naming the rule that refused the request.
    pub fn check(&self, request: &RequestInfo<'_>) -> Result<(), Box<Refusal>> {
        let verb = request.verb_text();
        let resource = request.resource();
        let path = request.path().as_str();
        if let Some(file) = &self.file {
            let rules = file.rules.load();
            let matched = rules
                .iter()
                .position(|rule| rule.selector.matches(&verb, resource.as_ref(), path));
            match matched {
                Some(index) if !rules[index].allow => {
                    return Err(Refusal::new(request, Refused::Rule(&file.path, index)));
                }
                None if !self.read_only => {
                    return Err(Refusal::new(request, Refused::NoRule(&file.path)));
                }
                _ => {}
            }
        }
        if self.read_only && !reads_only(request) {
            return Err(Refusal::new(request, Refused::ReadOnly));
        }
        Ok(())
    }
}

impl Policy {
    /// What looks wrong in the current rules, one line each (also logged
    /// whenever the file is read).
    pub fn warnings(&self) -> Vec<String> {
        self.file
            .as_ref()
            .map(|file| undercut_denials(&file.rules.load()))
            .unwrap_or_default()
    }

    /// What the policy decides for a request and why, in one line: the
    /// refusal's message, or the rule (or `--read-only`) that allows it.
    ///
    /// # Errors
    ///
    /// The refusal.
    pub fn explain(&self, request: &RequestInfo<'_>) -> Result<String, Box<Refusal>> {
        self.check(request)?;
        let verb = request.verb_text();
        let matched = self.file.as_ref().and_then(|file| {
            let rules = file.rules.load();
            let resource = request.resource();
            let path = request.path().as_str();
            let index = rules
                .iter()
                .position(|rule| rule.selector.matches(&verb, resource.as_ref(), path))?;
            Some(format!(
                "rule {} of {} (Allow)",
                index + 1,
                file.path.display()
            ))
        });
        let why = match (matched, self.read_only) {
            (Some(rule), true) => format!("{rule} and --read-only"),
            (Some(rule), false) => rule,
            (None, _) => "--read-only".to_string(),
        };
        Ok(format!("allowed: {verb} by {why}"))
    }
}

/// What `--read-only` allows: `get`, `list` and `watch` of any resource
/// but `proxy` and the stream subresources (which reach into a running
/// program), discovery, and the self reviews.
fn reads_only(request: &RequestInfo<'_>) -> bool {
    let verb = request.verb();
    match request.resource() {
        None => {
            matches!(verb, Verb::Get | Verb::Head)
                && DISCOVERY.iter().any(|spec| {
                    let path = request.path().as_str();
                    match spec.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => path == *spec,
                    }
                })
        }
        Some(resource)
            if resource.subresource == "proxy"
                || STREAM_SUBRESOURCES.contains(&resource.subresource) =>
        {
            false
        }
        Some(_) if matches!(verb, Verb::Get | Verb::List | Verb::Watch) => true,
        Some(resource) => {
            verb == Verb::Create
                && resource.subresource.is_empty()
                && SELF_REVIEWS.contains(&(resource.group, resource.resource))
        }
    }
}

/// A policy file as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    rules: Vec<serde_json::Value>,
}

/// One rule as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    action: Action,
    #[serde(default)]
    verbs: Vec<String>,
    #[serde(default)]
    resources: Vec<GroupResources>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default, rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

#[derive(Deserialize, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
}

/// Reads the rules, and warns of each `Deny` a later rule undercuts.
fn read_rules(path: &Path) -> Result<Vec<Rule>, StartupError> {
    let fail = |message: String| StartupError::File {
        what: "policy file",
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("{}; give a readable --policy-file", io_reason(&e))))?;
    let rules = parse(&text).map_err(fail)?;
    for warning in undercut_denials(&rules) {
        tracing::warn!(file = %path.display(), "{warning}");
    }
    Ok(rules)
}

/// The `Deny` rules with `namespaces` that do not hide what they seem to:
/// as in RBAC, `namespaces` match namespaced requests only, so a list or
/// watch across all namespaces (`GET /api/v1/pods`) passes the rule by and
/// is allowed by a later one. One line each, naming both rules and the fix.
pub(crate) fn undercut_denials(rules: &[Rule]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (index, deny) in rules.iter().enumerate() {
        let selector = &deny.selector;
        let Some(namespace) = selector.namespaces.first().filter(|_| !deny.allow) else {
            continue;
        };
        // Resources to try: those any rule from this one on names (a rule
        // of "every resource" is undercut by an Allow of some), and any.
        let mut candidates: Vec<(&str, &str)> = rules[index..]
            .iter()
            .flat_map(|rule| &rule.selector.resources)
            .flat_map(|group| {
                group
                    .resources
                    .iter()
                    .filter(|spec| !spec.contains('/'))
                    .map(move |spec| (group.group.as_str(), spec.as_str()))
            })
            .chain([("*", "*")])
            .collect();
        candidates.dedup();
        // For each rule that lets a list across namespaces through, what
        // this rule denies in its namespaces and it allows everywhere.
        let mut undercut: BTreeMap<usize, (&str, Vec<String>)> = BTreeMap::new();
        for (group, resource) in candidates {
            let of = |namespace| Resource {
                group,
                resource,
                namespace,
                ..Resource::default()
            };
            let across = ["list", "watch"].into_iter().find_map(|verb| {
                if !selector.matches(verb, Some(&of(namespace)), "") {
                    return None;
                }
                let first = rules
                    .iter()
                    .position(|rule| rule.selector.matches(verb, Some(&of("")), ""))?;
                rules[first].allow.then_some((first, verb))
            });
            if let Some((allowing, verb)) = across {
                let what = match (group, resource) {
                    ("" | "*", "*") => "all resources".to_string(),
                    (group, "*") => format!("all resources of {group}"),
                    ("" | "*", resource) => resource.to_string(),
                    (group, resource) => format!("{resource}.{group}"),
                };
                let entry = undercut.entry(allowing).or_insert((verb, Vec::new()));
                if !entry.1.contains(&what) {
                    entry.1.push(what);
                }
            }
        }
        for (allowing, (verb, what)) in undercut {
            let what = what.join(", ");
            warnings.push(format!(
                "rule {} denies {what} in namespaces {} but not across all namespaces: {verb} of {what} in every namespace is allowed by rule {}; deny {what} in namespaces: [\"\"] too, before rule {}, or allow the namespaces you mean instead",
                index + 1,
                selector.namespaces.join(", "),
                allowing + 1,
                allowing + 1,
            ));
        }
    }
    warnings
}

/// Parses a policy file; the error names the rule (from 1) and the fix.
pub(crate) fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let raw: RawFile = yaml(text).map_err(|e| {
        format!("is not a kubegate policy ({e}); see docs/policy.md for the format")
    })?;
    if raw
        .api_version
        .as_deref()
        .is_some_and(|v| v != "kubegate.io/v1")
    {
        return Err("apiVersion must be kubegate.io/v1 (or left out)".into());
    }
    if raw.kind.as_deref().is_some_and(|k| k != "Policy") {
        return Err("kind must be Policy (or left out)".into());
    }
    raw.rules
        .into_iter()
        .enumerate()
        .map(|(index, value)| rule(value).map_err(|e| format!("rule {}: {e}", index + 1)))
        .collect()
}

/// Parses YAML with errors on one line (no source snippet), for start-up
/// messages and logs.
pub fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, serde_saphyr::Error> {
    serde_saphyr::from_str_with_options(text, serde_saphyr::options! { with_snippet: false })
}

fn rule(value: serde_json::Value) -> Result<Rule, String> {
    let raw: RawRule = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if let Some(verb) = raw.verbs.iter().find(|v| !VERBS.contains(&v.as_str())) {
        return Err(format!(
            "unknown verb {verb:?}; use get, list, watch, create, update, patch, delete, deletecollection, proxy, or * (and post, put, head, options for nonResourceURLs)"
        ));
    }
    let both = !raw.resources.is_empty() || !raw.namespaces.is_empty();
    if !raw.non_resource_urls.is_empty() && both {
        return Err("nonResourceURLs cannot be combined with resources or namespaces: a request is either a resource request or not; write two rules".into());
    }
    if let Some(url) = raw.non_resource_urls.iter().find(|u| {
        let stem = u.strip_suffix('*').unwrap_or(u);
        !(u.starts_with('/') || *u == "*") || stem.contains('*')
    }) {
        return Err(format!(
            "nonResourceURLs entry {url:?} must be a path starting with '/', with '*' only at its end"
        ));
    }
    for group in &raw.resources {
        if let Some(resource) = group.resources.iter().find(|r| !valid_resource(r)) {
            return Err(format!(
                "resource {resource:?} must be a resource, resource/subresource, resource/*, */subresource or *"
            ));
        }
        if !group.resource_names.is_empty() && group.resources.is_empty() {
            return Err(
                "resourceNames needs resources: name the resources the names are of".into(),
            );
        }
    }
    Ok(Rule {
        allow: raw.action == Action::Allow,
        selector: Selector {
            verbs: raw.verbs,
            resources: raw.resources,
            namespaces: raw.namespaces,
            non_resource_urls: raw.non_resource_urls,
        },
    })
}

/// Whether a rule's resource can match anything: `pods`, `pods/log`,
/// `pods/*`, `*/scale` or `*`, with no empty part and not `*/*`.
fn valid_resource(spec: &str) -> bool {
    match spec.split_once('/') {
        None => !spec.is_empty(),
        Some(("*", "*")) => false,
        Some((resource, subresource)) => {
            !resource.is_empty() && !subresource.is_empty() && !subresource.contains('/')
        }
    }
}

/// Which part of the policy refused a request.
enum Refused<'a> {
    /// The file's rule at this index (from 0) says `Deny`.
    Rule(&'a Path, usize),
    /// No rule of the file matches.
    NoRule(&'a Path),
    /// `--read-only`.
    ReadOnly,
}

/// A request the policy refused, worded as the apiserver's RBAC refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was refused: `pods "web"`, `pods`, or empty for a path.
    subject: String,
    /// The verb and what it acts on: `get resource "pods" in API group ""
    /// in the namespace "team-a"`, `get path "/metrics"`.
    action: String,
    /// Which rule, and what to change.
    why: String,
    /// The rule as a metric label: `FILE#N`, `FILE#none`, `read-only`.
    pub rule: String,
    /// `details` of the Status: the object's name, group and resource.
    pub details: Option<(String, String, String)>,
}

impl Refusal {
    fn new(request: &RequestInfo<'_>, refused: Refused<'_>) -> Box<Refusal> {
        let verb = request.verb_text();
        let (subject, action, details) = match request.resource() {
            Some(resource) => described(&verb, &resource),
            None => (
                String::new(),
                format!("{verb} path {:?}", request.path().as_str()),
                None,
            ),
        };
        let (why, rule) = match refused {
            Refused::Rule(path, index) => (
                format!(
                    "rule {} of {} (Deny) refuses it; change that rule to let it through",
                    index + 1,
                    path.display()
                ),
                format!("{}#{}", path.display(), index + 1),
            ),
            Refused::NoRule(path) => (
                format!(
                    "no rule of {} matches it, and what no rule allows is refused; add an Allow rule for it",
                    path.display()
                ),
                format!("{}#none", path.display()),
            ),
            Refused::ReadOnly => (
                "kubegate runs with --read-only, which allows only get, list and watch (and the self reviews tools send); run kubegate without --read-only to allow it".into(),
                "read-only".into(),
            ),
        };
        Box::new(Refusal {
            subject,
            action,
            why,
            rule,
            details,
        })
    }
}

/// The subject, action and details of a resource request, as RBAC words
/// them.
fn described(
    verb: &str,
    resource: &Resource<'_>,
) -> (String, String, Option<(String, String, String)>) {
    let kind = match resource.subresource {
        "" => resource.resource.to_string(),
        sub => format!("{}/{sub}", resource.resource),
    };
    let subject = match resource.name {
        "" => resource.resource.to_string(),
        name => format!("{} {name:?}", resource.resource),
    };
    let scope = match resource.namespace {
        "" => "at the cluster scope".to_string(),
        namespace => format!("in the namespace {namespace:?}"),
    };
    let action = format!(
        "{verb} resource {kind:?} in API group {:?} {scope}",
        resource.group
    );
    let details = (
        resource.name.to_string(),
        resource.group.to_string(),
        resource.resource.to_string(),
    );
    (subject, action, Some(details))
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.subject.is_empty() {
            write!(f, "{} is ", self.subject)?;
        }
        write!(
            f,
            "forbidden: kubegate's policy does not let this proxy {}: {}",
            self.action, self.why
        )
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests;
