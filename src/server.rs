//! Wires mulligan together: binds the gRPC (ext_proc), admin and, when
//! configured, control ports, serves until a shutdown signal, then drains
//! (see [`crate::drain`]). The lifecycle gRPC API never shares the ext_proc
//! port: whoever may reach ext_proc must not thereby reach endpoint states.

use std::{future::Future, io::Write, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::{
    access::Access,
    admin::{self, AdminState},
    config::Config,
    control::Control,
    drain::Drain,
    endpoints::{eds_file, probe, Registry},
    ext_proc::{self, Context, ExtProc},
    metrics::Metrics,
};

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub(crate) async fn run(cfg: Config) -> anyhow::Result<()> {
    run_until(cfg, shutdown_signal()).await
}

/// Runs until `shutdown` resolves, then drains and returns.
pub(crate) async fn run_until(
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&cfg).await?;
    let access = Access::load(&cfg.admin)?;
    let drain = Drain::new();
    let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
    let sources = start_sources(&cfg, &registry, &drain).await?;
    let ctx = Arc::new(Context::new(
        &cfg,
        Arc::clone(&registry),
        Metrics::new(),
        Arc::clone(&drain),
    ));
    let grpc = serve_grpc(&cfg, listeners.grpc, ctx, &drain).await?;
    let control = listeners
        .control
        .map(|l| spawn_control(l, Control::new(Arc::clone(&registry), access.clone())))
        .transpose()?;
    let admin = spawn_admin(
        listeners.admin,
        AdminState {
            drain: Arc::clone(&drain),
            registry,
            access,
        },
    )?;
    announce(grpc.addr, admin.addr, control.as_ref().map(|c| c.addr));
    tracing::info!(grpc = %grpc.addr, admin = %admin.addr, version = env!("CARGO_PKG_VERSION"), "mulligan serving");

    shutdown.await;
    drain_grpc(&cfg, &drain, grpc).await;
    for task in sources {
        task.abort();
    }
    admin.stop().await;
    if let Some(c) = control {
        c.stop().await;
    }
    Ok(())
}

/// Every port, bound before anything starts: a port in use fails `serve`
/// at once, with the port named.
struct Listeners {
    grpc: TcpListener,
    admin: TcpListener,
    control: Option<TcpListener>,
}

impl Listeners {
    async fn bind(cfg: &Config) -> anyhow::Result<Self> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the {what} port {addr}"))
        };
        Ok(Self {
            grpc: bind("gRPC", cfg.listen.grpc).await?,
            admin: bind("admin", cfg.listen.admin).await?,
            control: match cfg.listen.control {
                Some(addr) => Some(bind("control", addr).await?),
                None => None,
            },
        })
    }
}

/// Starts the discovery sources (EDS file, Kubernetes, probes); their
/// tasks, to stop at shutdown.
async fn start_sources(
    cfg: &Config,
    registry: &Arc<Registry>,
    drain: &Arc<Drain>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut sources = Vec::new();
    if !cfg.endpoints.eds_file.is_empty() {
        let path = std::path::PathBuf::from(&cfg.endpoints.eds_file);
        match eds_file::load(registry, &path) {
            Ok(n) => tracing::info!(file = %path.display(), clusters = n, "eds file loaded"),
            Err(e) => tracing::warn!(error = %e, "eds file not loaded yet; following it"),
        }
        sources.push(eds_file::spawn(
            Arc::clone(registry),
            path,
            cfg.endpoints.eds_file_poll,
        ));
    }
    if cfg.kubernetes.enabled {
        sources.extend(kubernetes(cfg, registry, drain).await?);
    }
    sources.extend(probe::spawn(Arc::clone(registry), &cfg.probe));
    Ok(sources)
}

#[cfg(feature = "kubernetes")]
async fn kubernetes(
    cfg: &Config,
    registry: &Arc<Registry>,
    drain: &Arc<Drain>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    crate::endpoints::kubernetes::spawn(Arc::clone(registry), Arc::clone(drain), &cfg.kubernetes)
        .await
        .context("starting Kubernetes discovery")
}

/// Validation refuses `kubernetes.enabled` in this build before `serve`
/// gets here; this is for a config built by hand.
#[cfg(not(feature = "kubernetes"))]
async fn kubernetes(
    _: &Config,
    _: &Arc<Registry>,
    _: &Arc<Drain>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    anyhow::bail!(
        "kubernetes.enabled, but this mulligan was built without the `kubernetes` feature"
    )
}

/// The gRPC port (ext_proc and health), serving until the drain begins.
struct Grpc {
    addr: SocketAddr,
    health: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn serve_grpc(
    cfg: &Config,
    listener: TcpListener,
    ctx: Arc<Context>,
    drain: &Arc<Drain>,
) -> anyhow::Result<Grpc> {
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(ext_proc::SERVICE_NAME, ServingStatus::Serving)
        .await;
    // Small gRPC frames both ways on every request: Nagle would hold them.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let keepalive = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    let server = tls(tonic::transport::Server::builder(), &cfg.grpc_tls)?
        .http2_keepalive_interval(keepalive(cfg.limits.keepalive_interval))
        .http2_keepalive_timeout(keepalive(cfg.limits.keepalive_timeout))
        .add_service(health_service)
        .add_service(
            ExtProc::new(ctx)
                .idle_timeout(cfg.limits.stream_idle_timeout)
                .into_server(cfg.limits.max_message_bytes),
        )
        .serve_with_incoming_shutdown(incoming, {
            let drain = Arc::clone(drain);
            async move { drain.signaled().await }
        });
    Ok(Grpc {
        addr,
        health,
        task: tokio::spawn(server),
    })
}

/// mulligan's own drain: refuse new streams, report NOT_SERVING, and wait
/// (up to `shutdown.drain_timeout`) for the streams in flight to end.
async fn drain_grpc(cfg: &Config, drain: &Drain, grpc: Grpc) {
    tracing::info!(
        in_flight = drain.in_flight(),
        timeout = ?cfg.shutdown.drain_timeout,
        "shutdown: draining"
    );
    drain.begin();
    for name in ["", ext_proc::SERVICE_NAME] {
        grpc.health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let drained = tokio::time::timeout(cfg.shutdown.drain_timeout, async {
        drain.idle().await;
        grpc.task.await
    })
    .await;
    match drained {
        Ok(Ok(Ok(()))) => tracing::info!("shutdown: drained"),
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "gRPC server failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "gRPC server task failed"),
        Err(_) => tracing::warn!(
            abandoned = drain.in_flight(),
            "shutdown: drain timeout reached; exiting with streams still open"
        ),
    }
}

/// The admin HTTP port, serving until stopped.
fn spawn_admin(listener: TcpListener, state: AdminState) -> anyhow::Result<Background> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        admin::router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok(Background { addr, stop, task })
}

/// With `[grpc_tls]`: TLS on the ext_proc port, client certificate required.
fn tls(
    builder: tonic::transport::Server,
    cfg: &crate::config::GrpcTls,
) -> anyhow::Result<tonic::transport::Server> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    if !cfg.enabled() {
        return Ok(builder);
    }
    let read = |key: &str, path: &str| {
        std::fs::read(path).with_context(|| format!("grpc_tls.{key} {path}"))
    };
    let identity = Identity::from_pem(
        read("cert_file", &cfg.cert_file)?,
        read("key_file", &cfg.key_file)?,
    );
    let ca = Certificate::from_pem(read("client_ca_file", &cfg.client_ca_file)?);
    let tls = ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(ca)
        .client_auth_optional(false);
    builder
        .tls_config(tls)
        .context("grpc_tls: certificate, key or client CA")
}

/// A server on a port of its own (admin, control), stopped at shutdown
/// once the ext_proc streams have drained.
struct Background {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The `mulligan.v1.Lifecycle` server on its own port.
fn spawn_control(listener: TcpListener, control: Control) -> anyhow::Result<Background> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(control.into_server())
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            let _ = stopped.await;
        });
    let task = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "control server failed");
        }
    });
    Ok(Background { addr, stop, task })
}

/// The one line on stdout, for scripts and tests that start mulligan on
/// port 0: `listening grpc=ADDR admin=ADDR` (and ` control=ADDR` when the
/// control port is configured).
fn announce(grpc: SocketAddr, admin: SocketAddr, control: Option<SocketAddr>) {
    let mut out = std::io::stdout().lock();
    let _ = match control {
        Some(c) => writeln!(out, "listening grpc={grpc} admin={admin} control={c}"),
        None => writeln!(out, "listening grpc={grpc} admin={admin}"),
    };
    let _ = out.flush();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping only when killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
