//! Resident memory and open file descriptors of the processes under test,
//! sampled over a run. A soak is only worth its 30 minutes if it shows these
//! staying flat: a leak of a few bytes per request or one descriptor per
//! rollout is invisible in a short run and fatal after a week.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

/// One reading of one process.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Reading {
    /// Seconds since the load started.
    pub t_s: f64,
    pub rss_mib: f64,
    pub fds: u64,
}

impl Reading {
    /// Current RSS (VmRSS) and descriptor count of `pid`, from /proc.
    pub fn of(pid: u32, t_s: f64) -> Reading {
        let rss_kb = status_kb(pid, "VmRSS:");
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        Reading {
            t_s,
            rss_mib: rss_kb / 1024.0,
            fds,
        }
    }
}

/// A `/proc/PID/status` field in kB (e.g. `VmRSS:`, `VmHWM:`); 0 when the
/// process is gone.
pub fn status_kb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// A named process's readings over the run.
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    /// e.g. "C mulligan", "C envoy".
    pub name: String,
    pub readings: Vec<Reading>,
}

impl Series {
    /// Change from the first reading after `warmup_s` to the last one:
    /// (RSS MiB, fds). Startup allocation (pools, caches filling) is not a
    /// leak, so the baseline is taken once the run has settled.
    pub fn drift(&self, warmup_s: f64) -> Option<(f64, i64)> {
        let first = self.readings.iter().find(|r| r.t_s >= warmup_s)?;
        let last = self.readings.last()?;
        Some((
            last.rss_mib - first.rss_mib,
            last.fds as i64 - first.fds as i64,
        ))
    }

    pub fn max_rss(&self) -> f64 {
        self.readings.iter().map(|r| r.rss_mib).fold(0.0, f64::max)
    }

    pub fn max_fds(&self) -> u64 {
        self.readings.iter().map(|r| r.fds).max().unwrap_or(0)
    }
}

/// Samples `procs` (name, pid) every `every` from `start` until `until`.
pub async fn sample(
    procs: Vec<(String, u32)>,
    start: Instant,
    until: Instant,
    every: Duration,
) -> Vec<Series> {
    let mut series: Vec<Series> = procs
        .iter()
        .map(|(name, _)| Series {
            name: name.clone(),
            readings: Vec::new(),
        })
        .collect();
    tokio::time::sleep_until(start).await;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let t_s = start.elapsed().as_secs_f64();
        for ((_, pid), s) in procs.iter().zip(series.iter_mut()) {
            s.readings.push(Reading::of(*pid, t_s));
        }
        if Instant::now() >= until {
            return series;
        }
    }
}
