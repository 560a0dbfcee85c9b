//! The command line: `mulligan serve`, `mulligan check-config FILE`,
//! `mulligan --version`. Flags override the config file.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "mulligan",
    version,
    about = "Turns rollout 503s into safe, transient retries behind Envoy"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve ext_proc for Envoy, plus the admin and lifecycle APIs.
    Serve(ServeArgs),
    /// Validate a config file: exit 0 when valid, else print FILE:LINE:COL: why.
    CheckConfig { file: PathBuf },
    /// Serve Envoy Gateway's Extension Server API: install mulligan's wiring
    /// into the routes a MulliganPolicy selects (docs/envoy-gateway.md).
    ExtensionServer(crate::extension::server::Args),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file (every key optional; see docs/config.md).
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC address for ext_proc and health [default: 127.0.0.1:50051].
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// gRPC address for the mulligan.v1.Lifecycle API [default: not served].
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Admin HTTP address [default: 127.0.0.1:9902].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Static upstream endpoints, HOST:PORT comma-separated, of the cluster
    /// named by --static-cluster.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<SocketAddr>,
    /// The Envoy cluster the static endpoints belong to [default: app].
    #[arg(long)]
    static_cluster: Option<String>,
    /// Log format [default: text]; the level comes from RUST_LOG.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Not a setting: refused with the reason (see `REPLAY_FLAG`).
    #[arg(long, hide = true)]
    replay: bool,
}

/// Why `serve --replay` is refused: a script that passes it learns why the
/// flag has no counterpart, not just that it is unknown.
const REPLAY_FLAG: &str = "--replay is not a flag: mulligan sends no request itself, \
     Envoy makes every attempt (envoy-config/standalone/envoy.yaml)";

pub fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => serve(args),
        Command::ExtensionServer(args) => crate::extension::server::main(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let cfg = match config_for_serve(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(cfg.log.format);

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // 0 leaves tokio's default: one per core, or TOKIO_WORKER_THREADS.
    if cfg.runtime.worker_threads > 0 {
        builder.worker_threads(cfg.runtime.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::server::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "mulligan failed");
            eprintln!("mulligan: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The config file (or the defaults) with the flags on top, checked as
/// `check-config` checks a file.
fn config_for_serve(args: ServeArgs) -> Result<Config, crate::config::ConfigError> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(addr) = args.grpc_listen {
        cfg.listen.grpc = addr;
    }
    if args.replay {
        return Err(crate::config::ConfigError {
            file: "(command line)".into(),
            line: 0,
            column: 0,
            message: REPLAY_FLAG.into(),
        });
    }
    if let Some(addr) = args.admin_listen {
        cfg.listen.admin = addr;
    }
    if let Some(addr) = args.control_listen {
        cfg.listen.control = Some(addr);
    }
    if !args.endpoints.is_empty() {
        cfg.endpoints.default = args.endpoints;
    }
    if let Some(name) = args.static_cluster {
        cfg.endpoints.static_cluster = name;
    }
    if let Some(format) = args.log_format {
        cfg.log.format = format;
    }
    // The flags may have broken a rule the file kept: the same checks as
    // check-config, located in the file when the key is there.
    let file = args
        .config
        .as_ref()
        .map_or_else(|| "(command line)".to_string(), |p| p.display().to_string());
    let text = args
        .config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    cfg.validate(&file, text.as_deref())?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let argv = ["mulligan", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Serve(a) => a,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn serve_refuses_the_replay_flag_saying_why() {
        let err = config_for_serve(serve_args(&["--replay"])).expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("(command line):0:0: --replay is not a flag: "),
            "{err}"
        );
    }

    #[test]
    fn serve_with_endpoints_and_no_file_is_valid() {
        let cfg = config_for_serve(serve_args(&[
            "--endpoints",
            "127.0.0.1:8081,127.0.0.1:8082",
        ]))
        .expect("the defaults fit the shipped envoy.yaml");
        assert_eq!(cfg.endpoints.default.len(), 2);
        assert_eq!(cfg.endpoints.static_cluster, "app");
    }
}
