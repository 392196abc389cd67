//! Learned "normal" per key: an EWMA of ln(1 + bytes per window) with its
//! variance. ~40 bytes of state per key; a bounded table that evicts the stalest
//! key first but never keys marked as pinned (known exfiltration tools).
//!
//! Choices, after the public products in the references: Splunk keeps mean + 3σ
//! per entity updated incrementally and needs 5-50 samples before alerting;
//! Elastic skips model updates for anomalous values; Cortex trains 30 days and
//! activates after 14. Here: score before update, never train on a window that
//! alerted, winsorize training values at mean + 3σ and cap how far the mean may
//! move per day, so a slow "boiling frog" ramp cannot teach the model that 20x
//! is normal.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub mean: f64,
    pub var: f64,
    pub samples: u64,
    /// Unix seconds of the first and latest sample.
    pub first_t: f64,
    pub last_t: f64,
    /// Mean and variance at the start of the current day, for the drift caps.
    pub day_start_mean: f64,
    #[serde(default)]
    pub day_start_var: f64,
    pub day_start_t: f64,
    /// (time, mean) snapshots taken every `Params::snapshot_every`, newest and
    /// the one before: what the model said before a window began, so a rule
    /// judging that window (slow drip) is not judged by a bar it trained.
    #[serde(default)]
    pub snap: (f64, f64),
    #[serde(default)]
    pub prev_snap: (f64, f64),
}

/// Most the variance may grow within a day (σ by √2): without it, a stream of
/// values just under the winsor bound (mean + 3σ) inflates σ exponentially
/// until everything looks normal.
const MAX_DAILY_VAR_GROWTH: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// EWMA weight of a new sample (1/alpha ~ samples of memory).
    pub alpha: f64,
    /// Floor on σ in log space: 0.5 means "within 1.65x is never anomalous".
    pub sigma_floor: f64,
    /// Largest move of the mean per day, in log space (ln 2 = the baseline may double daily).
    pub max_daily_drift: f64,
    /// Seconds between mean snapshots (the long window).
    pub snapshot_every: f64,
}

/// What a model says about a value, before it learns from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub z: f64,
    /// Typical bytes per window (e^mean - 1) and its spread in bytes.
    pub mean_bytes: f64,
    pub stddev_bytes: f64,
    pub samples: u64,
    pub age_s: f64,
}

pub fn ln1p(bytes: u64) -> f64 {
    (bytes as f64).ln_1p()
}

impl Model {
    pub fn new(x: f64, t: f64) -> Self {
        Model {
            mean: x,
            var: 0.0,
            samples: 1,
            first_t: t,
            last_t: t,
            day_start_mean: x,
            day_start_var: 0.0,
            day_start_t: t,
            snap: (t, x),
            prev_snap: (0.0, 0.0),
        }
    }

    /// The mean as a snapshot taken at or before `t0` recorded it, if one was.
    pub fn mean_before(&self, t0: f64) -> Option<f64> {
        [self.snap, self.prev_snap].into_iter().find(|&(at, _)| at > 0.0 && at <= t0).map(|(_, mean)| mean)
    }

    pub fn score(&self, bytes: u64, now: f64, p: &Params) -> Score {
        let sigma = self.var.sqrt().max(p.sigma_floor);
        let x = ln1p(bytes);
        let mean_bytes = self.mean.exp_m1();
        Score {
            z: (x - self.mean) / sigma,
            mean_bytes,
            // Spread as bytes: the distance from mean to mean + 1σ.
            stddev_bytes: (self.mean + self.var.sqrt()).exp_m1() - mean_bytes,
            samples: self.samples,
            age_s: now - self.first_t,
        }
    }

    pub fn train(&mut self, bytes: u64, t: f64, p: &Params) {
        let sigma = self.var.sqrt().max(p.sigma_floor);
        // Winsorize: one outlier moves the model at most as much as a 3σ value.
        let x = ln1p(bytes).min(self.mean + 3.0 * sigma);
        if t - self.day_start_t >= 86_400.0 {
            self.day_start_t = t;
            self.day_start_mean = self.mean;
            self.day_start_var = self.var;
        }
        let d = x - self.mean;
        let mut mean = self.mean + p.alpha * d;
        // Boiling-frog cap: the mean may not climb more than max_daily_drift a day.
        let ceiling = self.day_start_mean + p.max_daily_drift;
        if mean > ceiling {
            mean = ceiling.max(self.mean);
        }
        let var_ceiling = self.day_start_var.max(p.sigma_floor * p.sigma_floor) * MAX_DAILY_VAR_GROWTH;
        self.var = ((1.0 - p.alpha) * (self.var + p.alpha * d * d)).min(var_ceiling.max(self.var));
        self.mean = mean;
        self.samples += 1;
        self.last_t = t;
        if t - self.snap.0 >= p.snapshot_every {
            self.prev_snap = self.snap;
            self.snap = (t, self.mean);
        }
    }
}

/// Baselines by key, bounded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    pub models: HashMap<String, Model>,
    /// Keys never evicted (known exfiltration tools: forgetting them is what an
    /// attacker flooding the table would want).
    #[serde(default)]
    pub pinned: std::collections::HashSet<String>,
}

impl Table {
    pub fn get(&self, key: &str) -> Option<&Model> {
        self.models.get(key)
    }

    pub fn train(&mut self, key: &str, bytes: u64, t: f64, p: &Params, capacity: usize) {
        if let Some(m) = self.models.get_mut(key) {
            m.train(bytes, t, p);
            return;
        }
        if self.models.len() >= capacity {
            self.evict_stalest(capacity / 16 + 1);
        }
        self.models.insert(key.to_string(), Model::new(ln1p(bytes), t));
    }

    /// Evict the `n` unpinned keys updated longest ago (`evict::oldest`).
    fn evict_stalest(&mut self, n: usize) {
        let pinned = &self.pinned;
        crate::evict::oldest(&mut self.models, n, |k, m| (!pinned.contains(k)).then_some(m.last_t));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params { alpha: 0.05, sigma_floor: 0.5, max_daily_drift: std::f64::consts::LN_2, snapshot_every: 3600.0 };

    fn trained(bytes: &[u64]) -> Model {
        let mut m = Model::new(ln1p(bytes[0]), 0.0);
        for (i, &b) in bytes.iter().enumerate().skip(1) {
            m.train(b, i as f64 * 60.0, &P);
        }
        m
    }

    #[test]
    fn twenty_x_is_far_out_and_normal_is_not() {
        let history: Vec<u64> = (0..200).map(|i| 3_000_000 + (i % 7) * 200_000).collect();
        let m = trained(&history);
        assert!(m.score(3_400_000, 1e4, &P).z < 1.0);
        let z = m.score(60_000_000, 1e4, &P).z;
        assert!(z > 3.0, "z = {z}");
        let s = m.score(0, 1e4, &P);
        assert!((s.mean_bytes - 3.5e6).abs() < 0.6e6, "{s:?}");
    }

    #[test]
    fn a_slow_ramp_cannot_teach_twenty_x_in_a_day() {
        // Boiling frog: +5% per window, 500 windows within one day.
        let mut m = trained(&vec![1_000_000; 100]);
        let mut b = 1_000_000f64;
        for i in 0..500 {
            b *= 1.05;
            m.train(b as u64, 6000.0 + i as f64 * 60.0, &P);
        }
        // The mean may at most double within the day.
        assert!(m.mean.exp_m1() < 2.1e6, "mean drifted to {}", m.mean.exp_m1());
        assert!(m.score(20_000_000, 4e4, &P).z > 3.0);
    }

    #[test]
    fn one_outlier_moves_the_model_only_a_little() {
        let mut m = trained(&vec![1_000_000; 100]);
        let before = m.mean;
        m.train(10_000_000_000, 1e4, &P);
        assert!(m.mean - before < 0.2, "moved {}", m.mean - before);
    }

    #[test]
    fn snapshots_say_what_the_model_was_before_a_window() {
        let mut m = Model::new(ln1p(1000), 10.0);
        assert_eq!(m.mean_before(5.0), None);
        for i in 1..=200 {
            m.train(1_000_000, 10.0 + 60.0 * i as f64, &P);
        }
        // Snapshots an hour apart: the one at or before t0 is used, never a newer one.
        let t = 10.0 + 60.0 * 200.0;
        let before = m.mean_before(t - 3600.0).unwrap();
        assert!(m.snap.0 > t - 3600.0 && m.prev_snap.0 <= t - 3600.0, "{:?} {:?}", m.snap, m.prev_snap);
        assert_eq!(before, m.prev_snap.1);
    }

    #[test]
    fn table_is_bounded_and_keeps_pinned_keys() {
        let mut t = Table::default();
        t.pinned.insert("rclone".into());
        t.train("rclone", 1, 0.0, &P, 3);
        for i in 0..10 {
            t.train(&format!("k{i}"), 1, 1.0 + i as f64, &P, 3);
        }
        assert!(t.models.len() <= 3);
        assert!(t.get("rclone").is_some(), "pinned keys survive");
        assert!(t.get("k9").is_some(), "the newest key is kept");
        assert!(t.get("k0").is_none(), "the stalest went first");
    }
}
