//! The apiserver's audit `Policy` (`audit.k8s.io/v1`): rules in order, the
//! first match decides the level, stages can be omitted per rule or for the
//! whole policy. Matching follows k8s.io/apiserver/pkg/audit/policy/checker.go
//! (through [`crate::policy::selector`], shared with `--policy-file`), with
//! `*` also accepted as any verb and any group, and an unknown field in a
//! `resources` entry refused at start-up rather than ignored.

use serde::Deserialize;

use super::event::{Level, Stage, UserInfo};
use crate::policy::selector::Selector;
use crate::request::Resource;

/// A policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// `audit.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Policy`.
    #[serde(default)]
    pub kind: String,
    /// Rules, first match wins; none matching means level `None`.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Stages never recorded.
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
}

/// One rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The level for requests this rule matches.
    pub level: Level,
    /// User names; empty matches all.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups; empty matches all.
    #[serde(default)]
    pub user_groups: Vec<String>,
    /// Verbs, resources, namespaces and non-resource URLs.
    #[serde(flatten)]
    pub selector: Selector,
    /// Stages this rule does not record.
    #[serde(default)]
    pub omit_stages: Vec<Stage>,
}

/// What a request is, for matching.
pub struct Attributes<'a> {
    /// Who.
    pub user: &'a UserInfo,
    /// The Kubernetes verb.
    pub verb: &'a str,
    /// The object, for resource requests.
    pub resource: Option<Resource<'a>>,
    /// The path, for non-resource requests.
    pub path: &'a str,
}

impl Policy {
    /// Parses a policy file's YAML.
    ///
    /// # Errors
    ///
    /// The parser's message.
    pub fn parse(yaml: &str) -> Result<Policy, String> {
        let policy: Policy = crate::policy::yaml(yaml).map_err(|e| e.to_string())?;
        if !policy.api_version.is_empty() && policy.api_version != "audit.k8s.io/v1" {
            return Err(format!(
                "apiVersion is {:?}, not audit.k8s.io/v1",
                policy.api_version
            ));
        }
        if !policy.kind.is_empty() && policy.kind != "Policy" {
            return Err(format!("kind is {:?}, not Policy", policy.kind));
        }
        Ok(policy)
    }

    /// The level for a request, and the stages to leave out.
    pub fn decide(&self, attributes: &Attributes<'_>) -> (Level, Vec<Stage>) {
        match self.rules.iter().find(|rule| rule.matches(attributes)) {
            Some(rule) if rule.level == Level::None => (Level::None, Vec::new()),
            Some(rule) => {
                let mut omit = self.omit_stages.clone();
                omit.extend(rule.omit_stages.iter().copied());
                (rule.level, omit)
            }
            None => (Level::None, Vec::new()),
        }
    }
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        if !self.users.is_empty() && !self.users.contains(&a.user.username) {
            return false;
        }
        if !self.user_groups.is_empty()
            && !a.user.groups.iter().any(|g| self.user_groups.contains(g))
        {
            return false;
        }
        self.selector.matches(a.verb, a.resource.as_ref(), a.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestInfo;

    const POLICY: &str = r#"
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/version"]
  - level: None
    resources: [{ group: "", resources: ["secrets"] }]
  - level: RequestResponse
    resources: [{ group: "", resources: ["pods/exec", "pods/attach", "pods/portforward"] }]
  - level: Request
    verbs: ["create", "update", "patch", "delete"]
    namespaces: ["prod"]
  - level: Metadata
    resources: [{ group: "apps", resources: ["*/scale"] }]
    omitStages: ["ResponseStarted"]
  - level: Request
    resources: [{ group: "", resources: ["configmaps"], resourceNames: ["settings"] }]
  - level: Metadata
    users: ["alice"]
"#;

    fn decide(user: &str, method: &str, path: &str, upgrade: bool) -> (Level, Vec<Stage>) {
        let policy = Policy::parse(POLICY).unwrap();
        let request = RequestInfo::read(method, path, None, upgrade).unwrap();
        let user = UserInfo {
            username: user.into(),
            ..UserInfo::default()
        };
        policy.decide(&Attributes {
            user: &user,
            verb: &request.verb_text(),
            resource: request.resource(),
            path,
        })
    }

    #[test]
    fn the_first_matching_rule_decides_as_the_apiserver_would() {
        use Level::*;
        use Stage::*;
        type Case<'a> = (&'a str, &'a str, &'a str, bool, Level, &'a [Stage]);
        let cases: &[Case<'_>] = &[
            ("alice", "GET", "/healthz/ready", false, None, &[]),
            ("alice", "GET", "/version", false, None, &[]),
            (
                "alice",
                "GET",
                "/api/v1/namespaces/a/secrets/s",
                false,
                None,
                &[],
            ),
            (
                "bob",
                "GET",
                "/api/v1/namespaces/a/pods/p/exec",
                true,
                RequestResponse,
                &[RequestReceived],
            ),
            (
                "bob",
                "POST",
                "/api/v1/namespaces/prod/pods",
                false,
                Request,
                &[RequestReceived],
            ),
            (
                "bob",
                "POST",
                "/api/v1/namespaces/dev/pods",
                false,
                None,
                &[],
            ),
            (
                "bob",
                "GET",
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                false,
                Metadata,
                &[RequestReceived, ResponseStarted],
            ),
            (
                "bob",
                "GET",
                "/api/v1/namespaces/a/configmaps/settings",
                false,
                Request,
                &[RequestReceived],
            ),
            (
                "bob",
                "GET",
                "/api/v1/namespaces/a/configmaps/other",
                false,
                None,
                &[],
            ),
            (
                "alice",
                "GET",
                "/api/v1/namespaces/a/configmaps/other",
                false,
                Metadata,
                &[RequestReceived],
            ),
            ("alice", "GET", "/apis", false, Metadata, &[RequestReceived]),
        ];
        for (user, method, path, upgrade, level, omit) in cases {
            assert_eq!(
                decide(user, method, path, *upgrade),
                (*level, omit.to_vec()),
                "{user} {method} {path}"
            );
        }
    }

    #[test]
    fn a_file_of_another_kind_is_refused() {
        assert!(Policy::parse("apiVersion: v1\nkind: ConfigMap\n").is_err());
        assert!(Policy::parse("rules: [{ level: Loud }]").is_err());
    }
}
