//! What the detector keeps between ticks: windowed sums per subject, tumbling
//! windows that train baselines, per-executable habits, and alert memory
//! (dedup), each bounded so a flood of names costs a bounded amount.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{window::SlidingSum, FlowObs};

/// Entities tracked at most (per map); beyond it the stalest are dropped.
pub const MAX_ENTITIES: usize = 100_000;
pub const MAX_BASELINES: usize = 50_000;

/// What alerting remembers across restarts: dedup periods and which programs a
/// rule already caught, so a restart does not re-raise a burst of old alerts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertMemory {
    /// (rule, entity, destination, last alert time, suppressed since)
    pub dedup: Vec<(String, String, String, f64, u64)>,
    /// (identity, last alert time)
    pub alerted: Vec<(String, f64)>,
}

/// What sluice has learned of an executable's network habits.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Habit {
    pub first_seen: f64,
    pub last_seen: f64,
    /// Most it ever sent in one short window that did not alert.
    pub max_window: u64,
}

/// Executables by path -> habits; bounded, stalest evicted first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Habits {
    pub by_exe: HashMap<String, Habit>,
    /// When this host's observation began (unix seconds; 0 = not yet).
    #[serde(default)]
    pub observing_since: f64,
    /// Storage services each executable has sent to ("exe\u{0}service").
    #[serde(default)]
    pub storage_pairs: HashSet<String>,
}

impl Habits {
    pub fn seen(&mut self, exe: &str, t: f64) {
        if exe.is_empty() {
            return;
        }
        if let Some(h) = self.by_exe.get_mut(exe) {
            h.last_seen = t;
            return;
        }
        if self.by_exe.len() >= MAX_BASELINES {
            let n = self.by_exe.len() / 16 + 1;
            crate::evict::oldest(&mut self.by_exe, n, |_, h| Some(h.last_seen));
        }
        self.by_exe.insert(exe.to_string(), Habit { first_seen: t, last_seen: t, max_window: 0 });
    }
}

/// The windowed state of one entity.
#[derive(Debug, Clone)]
pub struct Entity {
    pub out: SlidingSum,
    pub inb: SlidingSum,
    /// When it last had bytes (the stalest go first when the table is full).
    pub last_t: f64,
}

/// Windowed entities, bounded: when full, entities whose windows emptied are
/// swept (at most once per tick, so a flood costs O(n) per tick, not per flow),
/// then the stalest sixteenth makes room (`evict::oldest`).
/// Memory stays bounded; at worst a flooded entity's window restarts from
/// zero. `evicted` counts those.
#[derive(Debug, Default)]
pub struct Entities {
    /// foldhash (seeded per process, as the agent's per-tick maps): these are
    /// looked up several times per flow per tick, where SipHash was the cost.
    pub map: foldhash::HashMap<String, Entity>,
    last_sweep: f64,
    pub evicted: u64,
}

impl Entities {
    pub fn get(&self, key: &str) -> Option<&Entity> {
        self.map.get(key)
    }

    /// Add `f`'s bytes to `key`'s window; the window's totals (out, in).
    pub fn bump(&mut self, key: &str, f: &FlowObs, t: f64, bucket: f64, span: f64) -> (u64, u64) {
        self.add(key, f.bytes_out, f.bytes_in, t, bucket, span)
    }

    pub fn add(&mut self, key: &str, out: u64, inb: u64, t: f64, bucket: f64, span: f64) -> (u64, u64) {
        if self.map.len() >= MAX_ENTITIES && !self.map.contains_key(key) {
            if self.last_sweep != t {
                self.last_sweep = t;
                self.map.retain(|_, e| {
                    e.out.expire(t);
                    !e.out.is_empty()
                });
            }
            if self.map.len() >= MAX_ENTITIES {
                self.evicted += crate::evict::oldest(&mut self.map, MAX_ENTITIES / 16, |_, e| Some(e.last_t)) as u64;
            }
        }
        // Look up before inserting: `entry` would allocate the key on every call.
        if !self.map.contains_key(key) {
            self.map.insert(key.to_string(), Entity { out: SlidingSum::new(bucket, span), inb: SlidingSum::new(bucket, span), last_t: t });
        }
        let Some(e) = self.map.get_mut(key) else { return (0, 0) };
        e.last_t = t;
        e.out.add(t, out);
        e.inb.add(t, inb);
        (e.out.total(), e.inb.total())
    }
}

/// A tumbling window that feeds a baseline when it closes.
#[derive(Debug, Clone, Copy)]
pub struct Tumble {
    pub start: f64,
    pub bytes: u64,
    pub alerted: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct DedupState {
    pub last_t: f64,
    pub suppressed: u64,
}
