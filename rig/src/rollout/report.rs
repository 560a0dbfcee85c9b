//! What a run shows: a Markdown table per scenario (stdout), the same as
//! JSON, and an SVG timeline of client-visible errors per second.

use std::{collections::BTreeMap, path::Path};

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use super::{
    load::{ErrorCause, Sample},
    proxies::Variant,
    resources::Series,
};

/// mulligan's own cost during the run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
}

impl ProcStats {
    /// CPU time and peak RSS of `pid`, from /proc.
    pub fn of(pid: u32) -> ProcStats {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let cpu_seconds = (ticks(11) + ticks(12)) / 100.0;
        let hwm_kb = super::resources::status_kb(pid, "VmHWM:");
        ProcStats {
            cpu_seconds,
            peak_rss_mib: hwm_kb / 1024.0,
        }
    }
}

/// One variant's figures.
#[derive(Clone, Debug, Serialize)]
pub struct VariantResult {
    pub variant: String,
    pub label: String,
    pub requests: u64,
    pub posts: u64,
    pub errors: u64,
    /// Client-visible errors caused by draining, gone or not-ready pods.
    pub rollout_errors: u64,
    pub errors_by_cause: BTreeMap<&'static str, u64>,
    /// The same, of POSTs only: a POST the app may have run is never sent
    /// again (by Envoy alone or with mulligan), so its failure stands.
    pub post_errors_by_cause: BTreeMap<&'static str, u64>,
    /// The first failure of each cause as the client saw it.
    pub seen_by_cause: BTreeMap<&'static str, String>,
    /// Requests that reached a pod (rejected ones included) per client request.
    pub amplification: f64,
    /// Requests an app ran more than once (the pods count each request id).
    pub ran_twice: u64,
    /// Runs by an app (not rejections) per client request: the load the
    /// apps carried, where `amplification` also counts attempts a leaving
    /// pod turned away unprocessed.
    pub processed: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// p99 latency of the requests that failed: how long a client waited
    /// for its error.
    pub p99_failed_ms: f64,
    pub mulligan: Option<ProcStats>,
    /// Failed attempts Envoy retried at mulligan's word.
    pub retried: Option<f64>,
    pub budget_exhausted: Option<f64>,
    /// Client-visible errors per second of the run.
    pub errors_per_second: Vec<u64>,
}

impl VariantResult {
    pub fn new(
        variant: String,
        label: String,
        samples: &[Sample],
        arrivals: u64,
        duration_s: f64,
    ) -> VariantResult {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        let mut failed = Histogram::<u64>::new(3).expect("histogram");
        let mut by_cause: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut post_by_cause: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut seen_by_cause: BTreeMap<&'static str, String> = BTreeMap::new();
        let seconds = duration_s.ceil() as usize + 1;
        let mut per_second = vec![0u64; seconds];
        let mut rollout_errors = 0;
        for s in samples {
            let _ = h.record(s.latency_us.max(1));
            if let Some(c) = s.error {
                let _ = failed.record(s.latency_us.max(1));
                *by_cause.entry(c.as_str()).or_default() += 1;
                if let Some(seen) = &s.seen {
                    seen_by_cause
                        .entry(c.as_str())
                        .or_insert_with(|| seen.clone());
                }
                if s.post {
                    *post_by_cause.entry(c.as_str()).or_default() += 1;
                }
                if c.is_rollout() {
                    rollout_errors += 1;
                }
                let sec = (s.at_ms / 1000) as usize;
                if sec < per_second.len() {
                    per_second[sec] += 1;
                }
            }
        }
        let ms = |v: u64| v as f64 / 1000.0;
        let requests = samples.len() as u64;
        VariantResult {
            variant,
            label,
            requests,
            posts: samples.iter().filter(|s| s.post).count() as u64,
            errors: samples.iter().filter(|s| s.error.is_some()).count() as u64,
            rollout_errors,
            errors_by_cause: by_cause,
            post_errors_by_cause: post_by_cause,
            seen_by_cause,
            amplification: arrivals as f64 / requests.max(1) as f64,
            ran_twice: 0,
            processed: 0.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            p99_failed_ms: ms(failed.value_at_quantile(0.99)),
            mulligan: None,
            retried: None,
            budget_exhausted: None,
            errors_per_second: per_second,
        }
    }
}

/// A whole scenario run.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub scenario: String,
    pub description: String,
    pub cluster: super::cluster::Spec,
    pub load: super::load::Spec,
    pub events: Vec<(f64, String)>,
    pub variants: Vec<VariantResult>,
    /// RSS and open fds of each mulligan and Envoy over the run.
    pub resources: Vec<Series>,
}

impl ScenarioResult {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "\n### {} — {}\n\n{} req/s per variant for {} s, {:.0}% POST, {} connections; {} replicas, EDS lag {} ms\n\n",
            self.scenario,
            self.description,
            self.load.rate,
            self.load.duration_s,
            self.load.post_fraction * 100.0,
            if self.load.fresh_connections { "fresh" } else { "keep-alive" },
            self.cluster.replicas,
            self.cluster.eds_lag_ms,
        );
        let causes: Vec<&str> = ErrorCause::ALL.iter().map(|c| c.as_str()).collect();
        out.push_str("| variant | requests | 5xx | ");
        out.push_str(&causes.join(" | "));
        out.push_str(" | amplification | app runs per request | ran twice | p50 ms | p99 ms | p99.9 ms | max ms | mulligan CPU s | mulligan peak RSS MiB |\n|---|---:|---:|");
        out.push_str(&"---:|".repeat(causes.len()));
        out.push_str("---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for v in &self.variants {
            out.push_str(&format!("| {} | {} | {} | ", v.label, v.requests, v.errors));
            for c in &causes {
                out.push_str(&format!(
                    "{} | ",
                    v.errors_by_cause.get(c).copied().unwrap_or(0)
                ));
            }
            let (cpu, rss) = v.mulligan.map_or(("-".into(), "-".into()), |m| {
                (
                    format!("{:.2}", m.cpu_seconds),
                    format!("{:.1}", m.peak_rss_mib),
                )
            });
            out.push_str(&format!(
                "{:.3} | {:.3} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} |\n",
                v.amplification,
                v.processed,
                v.ran_twice,
                v.p50_ms,
                v.p99_ms,
                v.p999_ms,
                v.max_ms,
                cpu,
                rss
            ));
        }
        if let Some(line) = self.verdict() {
            out.push_str(&format!("\n{line}\n"));
        }
        for v in &self.variants {
            if let (Some(r), Some(b)) = (v.retried, v.budget_exhausted) {
                out.push_str(&format!(
                    "\n{}: {r:.0} failed attempts retried (by Envoy, at mulligan's word), {b:.0} left alone because the retry budget was spent.",
                    v.label
                ));
            }
        }
        out.push('\n');
        out.push_str(&self.resources_markdown());
        out.push_str(&self.seen_markdown());
        out
    }

    /// What the first failure of each cause looked like, per variant.
    fn seen_markdown(&self) -> String {
        let mut out = String::new();
        for v in self.variants.iter().filter(|v| !v.seen_by_cause.is_empty()) {
            out.push_str(&format!("\nFirst failure of each cause, {}:\n", v.label));
            for (cause, seen) in &v.seen_by_cause {
                out.push_str(&format!("- {cause}: `{seen}`\n"));
            }
        }
        out
    }

    /// One line on what mulligan changed, the win and its cost: Envoy
    /// Gateway's retries against mulligan, when both ran.
    pub fn verdict(&self) -> Option<String> {
        let by = |v: Variant| self.variants.iter().find(|r| r.variant == v.name());
        let (b, e) = (by(Variant::GatewayRetries)?, by(Variant::Mulligan)?);
        Some(format!(
            "**With Envoy Gateway's retries, {} of {} requests failed (p99 wait for the error {:.0} ms) and {} ran twice; with mulligan, {} failed (p99 wait {:.0} ms) and {} ran twice. p99 latency of every request: {:.0} ms with mulligan, {:.0} ms with Envoy Gateway's retries.**",
            b.errors,
            b.requests,
            b.p99_failed_ms,
            b.ran_twice,
            e.errors,
            e.p99_failed_ms,
            e.ran_twice,
            e.p99_ms,
            b.p99_ms
        ))
    }

    /// The settling time excluded from drift: pools and caches fill first.
    pub fn warmup_s(&self) -> f64 {
        (self.load.duration_s / 5.0).min(60.0)
    }

    /// RSS and fds per process: after warm-up, peak, at the end, and drift.
    pub fn resources_markdown(&self) -> String {
        if self.resources.iter().all(|s| s.readings.is_empty()) {
            return String::new();
        }
        let warmup = self.warmup_s();
        let mut out = format!(
            "\nResources (sampled over the run; drift = last reading minus the first after {warmup:.0} s):\n\n\
             | process | RSS MiB after warm-up | peak RSS MiB | RSS MiB at end | RSS drift MiB | fds after warm-up | peak fds | fds at end | fd drift |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        );
        for s in &self.resources {
            let first = s.readings.iter().find(|r| r.t_s >= warmup);
            let (Some(first), Some(last)) = (first, s.readings.last()) else {
                continue;
            };
            let (drss, dfd) = s.drift(warmup).unwrap_or_default();
            out.push_str(&format!(
                "| {} | {:.1} | {:.1} | {:.1} | {:+.1} | {} | {} | {} | {:+} |\n",
                s.name,
                first.rss_mib,
                s.max_rss(),
                last.rss_mib,
                drss,
                first.fds,
                s.max_fds(),
                last.fds,
                dfd
            ));
        }
        out
    }

    /// RSS (top) and open fds (bottom) of each process over the run.
    pub fn plot_resources(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        let (upper, lower) = root.split_vertically(320);
        let end = self
            .resources
            .iter()
            .flat_map(|s| s.readings.last())
            .map(|r| r.t_s)
            .fold(1.0, f64::max);
        let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
        type Value = fn(&super::resources::Reading) -> f64;
        let panels: [(&_, &str, Value); 2] = [
            (&upper, "RSS MiB", |r| r.rss_mib),
            (&lower, "open fds", |r| r.fds as f64),
        ];
        for (area, what, value) in panels {
            let top = self
                .resources
                .iter()
                .flat_map(|s| s.readings.iter().map(value))
                .fold(1.0, f64::max);
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("{}: {what} over the run", self.scenario),
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..end, 0.0..top * 1.15)?;
            chart
                .configure_mesh()
                .x_desc("seconds since start")
                .y_desc(what)
                .draw()?;
            for (i, s) in self.resources.iter().enumerate() {
                let color = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(
                        s.readings.iter().map(|r| (r.t_s, value(r))),
                        color.stroke_width(2),
                    ))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()?;
        }
        root.present()?;
        Ok(())
    }

    /// Errors per second over the run, one line per variant.
    pub fn plot(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let secs = self
            .variants
            .iter()
            .map(|v| v.errors_per_second.len())
            .max()
            .unwrap_or(1);
        let top = self
            .variants
            .iter()
            .flat_map(|v| v.errors_per_second.iter().copied())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("{}: client-visible errors per second", self.scenario),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0..secs as u32, 0..(top + top / 10 + 1))?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("5xx per second")
            .draw()?;
        let colors = [RED, BLUE, GREEN, MAGENTA];
        for (i, v) in self.variants.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(
                    v.errors_per_second
                        .iter()
                        .enumerate()
                        .map(|(s, e)| (s as u32, *e)),
                    color.stroke_width(2),
                ))?
                .label(v.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        // Rollout events as thin vertical marks.
        for (t, _) in &self.events {
            let x = *t as u32;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, 0), (x, top / 20 + 1)],
                BLACK.mix(0.4),
            )))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
