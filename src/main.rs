//! The `kubegate` command: parse, configure, bind, serve until a signal.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use kubegate::cli::{Args, Command, LogFormat, PolicyCommand, RecordingsCommand};
use kubegate::config::{Config, Env};
use kubegate::error::StartupError;
use kubegate::listen::Listener;
use kubegate::{Proxy, shutdown};

#[cfg(feature = "demo")]
mod demo;

/// The name kubegate answers to: `kubectl gate` when kubectl runs it as
/// its plugin `kubectl-gate`, in help and in every message.
fn program() -> &'static str {
    static NAME: std::sync::OnceLock<&str> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let called = std::env::args_os().next().unwrap_or_default();
        match std::path::Path::new(&called).file_name() {
            Some(name) if name == "kubectl-gate" => "kubectl gate",
            _ => "kubegate",
        }
    })
}

fn main() -> ExitCode {
    let mut command = Args::command().bin_name(program());
    let args = Args::from_arg_matches(&command.get_matches_mut())
        .unwrap_or_else(|error| error.format(&mut command).exit());
    match args.command {
        Some(Command::Completion { shell }) => {
            clap_complete::generate(shell, &mut command, "kubegate", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            let page = clap_mangen::Man::new(command.bin_name("kubegate"));
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("{}: cannot write the manual page: {error}", program());
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Recordings(recordings)) => {
            let done = match recordings {
                RecordingsCommand::List { dir } => kubegate::list_recordings(&dir),
                RecordingsCommand::Play {
                    file,
                    speed,
                    idle_limit,
                } => kubegate::play_recording(&file, speed, idle_limit),
            };
            return match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("{}: {error}", program());
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    if let Some(Command::Policy(PolicyCommand::Check {
        file,
        method,
        path,
        upgrade,
    })) = &args.command
    {
        return match kubegate::check_policy(file, args.policy.read_only, method, path, *upgrade) {
            Ok(check) => {
                for warning in &check.warnings {
                    eprintln!("{}: warning: {warning}", program());
                }
                println!("{}", check.line);
                if check.allowed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("{}: {error}", program());
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(args.logging.verbosity, args.logging.log_format);
    // As Go does at start: the soft descriptor limit up to the hard one, so
    // that many watches and idle clients do not run kubegate out of sockets.
    // Before any `Env` is made: `--max-connections` defaults from the limit.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
    // One thread by default: a proxy's work is mostly waiting on sockets,
    // and handing each request between threads costs more CPU than it
    // saves on a sidecar's fraction of a core (see BENCHMARKS.md).
    let runtime = match args.connections.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{}: cannot start the runtime: {error}", program());
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Some(Command::Demo) => run_demo(&args).await,
            // Answered above, without a runtime.
            Some(
                Command::Policy(_)
                | Command::Recordings(_)
                | Command::Completion { .. }
                | Command::Man,
            ) => Ok(()),
            None => run(&args, &Env::process(), |_| None).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            for line in error.each() {
                eprintln!("{}: {line}", program());
            }
            ExitCode::FAILURE
        }
    }
}

/// Serves until a signal; `banner` may name what to try once the address
/// is known.
async fn run(
    args: &Args,
    env: &Env,
    banner: impl FnOnce(&Listener) -> Option<String>,
) -> Result<(), StartupError> {
    let mut config = Config::load(args, env).await?;
    let listen = config.listen.clone();
    if let Some(token) = config.generated_access_token.take() {
        // Shown once, like a notebook server's: the user's to keep.
        println!("Access token: {token}");
    }
    let proxy = Proxy::new(config).await?;
    let listener = Listener::bind(&listen).await?;
    if let Some(admin) = proxy.start_admin().await? {
        tracing::info!(%admin, "serving /healthz, /readyz and /metrics");
    }
    if let Some(banner) = banner(&listener) {
        println!("{banner}");
    }
    let stop = shutdown::signal();
    // kubectl proxy's line; scripts read the port from it.
    println!("Starting to serve on {listener}");
    proxy.serve(listener, stop).await;
    Ok(())
}

#[cfg(feature = "demo")]
async fn run_demo(args: &Args) -> Result<(), StartupError> {
    let demo = demo::Demo::start().await?;
    let args = demo.args(args);
    run(&args, &Env::default(), |listener| {
        Some(demo.banner(&format!("http://{listener}"), &args))
    })
    .await
}

#[cfg(not(feature = "demo"))]
async fn run_demo(_: &Args) -> Result<(), StartupError> {
    Err(StartupError::Unsupported(
        "this build of kubegate has no apiserver double (it was built without the `demo` feature, as the container image is); run `cargo run --release -- demo` from the source tree".into(),
    ))
}

/// Logs to stderr. `-v` as kubectl counts: 0 start-up, refusals and
/// warnings; 1 also one line per request; 4 debug; 6 and up trace.
fn init_tracing(verbosity: u8, format: LogFormat) {
    let default = match verbosity {
        0 => "kubegate=info,kubegate::request=off,warn",
        1..=3 => "kubegate=info,warn",
        4..=5 => "kubegate=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours for a person at a terminal; never in a file, a pipe or a
    // collector, nor when NO_COLOR is set (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
