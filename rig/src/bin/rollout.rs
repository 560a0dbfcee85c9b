//! The rollout harness: what a client sees while a deployment rolls, through
//! Envoy alone, Envoy with Envoy Gateway's retries, and Envoy with mulligan,
//! side by side in one run. See `rig/src/rollout/mod.rs`.
//!
//! `cargo run --release -p mulligan-rig --bin rollout -- --help`; it runs
//! `$MULLIGAN_BIN` (the Makefile's `demo`, `soak` and `bench` set it to a
//! release build).
//!
//! Prints a Markdown table per scenario; writes `SCENARIO.json`,
//! `SCENARIO.svg` (errors per second over the run) and
//! `SCENARIO-resources.svg` (RSS and open fds of mulligan and Envoy) to
//! `--out`.

use std::path::{Path, PathBuf};

use clap::Parser;
use rig::rollout::{
    proxies::Variant,
    scenario::{self, Options, SCENARIOS},
};

/// A deployment rolling under load, seen through Envoy alone, Envoy
/// Gateway's retries and mulligan, side by side.
#[derive(Parser, Debug)]
#[command(name = "rollout")]
struct Cli {
    /// A scenario (`list` names them), or `all` for every rollout scenario
    /// and the outage (not `demo` or `soak`).
    #[arg(default_value = "rolling")]
    scenario: String,
    /// Seconds of load (default: the scenario's own).
    #[arg(long = "duration")]
    duration_s: Option<f64>,
    /// Requests per second per variant.
    #[arg(long)]
    rate: Option<f64>,
    /// Fraction of requests that are POSTs.
    #[arg(long = "post")]
    post_fraction: Option<f64>,
    /// A new connection per request.
    #[arg(long = "fresh")]
    fresh_connections: bool,
    /// EDS propagation lag, in milliseconds.
    #[arg(long = "eds-lag")]
    eds_lag_ms: Option<u64>,
    /// Replicas of the deployment.
    #[arg(long)]
    replicas: Option<usize>,
    /// Start a rolling update this often, in seconds.
    #[arg(long = "roll-every")]
    roll_every_s: Option<f64>,
    /// Read RSS and open fds this often, in seconds.
    #[arg(long = "sample-every")]
    sample_every_s: Option<f64>,
    /// Which variants, comma-separated: envoy-alone, gateway-retries,
    /// mulligan (default: all; `soak`: mulligan).
    #[arg(long)]
    variants: Option<String>,
    /// Where the JSON and SVG files go.
    #[arg(long, default_value = "target/rollout")]
    out: PathBuf,
}

impl Cli {
    /// The scenarios to run, or an error naming the unknown one.
    fn scenarios(&self) -> Result<Vec<&str>, String> {
        if self.scenario == "all" {
            return Ok(SCENARIOS
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| *n != "demo" && *n != "soak")
                .collect());
        }
        match scenario::spec(&self.scenario) {
            Some(_) => Ok(vec![self.scenario.as_str()]),
            None => Err(format!("unknown scenario {}; try `list`", self.scenario)),
        }
    }

    fn variants(&self) -> Result<Vec<Variant>, String> {
        let Some(names) = &self.variants else {
            return Ok(if self.scenario == "soak" {
                vec![Variant::Mulligan]
            } else {
                Variant::available()
            });
        };
        let mut chosen = Vec::new();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let v = Variant::named(name).ok_or_else(|| {
                format!("unknown variant {name}; --variants takes envoy-alone, gateway-retries, mulligan")
            })?;
            chosen.push(v);
        }
        if chosen.is_empty() {
            return Err("--variants takes envoy-alone, gateway-retries, mulligan".into());
        }
        Ok(chosen)
    }

    fn options(&self, variants: Vec<Variant>) -> Options {
        Options {
            duration_s: self.duration_s,
            rate: self.rate,
            post_fraction: self.post_fraction,
            fresh_connections: self.fresh_connections,
            eds_lag_ms: self.eds_lag_ms,
            replicas: self.replicas,
            roll_every_s: self.roll_every_s,
            sample_every_s: self.sample_every_s,
            variants,
            ..Options::default()
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = Cli::parse();
    if cli.scenario == "list" {
        for (n, d) in SCENARIOS {
            println!("{n:<16} {d}");
        }
        return;
    }
    let (names, variants) = match (cli.scenarios(), cli.variants()) {
        (Ok(n), Ok(v)) => (n, v),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let opts = cli.options(variants);
    if let Err(e) = std::fs::create_dir_all(&cli.out) {
        eprintln!("error: cannot create {}: {e}", cli.out.display());
        std::process::exit(1);
    }
    for n in names {
        eprintln!("scenario {n}: starting pods, Envoys and mulligan ...");
        let result = scenario::run(n, &opts).await;
        println!("{}", result.markdown());
        write_figures(&result, n, &cli.out);
    }
}

/// The JSON and the two SVG plots of one scenario's run.
fn write_figures(result: &rig::rollout::report::ScenarioResult, name: &str, out: &Path) {
    let json = out.join(format!("{name}.json"));
    match serde_json::to_string_pretty(result) {
        Ok(text) => {
            if let Err(e) = std::fs::write(&json, text) {
                eprintln!("writing {}: {e}", json.display());
            }
        }
        Err(e) => eprintln!("serialising the result: {e}"),
    }
    let svg = out.join(format!("{name}.svg"));
    if let Err(e) = result.plot(&svg) {
        eprintln!("plot failed: {e}");
    }
    let res_svg = out.join(format!("{name}-resources.svg"));
    if let Err(e) = result.plot_resources(&res_svg) {
        eprintln!("plot failed: {e}");
    }
    println!(
        "figures: {}, {} and {}\n",
        json.display(),
        svg.display(),
        res_svg.display()
    );
}
