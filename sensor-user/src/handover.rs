//! Bytes sent while no agent is loaded (a restart, a DaemonSet rollout: about
//! two seconds between the old agent's last read and the new one's attach)
//! would be seen by neither. For TCP the kernel's own sequence numbers say how
//! many there were: a cleanly stopping agent saves, with its state, where each
//! live outbound TCP flow's sequence stood at its last read; the next agent,
//! at its first sight of the same flow (same socket cookie and addresses, same
//! boot), counts the sequence space between that position and the first byte
//! it counted itself as sent. Only a clean stop writes positions: after a
//! crash the last periodic save's would be older than bytes already reported,
//! and would count them twice.

use serde::{Deserialize, Serialize};
use sensor_common::FlowKey;

/// A handover older than this describes no rollout: it is not used.
pub const MAX_AGE_S: f64 = 600.0;
/// A gap this large is not believed (a position from another connection's
/// life, or a sequence space that wrapped): nothing is added.
const GAP_MAX: u32 = 1 << 30;

/// What a stopping agent leaves for the next one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    /// `/proc/sys/kernel/random/boot_id`: socket cookies are unique within one boot only.
    pub boot_id: String,
    pub flows: Vec<Position>,
    /// The containments in force (`respond.keep`), for the next agent to put back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containments: Vec<crate::respond::Containment>,
}

/// One TCP flow's key and the sequence number after the last byte counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub key: FlowKey,
    pub next_seq: u32,
}

/// This boot's id ("" where the kernel does not say: then no handover is used).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// What of a loaded handover may be trusted: its positions if it is from
/// this boot and recent, its containments if it is from this boot (each
/// knows its own end; cookies and pids mean nothing across a reboot).
pub fn usable(h: Option<Handover>, saved_at: f64, now: f64, boot: &str) -> (Vec<Position>, Vec<crate::respond::Containment>) {
    match h {
        Some(h) if !boot.is_empty() && h.boot_id == boot => match (0.0..=MAX_AGE_S).contains(&(now - saved_at)) {
            true => (h.flows, h.containments),
            false => (Vec::new(), h.containments),
        },
        _ => (Vec::new(), Vec::new()),
    }
}

/// Bytes between the saved position and the first byte counted since: the
/// kernel's next sequence number now, less what it counted, is where that
/// first byte was.
pub fn gap(saved_next: u32, next_now: u32, counted: u64) -> u64 {
    if counted >= u64::from(GAP_MAX) {
        return 0;
    }
    let first = next_now.wrapping_sub(counted as u32);
    match first.wrapping_sub(saved_next) {
        g if g < GAP_MAX => u64::from(g),
        // Negative: the first segment seen was a retransmission of bytes
        // already counted; nothing was missed.
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_is_the_sequence_space_between_the_two_agents() {
        // Old agent's last read at 1_000; the new one first counted 500 bytes, up to 6_000.
        assert_eq!(gap(1_000, 6_000, 500), 4_500);
        // Nothing sent in between.
        assert_eq!(gap(1_000, 1_500, 500), 0);
        // Across the 2^32 wrap.
        assert_eq!(gap(u32::MAX - 99, 400, 100), 400);
        // A first segment that was a retransmission from before the position: no gap.
        assert_eq!(gap(10_000, 9_900, 1_448), 0);
        // Implausible: not believed.
        assert_eq!(gap(0, (1 << 31) + 5, 5), 0);
        assert_eq!(gap(0, 5, 1 << 33), 0);
    }

    #[test]
    fn only_a_recent_handover_of_this_boot_is_used() {
        let k = FlowKey {
            cookie: 9,
            local_addr: [1; 16],
            remote_addr: [2; 16],
            local_port: 1,
            remote_port: 2,
            protocol: 6,
            ip_version: 6,
            _pad: [0; 2],
            pid: 3,
            _pad2: 0,
        };
        let h = || Some(Handover { boot_id: "b1".into(), flows: vec![Position { key: k, next_seq: 7 }], containments: Vec::new() });
        assert_eq!(usable(h(), 100.0, 130.0, "b1").0.len(), 1);
        assert!(usable(h(), 100.0, 130.0, "b2").0.is_empty(), "another boot: cookies mean other sockets");
        assert!(usable(h(), 100.0, 100.0 + MAX_AGE_S + 1.0, "b1").0.is_empty(), "too old");
        assert!(usable(h(), 100.0, 50.0, "b1").0.is_empty(), "from the future");
        assert!(usable(h(), 100.0, 130.0, "").0.is_empty(), "boot unknown");
        let saved: Position = serde_json::from_str(&serde_json::to_string(&Position { key: k, next_seq: 1 }).unwrap()).unwrap();
        assert_eq!(saved.key, k, "a key survives the state file");
    }
}
