//! Map names, shared so a rename on one side is a compile error on the other.

pub const EVENTS: &str = "EVENTS";
pub const PAYLOADS: &str = "PAYLOADS";
pub const COUNTERS: &str = "COUNTERS";
pub const SOCKS: &str = "SOCKS";
pub const FLOWS: &str = "FLOWS";
pub const LISTENERS: &str = "LISTENERS";
pub const ARGV: &str = "ARGV";
pub const DIRS: &str = "DIRS";
