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

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
