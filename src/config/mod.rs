//! From the command line and the environment to a typed, validated
//! [`Config`]. The flags arrive parsed ([`crate::cli`]); each file here
//! turns one flag group into the settings its subsystem owns, checks it
//! against the other flags, and reads the files it names. Every problem
//! found is kept, so that all of them are reported at once, one line each.

mod access;
mod admin;
mod audit;
mod clusters;
mod connections;
mod env;
mod filters;
mod listening;
mod network;
mod policy;
mod port_forward;
mod recording;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use env::Env;

use crate::cli::Args;
use crate::connection;
use crate::cors::OriginPolicy;
use crate::error::StartupError;
use crate::filters::Filters;
use crate::listen::Listen;
use crate::policy::Policy;
use crate::proxy::Routes;
use crate::upstream::settings::Network;

/// Everything kubegate needs to run, typed and checked.
#[derive(Debug)]
pub struct Config {
    /// Where clients connect.
    pub listen: Listen,
    /// Which paths go to the apiserver and which to `--www`.
    pub(crate) routes: Routes,
    /// `--tls-cert-file` and `--tls-private-key-file`.
    pub(crate) serve_tls: Option<(PathBuf, PathBuf)>,
    /// The request filters.
    pub(crate) filters: Filters,
    /// `--accept-origins`.
    pub(crate) origins: OriginPolicy,
    /// `--policy-file` and `--read-only`.
    pub(crate) policy: Option<Policy>,
    /// Who may use kubegate.
    pub(crate) access: access::Access,
    /// A generated token, to print once at start.
    pub generated_access_token: Option<String>,
    /// How to reach and authenticate to each apiserver.
    pub(crate) clusters: clusters::Clusters,
    /// What every connection to an apiserver shares.
    pub(crate) network: Arc<Network>,
    /// Client connections: the limit, deadlines, keep-alive, the drain.
    pub(crate) connections: connection::Settings,
    /// `--port-forward-idle-timeout`, or `None` with
    /// `--port-forward-multiplex=false`.
    pub(crate) port_forward_idle: Option<Duration>,
    /// The audit settings, when any audit backend is on.
    pub(crate) audit: Option<crate::audit::Settings>,
    /// The recording settings, when sessions are recorded.
    pub(crate) recording: Option<crate::recording::Settings>,
    /// `--admin-address`.
    pub(crate) admin: Option<SocketAddr>,
}

/// Every misconfiguration found so far.
#[derive(Default)]
struct Problems(Vec<StartupError>);

impl Problems {
    /// The value, or `None` with its problem kept.
    fn check<T>(&mut self, result: Result<T, StartupError>) -> Option<T> {
        result.map_err(|error| self.0.push(error)).ok()
    }

    fn into_error(mut self) -> StartupError {
        match self.0.len() {
            1 => self.0.remove(0),
            _ => StartupError::Several(self.0),
        }
    }
}

impl Config {
    /// Reads the configuration from the command line and the environment.
    ///
    /// # Errors
    ///
    /// A [`StartupError`] with every problem found, in flag order.
    pub async fn load(args: &Args, env: &Env) -> Result<Config, StartupError> {
        let mut problems = Problems::default();
        let listening = listening::settings(&args.listening, &mut problems);
        let filters = filters::settings(&args.filters, &mut problems);
        let network = network::settings(&args.network, env, &mut problems);
        let connections = connections::settings(args, env, &mut problems);
        let port_forward_idle = port_forward::settings(&args.port_forward, &mut problems);
        let clusters = match &network {
            Some(network) => clusters::settings(&args.clusters, env, network, &mut problems).await,
            None => None,
        };
        let policy = policy::settings(&args.policy, &mut problems);
        let access = access::settings(&args.access, &mut problems);
        if let (Some(listening), Some((access, _))) = (&listening, &access) {
            problems.check(access::remote_needs_a_token(
                &listening.listen,
                access,
                &args.access,
            ));
        }
        let audit = match &network {
            Some(network) => audit::settings(&args.audit, network, &mut problems).await,
            None => None,
        };
        let recording = recording::settings(&args.recording, &mut problems);
        let admin = admin::settings(&args.admin, &mut problems);
        let (
            Some(listening),
            Some((filters, origins)),
            Some(network),
            Some(connections),
            Some(port_forward_idle),
            Some(clusters),
            Some(policy),
            Some((access, generated_access_token)),
            Some(audit),
            Some(recording),
            Some(admin),
        ) = (
            listening,
            filters,
            network,
            connections,
            port_forward_idle,
            clusters,
            policy,
            access,
            audit,
            recording,
            admin,
        )
        else {
            return Err(problems.into_error());
        };
        // Checks across flags leave their values whole.
        if !problems.0.is_empty() {
            return Err(problems.into_error());
        }
        Ok(Config {
            listen: listening.listen,
            routes: listening.routes,
            serve_tls: listening.tls,
            filters,
            origins,
            policy,
            access,
            generated_access_token,
            clusters,
            network,
            connections,
            port_forward_idle,
            audit,
            recording,
            admin,
        })
    }
}
