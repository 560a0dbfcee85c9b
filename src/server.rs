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
    endpoints::{eds_file, kubernetes, probe, Registry},
    ext_proc::{self, Context, ExtProc},
    metrics::Metrics,
};

/// Runs until SIGTERM or SIGINT, then drains and returns.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    run_until(cfg, shutdown_signal()).await
}

/// Runs until `shutdown` resolves, then drains and returns.
pub async fn run_until(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let grpc_listener = TcpListener::bind(cfg.listen.grpc)
        .await
        .with_context(|| format!("binding the gRPC port {}", cfg.listen.grpc))?;
    let admin_listener = TcpListener::bind(cfg.listen.admin)
        .await
        .with_context(|| format!("binding the admin port {}", cfg.listen.admin))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let control_listener = match cfg.listen.control {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the control port {addr}"))?,
        ),
        None => None,
    };

    let access = Access::load(&cfg.admin)?;
    let drain = Drain::new();
    let registry = Arc::new(Registry::from_config(&cfg.endpoints, &cfg.health));
    let metrics = Metrics::new();
    let mut sources = Vec::new();
    if !cfg.endpoints.eds_file.is_empty() {
        let path = std::path::PathBuf::from(&cfg.endpoints.eds_file);
        match eds_file::load(&registry, &path) {
            Ok(n) => tracing::info!(file = %path.display(), clusters = n, "eds file loaded"),
            Err(e) => tracing::warn!(error = e, "eds file not loaded yet; following it"),
        }
        sources.push(eds_file::spawn(
            Arc::clone(&registry),
            path,
            cfg.endpoints.eds_file_poll,
        ));
    }
    if cfg.kubernetes.enabled {
        let tasks = kubernetes::spawn(Arc::clone(&registry), Arc::clone(&drain), &cfg.kubernetes)
            .await
            .context("starting Kubernetes discovery")?;
        sources.extend(tasks);
    }
    sources.extend(probe::spawn(Arc::clone(&registry), &cfg.probe));
    let ctx = Arc::new(Context::new(
        &cfg,
        Arc::clone(&registry),
        metrics,
        Arc::clone(&drain),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(ext_proc::SERVICE_NAME, ServingStatus::Serving)
        .await;

    // Small gRPC frames both ways on every request: Nagle would hold them.
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let keepalive = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    let grpc = tls(tonic::transport::Server::builder(), &cfg.grpc_tls)?
        .http2_keepalive_interval(keepalive(cfg.limits.keepalive_interval))
        .http2_keepalive_timeout(keepalive(cfg.limits.keepalive_timeout))
        .add_service(health_service)
        .add_service(
            ExtProc::new(ctx)
                .idle_timeout(cfg.limits.stream_idle_timeout)
                .into_server(cfg.limits.max_message_bytes),
        )
        .serve_with_incoming_shutdown(incoming, {
            let drain = Arc::clone(&drain);
            async move { drain.signaled().await }
        });
    let grpc = tokio::spawn(grpc);

    let control = match control_listener {
        Some(l) => Some(spawn_control(
            l,
            Control::new(Arc::clone(&registry), access.clone()),
        )?),
        None => None,
    };

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = axum::serve(
        admin_listener,
        admin::router(AdminState {
            drain: Arc::clone(&drain),
            registry,
            access,
        })
        .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = admin_stopped.await;
    });
    let admin = tokio::spawn(async move { admin.await });

    announce(grpc_addr, admin_addr, control.as_ref().map(|c| c.addr));
    tracing::info!(grpc = %grpc_addr, admin = %admin_addr, version = env!("CARGO_PKG_VERSION"), "mulligan serving");

    shutdown.await;
    tracing::info!(
        in_flight = drain.in_flight(),
        timeout = ?cfg.shutdown.drain_timeout,
        "shutdown: draining"
    );
    drain.begin();
    for name in ["", ext_proc::SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }

    let drained = tokio::time::timeout(cfg.shutdown.drain_timeout, async {
        drain.idle().await;
        grpc.await
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
    for task in sources {
        task.abort();
    }
    let _ = admin_stop.send(());
    let _ = admin.await;
    if let Some(c) = control {
        let _ = c.stop.send(());
        let _ = c.task.await;
    }
    Ok(())
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

/// The `mulligan.v1.Lifecycle` server on its own port.
struct ControlServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn spawn_control(listener: TcpListener, control: Control) -> anyhow::Result<ControlServer> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(control.into_server())
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
            let _ = stopped.await;
        });
    Ok(ControlServer {
        addr,
        stop,
        task: tokio::spawn(server),
    })
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
