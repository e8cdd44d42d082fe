//! The apiservers one kubegate serves: one at `/` (as kubectl proxy does),
//! or, with `--contexts`, one per kubeconfig context under
//! `/clusters/<context>/`, each with its own credentials, connections and
//! readiness.

use super::Upstream;

/// One served apiserver.
pub struct Cluster {
    /// The kubeconfig context, or empty for the one cluster at `/`.
    pub name: String,
    /// How to reach it.
    pub upstream: Upstream,
}

/// Every served apiserver; never empty.
pub struct Clusters {
    /// Whether paths name the cluster (`--contexts`).
    named: bool,
    list: Vec<Cluster>,
}

/// Where an API path goes.
pub enum Route<'c, 'p> {
    /// To `cluster`, with the path inside its prefix.
    To(&'c Cluster, &'p str),
    /// `GET /clusters`: the list.
    List,
    /// `/clusters/<name>/` names no served context.
    Unknown,
}

/// The prefix under which each context is served.
const PREFIX: &str = "/clusters";

impl Clusters {
    /// One apiserver at `/`.
    pub fn single(upstream: Upstream) -> Self {
        Clusters {
            named: false,
            list: vec![Cluster {
                name: String::new(),
                upstream,
            }],
        }
    }

    /// Several apiservers, each under `/clusters/<context>/`.
    ///
    /// # Panics
    ///
    /// Never for a non-empty list, which `config` guarantees.
    pub fn named(list: Vec<Cluster>) -> Self {
        assert!(!list.is_empty(), "at least one context is served");
        Clusters { named: true, list }
    }

    /// The first apiserver: the one at `/`, or the first context.
    pub fn primary(&self) -> &Upstream {
        &self.list[0].upstream
    }

    /// Every served apiserver.
    pub fn iter(&self) -> impl Iterator<Item = &Cluster> {
        self.list.iter()
    }

    /// Where `path` (inside `--api-prefix`, starting with `/`) goes.
    pub fn route<'p>(&self, path: &'p str) -> Route<'_, 'p> {
        if !self.named {
            return Route::To(&self.list[0], path);
        }
        let Some(rest) = path.strip_prefix(PREFIX) else {
            return Route::Unknown;
        };
        let rest = match rest {
            "" | "/" => return Route::List,
            rest => match rest.strip_prefix('/') {
                Some(rest) => rest,
                None => return Route::Unknown,
            },
        };
        let (name, inside) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        match self.list.iter().find(|c| c.name == name) {
            Some(cluster) => Route::To(cluster, inside),
            None => Route::Unknown,
        }
    }

    /// `GET /clusters`: each context, its path and its apiserver, as JSON.
    pub fn listing(&self) -> String {
        let items: Vec<serde_json::Value> = self
            .list
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "path": format!("{PREFIX}/{}/", c.name),
                    "server": c.upstream.authority().to_string(),
                })
            })
            .collect();
        serde_json::json!({ "clusters": items }).to_string()
    }
}
