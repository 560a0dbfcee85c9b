//! `make run`: Envoy with two listeners on the same pods (one with
//! mulligan, one with Envoy Gateway's default retries), mulligan and three
//! pods on loopback, until Ctrl-C. It prints the commands that drain, kill,
//! restart and scale pods (curl to its control port), and with `--load`
//! (`make run LOAD=1`) sends a steady load through both listeners and shows
//! every second what each served and failed. Built from the test rig, so
//! what a visitor pokes at is what the tests prove.
use std::time::Duration;

use clap::Parser;
use rig::sandbox::{control, view, Options, Sandbox, READY_LINE};

#[derive(Parser)]
#[command(about = "Envoy + mulligan + pods to drain, kill and restart")]
struct Args {
    /// Send this many requests a second through each listener and print
    /// what each served and failed, every second.
    #[arg(long, value_name = "PER_SECOND", num_args = 0..=1, default_missing_value = "50")]
    load: Option<f64>,
    /// Pods behind both listeners.
    #[arg(long, default_value_t = 3)]
    pods: usize,
    /// Seconds a restarted pod answers 503 before it is ready.
    #[arg(long, default_value_t = 3.0)]
    boot: f64,
    /// Let the kernel pick every port (the printed commands say which).
    #[arg(long)]
    ephemeral: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let opts = Options {
        pods: args.pods,
        ephemeral: args.ephemeral,
        boot: Duration::from_secs_f64(args.boot.clamp(0.0, 60.0)),
    };
    let sandbox = Sandbox::start(&opts).await;
    let ctl = control::Control::new(sandbox.pods.clone(), sandbox.mulligan.admin, sandbox.boot);
    let addr = control::serve(std::sync::Arc::clone(&ctl), sandbox.control_port).await;
    print_intro(&sandbox, &ctl, addr, args.load.is_some());
    println!(
        "{READY_LINE} control={addr} mulligan={} envoy_gateway={} mulligan_admin={} envoy_admin={}",
        sandbox.front, sandbox.gateway, sandbox.mulligan.admin, sandbox.envoy.admin
    );
    if let Some(rate) = args.load {
        let (ctl, g, m, admin) = (ctl, sandbox.gateway, sandbox.front, sandbox.mulligan.admin);
        tokio::spawn(view::run(ctl, g, m, admin, rate));
    }
    // Ctrl-C or SIGTERM: dropping Envoy and mulligan stops them too.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping");
}

fn print_intro(s: &Sandbox, ctl: &control::Control, control: std::net::SocketAddr, load: bool) {
    let c = format!("curl -X POST {control}");
    println!(
        "\nmulligan sandbox: one Envoy, two listeners, the same pods ({})\n\
         \n  curl {}/      # with mulligan (the decide wiring)\
         \n  curl {}/      # with Envoy Gateway's default retries\n\
         \nBreak pods as a rollout does (T: a pod, a,b or all):\
         \n  {c}/drain/b      # preStop: b answers 503 + connection: close; mulligan is told\
         \n  {c}/kill/b       # b exits: connections refused\
         \n  {c}/restart/b    # b comes back: 503 while it boots ({:.0} s), then ready\
         \n  {c}/restart/all  # every pod restarts at once\
         \n  {c}/scale/0      # every pod drains and exits\
         \n  {c}/scale/3      # and back: three pods boot\
         \n  curl {control}/pods    # each pod's state\n\
         \nmulligan's answers:  curl -s {}/metrics | grep mulligan_answers\
         \nEnvoy admin:         http://{}/\n{}\
         \nCtrl-C stops everything.",
        ctl.states_line(),
        s.front,
        s.gateway,
        s.boot.as_secs_f64(),
        s.mulligan.admin,
        s.envoy.admin,
        if load {
            "\nThe view below: every second, what each listener served and failed."
        } else {
            "\nTo watch a load through both listeners: make run LOAD=1 (or sandbox --load)."
        },
    );
}
