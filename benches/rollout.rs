//! The rollout harness: what a client sees while a deployment rolls, through
//! Envoy without retries (A), with Envoy Gateway's retries (B), and with
//! mulligan rescue (C), and with mulligan steer + rescue (D), side by side in
//! one run. See `benches/rollout/mod.rs`.
//!
//! `cargo bench --bench rollout -- [SCENARIO|all|list] [--duration S]
//!  [--rate R] [--post F] [--fresh] [--eds-lag MS] [--replicas N]
//!  [--roll-every S] [--sample-every S] [--variants ABCDE] [--out DIR]`
//!
//! Prints a Markdown table per scenario; writes `SCENARIO.json`,
//! `SCENARIO.svg` (errors per second over the run) and
//! `SCENARIO-resources.svg` (RSS and open fds of mulligan and Envoy) to
//! `--out` (default `target/rollout`). `soak` runs only C and D unless
//! `--variants` says otherwise.
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "rollout/mod.rs"]
mod rollout;

use std::path::PathBuf;

use rollout::{
    proxies::Variant,
    scenario::{self, Options, SCENARIOS},
};

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let which = args
        .iter()
        .take_while(|a| !a.starts_with("--"))
        .next()
        .cloned()
        .unwrap_or_else(|| "rolling".into());
    if which == "list" {
        for (n, d) in SCENARIOS {
            println!("{n:<16} {d}");
        }
        return;
    }
    let names: Vec<&str> = if which == "all" {
        SCENARIOS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != "demo" && *n != "soak")
            .collect()
    } else {
        vec![which.as_str()]
    };
    for n in &names {
        if scenario::spec(n).is_none() {
            eprintln!("unknown scenario {n}; try `list`");
            std::process::exit(2);
        }
    }
    let variants: Vec<Variant> = match flag::<String>(&args, "--variants") {
        Some(letters) => Variant::available()
            .into_iter()
            .filter(|v| letters.contains(v.letter()))
            .collect(),
        None if which == "soak" => vec![Variant::C, Variant::D],
        None => Variant::available(),
    };
    if variants.is_empty() {
        eprintln!("--variants takes letters from ABCDE");
        std::process::exit(2);
    }
    let opts = Options {
        duration_s: flag(&args, "--duration"),
        rate: flag(&args, "--rate"),
        post_fraction: flag(&args, "--post"),
        fresh_connections: args.iter().any(|a| a == "--fresh"),
        eds_lag_ms: flag(&args, "--eds-lag"),
        replicas: flag(&args, "--replicas"),
        roll_every_s: flag(&args, "--roll-every"),
        sample_every_s: flag(&args, "--sample-every"),
        variants,
        ..Options::default()
    };
    let out: PathBuf = flag(&args, "--out").unwrap_or_else(|| PathBuf::from("target/rollout"));
    std::fs::create_dir_all(&out).expect("output dir");
    for n in names {
        eprintln!("scenario {n}: starting pods, Envoys and mulligan ...");
        let result = scenario::run(n, &opts).await;
        println!("{}", result.markdown());
        let json = out.join(format!("{n}.json"));
        std::fs::write(&json, serde_json::to_string_pretty(&result).expect("json"))
            .expect("write json");
        let svg = out.join(format!("{n}.svg"));
        if let Err(e) = result.plot(&svg) {
            eprintln!("plot failed: {e}");
        }
        let res_svg = out.join(format!("{n}-resources.svg"));
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
}
