//! Framing shared by every ring-buffer record.

/// Ring-buffer event kinds (first field of every event).
pub const EVENT_EXEC: u32 = 1;
pub const EVENT_FORK: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
/// First bytes of a connection or a DNS answer, for naming destinations.
pub const EVENT_PAYLOAD: u32 = 4;
/// A process moved to another process group (setpgid, setsid): its job.
pub const EVENT_PGID: u32 = 5;

/// Common prefix of every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread-group id (the process id userspace sees).
    pub pid: u32,
    /// `bpf_ktime_get_boot_ns` at the event.
    pub ktime_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16, "EventHeader changed size: both sides must agree");
