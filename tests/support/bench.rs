//! Helpers for the benchmarks that print figures (not criterion ones).

use hdrhistogram::Histogram;

/// `--name VALUE` from the command line, else `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("histogram")
}

/// The header of a latency table in µs.
pub fn header(title: &str) {
    println!("\n## {title}\n");
    println!("| run                          |   reqs  |  p50 µs  |  p99 µs  | p99.9 µs |  max µs  |  req/s    |");
    println!("|------------------------------|---------|----------|----------|----------|----------|-----------|");
}

/// One row of that table.
pub fn row(label: &str, h: &Histogram<u64>, rps: Option<f64>) {
    println!(
        "| {label:<28} | {:>7} | {:>8} | {:>8} | {:>8} | {:>8} | {:>9} |",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        rps.map_or("-".to_string(), |r| format!("{r:.0}")),
    );
}
