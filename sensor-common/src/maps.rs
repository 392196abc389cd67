//! Map names, shared so a rename on one side is a compile error on the other.

pub const EVENTS: &str = "EVENTS";
pub const PAYLOADS: &str = "PAYLOADS";
pub const COUNTERS: &str = "COUNTERS";
pub const SOCKS: &str = "SOCKS";
pub const SOCKS_CHANGED: &str = "SOCKS_CHANGED";
/// Entries `SOCKS_CHANGED` holds: a drain that returns this many may have
/// missed changes (an insert into the full map failed).
pub const SOCKS_CHANGED_MAX: u32 = 65536;
pub const FLOWS: &str = "FLOWS";
pub const LISTENERS: &str = "LISTENERS";
pub const SKB_CGROUP: &str = "SKB_CGROUP";
/// Containment: cookie -> containment id (packets dropped), tgid -> containment
/// id (new sockets refused, and existing ones added to DENY at their next packet).
pub const DENY: &str = "DENY";
pub const DENY_TGID: &str = "DENY_TGID";
pub const DENY_MAX: u32 = 16384;
pub const DENY_TGID_MAX: u32 = 4096;
pub const ARGV: &str = "ARGV";
pub const DIRS: &str = "DIRS";
