//! Which requests a rule covers, in Kubernetes terms: verbs, resources
//! (with `pods/exec`, `pods/*` and `*/scale`), resource names, namespaces
//! and non-resource URLs. The same matching serves the audit `Policy`
//! (k8s.io/apiserver/pkg/audit/policy/checker.go) and `--policy-file`.

use serde::Deserialize;

use crate::request::Resource;

/// The request half of a rule; an empty list matches everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Verbs (`get`, `list`, `create`, …, `*`).
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Resources by group; matches resource requests only.
    #[serde(default)]
    pub resources: Vec<GroupResources>,
    /// Namespaces (`""` for cluster-scoped); matches resource requests only.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Non-resource URL paths, `*` allowed as the last character.
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

/// Resources of one API group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupResources {
    /// The group (`""` for the core group, `*` for any).
    #[serde(default)]
    pub group: String,
    /// `pods`, `pods/log`, `*`, `pods/*`, `*/scale`; empty means all.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Object names; empty means all.
    #[serde(default)]
    pub resource_names: Vec<String>,
}

impl Selector {
    /// Whether the request (its verb, its resource when it is a resource
    /// request, its canonical path) is one this selector covers.
    pub fn matches(&self, verb: &str, resource: Option<&Resource<'_>>, path: &str) -> bool {
        if !self.verbs.is_empty() && !self.verbs.iter().any(|v| v == verb || v == "*") {
            return false;
        }
        if !self.namespaces.is_empty() || !self.resources.is_empty() {
            return resource.is_some_and(|resource| self.matches_resource(resource));
        }
        if !self.non_resource_urls.is_empty() {
            return resource.is_none()
                && self
                    .non_resource_urls
                    .iter()
                    .any(|spec| path_matches(path, spec));
        }
        true
    }

    fn matches_resource(&self, object: &Resource<'_>) -> bool {
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == object.namespace) {
            return false;
        }
        if self.resources.is_empty() {
            return true;
        }
        self.resources
            .iter()
            .filter(|gr| gr.group == object.group || gr.group == "*")
            .any(|gr| {
                // As the audit checker: no resources means the whole group,
                // whatever the names.
                gr.resources.is_empty()
                    || ((gr.resource_names.is_empty()
                        || gr.resource_names.iter().any(|n| n == object.name))
                        && gr
                            .resources
                            .iter()
                            .any(|spec| resource_matches(spec, object)))
            })
    }
}

/// Whether a rule's resource (`pods`, `pods/log`, `*`, `pods/*`,
/// `*/scale`) covers the request's resource and subresource.
fn resource_matches(spec: &str, object: &Resource<'_>) -> bool {
    if spec == "*" {
        return true;
    }
    match spec.split_once('/') {
        None => spec == object.resource && object.subresource.is_empty(),
        Some((resource, "*")) => resource == object.resource,
        Some(("*", subresource)) => {
            !object.subresource.is_empty() && subresource == object.subresource
        }
        Some((resource, subresource)) => {
            resource == object.resource && subresource == object.subresource
        }
    }
}

/// A non-resource URL rule: the path itself, or a prefix ending in `*`.
fn path_matches(path: &str, spec: &str) -> bool {
    spec == "*"
        || spec == path
        || spec
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}
