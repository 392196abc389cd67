//! Decoding the ring buffer's bytes into typed events. The kernel writes
//! `#[repr(C)]` structs from `sensor-common`; every read here is length-checked
//! and unaligned-safe, so a short or foreign record is an error, never UB.

use sensor_common::{
    EventHeader, ExecEvent, ExitEvent, FlowKey, ForkEvent, PayloadEvent, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_PGID, PgidEvent,
    EVENT_PAYLOAD, EXEC_ARGV_FROM_MM, EXEC_PATH_FROM_FILE, EXEC_ARGV_MISSING, EXEC_ARGV_TRUNCATED, EXEC_PATH_TRUNCATED,
};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Exec(Exec),
    Fork(Fork),
    Exit { pid: u32, ktime_ns: u64 },
    /// `pid` moved to process group `pgid` (setpgid, setsid).
    Pgid { pid: u32, pgid: u32 },
    Payload(Payload),
}

/// Bytes the kernel copied for naming (see `sensor_common::PayloadEvent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub kind: u32,
    pub key: FlowKey,
    pub offset: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: Vec<u8>,
    pub path: Vec<u8>,
    pub argv: Vec<Vec<u8>>,
    pub argv_truncated: bool,
    pub argv_missing: bool,
    pub path_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: Vec<u8>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than a {what} ({need} bytes)")]
    Short { what: &'static str, got: usize, need: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
}

fn read<T: Copy>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short { what, got: bytes.len(), need });
    }
    // SAFETY: length checked above; T is a #[repr(C)] plain-data type for which
    // any bit pattern is valid; read_unaligned copes with ring buffer alignment.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Bytes up to the first NUL.
/// The kernel's walk of an executed file (`EXEC_PATH_FROM_FILE`): NUL-
/// terminated names, leaf first, into `/a/b/leaf`.
fn path_from_components(walked: &[u8]) -> Vec<u8> {
    let mut names: Vec<&[u8]> = walked.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    names.reverse();
    let mut path = Vec::with_capacity(walked.len() + 1);
    for n in names {
        path.push(b'/');
        path.extend_from_slice(n);
    }
    if path.is_empty() {
        path.push(b'/');
    }
    path
}

fn cstr(b: &[u8]) -> Vec<u8> {
    b.iter().take_while(|&&c| c != 0).copied().collect()
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let header: EventHeader = read(bytes, "event header")?;
    match header.kind {
        EVENT_EXEC => {
            let e: ExecEvent = read(bytes, "exec event")?;
            let path_len = (e.path_len as usize).min(e.path.len());
            let path = if e.flags & EXEC_PATH_FROM_FILE != 0 { path_from_components(&e.path[..path_len]) } else { e.path[..path_len].to_vec() };
            let argv_len = (e.argv_len as usize).min(e.argv.len());
            let data = &e.argv[..argv_len];
            let argv = if e.flags & EXEC_ARGV_FROM_MM != 0 {
                // The program's own argv area: NUL-terminated strings, argc uncounted.
                data.strip_suffix(&[0]).unwrap_or(data).split(|&b| b == 0).map(<[u8]>::to_vec).collect()
            } else {
                data.split(|&b| b == 0).take(e.argc as usize).map(<[u8]>::to_vec).collect()
            };
            Ok(KernelEvent::Exec(Exec {
                pid: header.pid,
                tid: e.tid,
                uid: e.uid,
                gid: e.gid,
                cgroup_id: e.cgroup_id,
                ktime_ns: header.ktime_ns,
                comm: cstr(&e.comm),
                path,
                argv,
                argv_truncated: e.flags & EXEC_ARGV_TRUNCATED != 0,
                argv_missing: e.flags & EXEC_ARGV_MISSING != 0,
                path_truncated: e.flags & EXEC_PATH_TRUNCATED != 0,
            }))
        }
        EVENT_FORK => {
            let f: ForkEvent = read(bytes, "fork event")?;
            Ok(KernelEvent::Fork(Fork {
                pid: header.pid,
                ppid: f.ppid,
                uid: f.uid,
                gid: f.gid,
                cgroup_id: f.cgroup_id,
                ktime_ns: header.ktime_ns,
                comm: cstr(&f.comm),
            }))
        }
        EVENT_EXIT => {
            let _: ExitEvent = read(bytes, "exit event")?;
            Ok(KernelEvent::Exit { pid: header.pid, ktime_ns: header.ktime_ns })
        }
        EVENT_PGID => {
            let g: PgidEvent = read(bytes, "process group event")?;
            Ok(KernelEvent::Pgid { pid: header.pid, pgid: g.pgid })
        }
        EVENT_PAYLOAD => {
            let p: PayloadEvent = read(bytes, "payload event")?;
            let len = (p.len as usize).min(p.data.len());
            Ok(KernelEvent::Payload(Payload { kind: p.kind, key: p.key, offset: p.offset, data: p.data[..len].to_vec() }))
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use sensor_common::{ARGV_LEN, ARG_CHUNK, COMM_LEN, PATH_LEN};

    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-data struct's bytes.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()).to_vec() }
    }

    pub fn exec_record(pid: u32, path: &[u8], args: &[&[u8]]) -> Vec<u8> {
        let mut e = ExecEvent {
            header: EventHeader { kind: EVENT_EXEC, pid, ktime_ns: 42 },
            tid: pid,
            uid: 1000,
            gid: 1000,
            flags: 0,
            cgroup_id: 7,
            comm: [0; COMM_LEN],
            path_len: path.len() as u32,
            argv_len: 0,
            argc: args.len() as u32,
            _pad: 0,
            path: [0; PATH_LEN],
            argv: [0; ARGV_LEN + ARG_CHUNK],
        };
        e.comm[..4].copy_from_slice(b"curl");
        e.path[..path.len()].copy_from_slice(path);
        let mut off = 0;
        for a in args {
            e.argv[off..off + a.len()].copy_from_slice(a);
            off += a.len() + 1;
        }
        e.argv_len = off as u32;
        bytes_of(&e)
    }

    #[test]
    fn exec_round_trip() {
        let rec = exec_record(4242, b"/usr/bin/curl", &[b"curl", b"-T", b"f\nx"]);
        let KernelEvent::Exec(e) = decode(&rec).unwrap() else { panic!() };
        assert_eq!(e.pid, 4242);
        assert_eq!(e.path, b"/usr/bin/curl");
        assert_eq!(e.comm, b"curl");
        assert_eq!(e.argv, vec![b"curl".to_vec(), b"-T".to_vec(), b"f\nx".to_vec()]);
        assert!(!e.argv_truncated);
    }

    #[test]
    fn lengths_from_the_kernel_are_clamped() {
        let mut rec = exec_record(1, b"/bin/x", &[b"x"]);
        // path_len field lies right after comm; claim far more than the buffer holds.
        let off = size_of::<EventHeader>() + 16 + 8 + COMM_LEN;
        rec[off..off + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(decode(&rec), Ok(KernelEvent::Exec(_))));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 0, 0]), Err(DecodeError::Short { .. })));
        let rec = exec_record(1, b"/bin/x", &[]);
        assert!(matches!(decode(&rec[..100]), Err(DecodeError::Short { .. })));
        let mut bad = rec.clone();
        bad[0] = 99;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn fork_and_exit() {
        let f = ForkEvent {
            header: EventHeader { kind: EVENT_FORK, pid: 10, ktime_ns: 5 },
            ppid: 9,
            uid: 0,
            gid: 0,
            _pad: 0,
            cgroup_id: 1,
            comm: *b"bash\0\0\0\0\0\0\0\0\0\0\0\0",
        };
        let KernelEvent::Fork(d) = decode(&bytes_of(&f)).unwrap() else { panic!() };
        assert_eq!((d.pid, d.ppid, d.comm.as_slice()), (10, 9, &b"bash"[..]));
        let x = ExitEvent { header: EventHeader { kind: EVENT_EXIT, pid: 10, ktime_ns: 6 } };
        assert_eq!(decode(&bytes_of(&x)).unwrap(), KernelEvent::Exit { pid: 10, ktime_ns: 6 });
        let g = PgidEvent { header: EventHeader { kind: EVENT_PGID, pid: 11, ktime_ns: 7 }, pgid: 11, _pad: 0 };
        assert_eq!(decode(&bytes_of(&g)).unwrap(), KernelEvent::Pgid { pid: 11, pgid: 11 });
    }
}
