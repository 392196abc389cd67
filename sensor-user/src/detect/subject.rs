//! What one flow is, for the rules: who sent it, where to, and the window
//! totals of every subject it belongs to, computed once per flow per tick.

use std::{
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::{FlowObs, ProcInfo};
use crate::services::Service;

pub struct Subject<'a> {
    pub f: &'a FlowObs,
    /// The tick's end (unix seconds) and length.
    pub t: f64,
    pub window_s: f64,
    pub short_s: f64,
    pub long_s: f64,
    /// Bucket width of the short windows (the tick, clamped).
    pub bucket: f64,
    pub service: Option<Arc<Service>>,
    /// Identity key (executable + argv shape), destination key, both, executable key.
    pub id: String,
    pub dest: String,
    pub key_dest: String,
    pub key_exe: String,
    /// Short-window totals of the identity, and of identity x destination.
    pub id_out: u64,
    pub id_in: u64,
    pub kd_out: u64,
    /// Long-window total of the identity.
    pub long_out: u64,
    /// Command-line evidence (curl -T, rclone copy, ...).
    pub indicators: Vec<String>,
}

/// Process identity: executable plus a hash of the argv "shape" (numbers
/// folded, first four arguments), so `python3 backup.py` and `python3 app.py`
/// are different entities while `curl -T a` and `curl -T b` stay apart only by
/// their file arguments' shape.
pub fn identity(p: &ProcInfo) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for a in p.args.iter().skip(1).take(4) {
        let folded: String = a.chars().take(64).map(|c| if c.is_ascii_digit() { '#' } else { c }).collect();
        folded.hash(&mut h);
    }
    format!("{}#{:08x}", p.executable, h.finish() as u32)
}

/// The destination key: the name when there is one, else the address.
pub fn destination(f: &FlowObs) -> String {
    f.domain.clone().unwrap_or_else(|| f.remote_ip.to_string())
}
