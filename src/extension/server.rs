//! The gRPC server for `envoygateway.extension.EnvoyGatewayExtension`, and
//! a small admin port (`/metrics`, `/healthz`).

use std::{future::Future, io::Write, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::{transport::server::TcpIncoming, Request, Response, Status};

use super::{
    api::{envoy_gateway_extension_server as generated, raw as api},
    hooks::Hooks,
    wiring::MulliganAddress,
    ExtensionMetrics,
};

/// The gRPC service name, as health checks ask for it.
pub const SERVICE_NAME: &str = "envoygateway.extension.EnvoyGatewayExtension";
/// Envoy Gateway's own default for `extensionManager.maxMessageSize`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How the extension server runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where Envoy reaches mulligan's ext_proc port (the `mulligan` cluster).
    pub mulligan: MulliganAddress,
    /// Requests larger than this get RESOURCE_EXHAUSTED; keep it at or above
    /// Envoy Gateway's `maxMessageSize`.
    pub max_message_bytes: usize,
}

/// The hooks behind gRPC. Every hook answers; none returns an error for
/// input it does not care about.
pub struct ExtensionService {
    hooks: Arc<Hooks>,
}

impl ExtensionService {
    pub fn new(hooks: Arc<Hooks>) -> Self {
        Self { hooks }
    }

    pub fn into_server(
        self,
        max_message_bytes: usize,
    ) -> generated::EnvoyGatewayExtensionServer<Self> {
        generated::EnvoyGatewayExtensionServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(usize::MAX)
    }
}

#[tonic::async_trait]
impl generated::EnvoyGatewayExtension for ExtensionService {
    async fn post_route_modify(
        &self,
        request: Request<api::PostRouteModifyRequest>,
    ) -> Result<Response<api::PostRouteModifyResponse>, Status> {
        ExtensionMetrics::hook("route");
        Ok(Response::new(self.hooks.post_route(request.into_inner())))
    }

    async fn post_virtual_host_modify(
        &self,
        request: Request<api::PostVirtualHostModifyRequest>,
    ) -> Result<Response<api::PostVirtualHostModifyResponse>, Status> {
        ExtensionMetrics::hook("virtual_host");
        let virtual_host = request.into_inner().virtual_host;
        Ok(Response::new(api::PostVirtualHostModifyResponse {
            virtual_host,
        }))
    }

    async fn post_http_listener_modify(
        &self,
        request: Request<api::PostHTTPListenerModifyRequest>,
    ) -> Result<Response<api::PostHTTPListenerModifyResponse>, Status> {
        ExtensionMetrics::hook("http_listener");
        let listener = request.into_inner().listener;
        Ok(Response::new(api::PostHTTPListenerModifyResponse {
            listener,
        }))
    }

    async fn post_cluster_modify(
        &self,
        request: Request<api::PostClusterModifyRequest>,
    ) -> Result<Response<api::PostClusterModifyResponse>, Status> {
        ExtensionMetrics::hook("cluster");
        let cluster = request.into_inner().cluster;
        Ok(Response::new(api::PostClusterModifyResponse { cluster }))
    }

    async fn post_endpoints_modify(
        &self,
        request: Request<api::PostEndpointsModifyRequest>,
    ) -> Result<Response<api::PostEndpointsModifyResponse>, Status> {
        ExtensionMetrics::hook("endpoints");
        let load_assignment = self
            .hooks
            .post_endpoints(request.into_inner().load_assignment);
        Ok(Response::new(api::PostEndpointsModifyResponse {
            load_assignment,
        }))
    }

    async fn post_translate_modify(
        &self,
        request: Request<api::PostTranslateModifyRequest>,
    ) -> Result<Response<api::PostTranslateModifyResponse>, Status> {
        ExtensionMetrics::hook("translate");
        Ok(Response::new(
            self.hooks.post_translate(request.into_inner()),
        ))
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    run_until(opts, shutdown_signal()).await
}

/// Runs until `shutdown` resolves. Prints one line on stdout once bound:
/// `listening extension=ADDR admin=ADDR`.
pub async fn run_until(opts: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let grpc_listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding the extension port {}", opts.listen))?;
    let admin_listener = TcpListener::bind(opts.admin_listen)
        .await
        .with_context(|| format!("binding the admin port {}", opts.admin_listen))?;
    let (grpc_addr, admin_addr) = (grpc_listener.local_addr()?, admin_listener.local_addr()?);

    let hooks = Arc::new(Hooks::new(opts.mulligan.clone()));
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE_NAME, tonic_health::ServingStatus::Serving)
        .await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(ExtensionService::new(hooks).into_server(opts.max_message_bytes))
        .serve_with_incoming_shutdown(TcpIncoming::from(grpc_listener), wait(stopped.clone()));
    let admin = axum::serve(admin_listener, admin_router()).with_graceful_shutdown(wait(stopped));
    let grpc = tokio::spawn(grpc);
    let admin = tokio::spawn(async move { admin.await });

    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening extension={grpc_addr} admin={admin_addr}");
    let _ = out.flush();
    drop(out);
    tracing::info!(extension = %grpc_addr, admin = %admin_addr, mulligan = ?opts.mulligan, "extension server serving");

    shutdown.await;
    let _ = stop.send(true);
    grpc.await.context("extension server task")??;
    admin.await.context("admin task")??;
    Ok(())
}

async fn wait(mut stopped: tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

fn admin_router() -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(|| async { crate::metrics::prometheus().render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        tracing::error!("cannot install a SIGTERM handler; stopping on SIGINT only");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

/// `mulligan extension-server` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// gRPC address Envoy Gateway calls (extensionManager.service).
    #[arg(long, default_value = "0.0.0.0:5005")]
    listen: SocketAddr,
    /// Admin HTTP address (/metrics, /healthz).
    #[arg(long, default_value = "0.0.0.0:9903")]
    admin_listen: SocketAddr,
    /// Where Envoy reaches mulligan's gRPC (ext_proc) port, HOST:PORT; a
    /// hostname becomes a STRICT_DNS cluster, an IP a STATIC one.
    #[arg(
        long,
        default_value = "mulligan.mulligan-system.svc.cluster.local:50051"
    )]
    mulligan_address: String,
    /// Largest hook request accepted, in bytes (at least Envoy Gateway's
    /// extensionManager.maxMessageSize).
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Log format; the level comes from RUST_LOG.
    #[arg(long, value_enum, default_value = "text")]
    log_format: crate::config::LogFormat,
}

/// Parses `HOST:PORT` (a bracketed IPv6 host too).
pub fn parse_address(s: &str) -> Result<MulliganAddress, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s}: expected HOST:PORT"))?;
    let port = port.parse().map_err(|_| format!("{s}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{s}: empty host"));
    }
    Ok(MulliganAddress {
        host: host.to_string(),
        port,
    })
}

/// The subcommand's entry point.
pub fn main(args: Args) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mulligan = match parse_address(&args.mulligan_address) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("--mulligan-address {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(args.log_format);
    let opts = Options {
        listen: args.listen,
        admin_listen: args.admin_listen,
        mulligan,
        max_message_bytes: args.max_message_bytes,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mulligan extension-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulligan_address_takes_names_ips_and_bracketed_ipv6() {
        let a = parse_address("mulligan.ns.svc:50051").expect("name");
        assert_eq!((a.host.as_str(), a.port), ("mulligan.ns.svc", 50051));
        assert_eq!(parse_address("[::1]:9").expect("v6").host, "::1");
        for bad in ["mulligan", ":50051", "host:port", "host:70000"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
