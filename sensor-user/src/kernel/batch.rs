//! Reading a whole BPF hash map with `BPF_MAP_LOOKUP_BATCH` (5.6+): one bpf()
//! call per chunk of entries, where iterating costs two per entry
//! (get_next_key, then lookup). At 100k flows that was most of a tick's CPU
//! (`cargo xtask bench`, section 3). aya 0.14 has no batch API, so this is the
//! one raw syscall in the agent; `read_each` falls back to iterating where the
//! kernel refuses batches.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd, AsRawFd},
};

use aya::{maps::MapData, Pod};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of the hash map `map`. `K` and `V` are `Pod` (plain
/// data, any bit pattern valid, as aya requires of map types), and their
/// sizes are checked against the map's own before the kernel writes into
/// buffers sized for them.
pub fn lookup_all<K: Pod, V: Pod>(map: &MapData, chunk: usize) -> io::Result<Vec<(K, V)>> {
    collect(map, BPF_MAP_LOOKUP_BATCH, chunk)
}

/// Hand every (key, value) of the hash map `map` to `f`, one chunk at a
/// time, through two buffers reused across chunks: a whole map is never held
/// (the agent folds 100k flows a tick straight into its aggregates). Returns
/// the entries handed over; on an error, also how many were handed over
/// before it (0: nothing was, and the caller may read the map another way).
pub fn for_each<K: Pod, V: Pod>(map: &MapData, chunk: usize, f: impl FnMut(&K, &V)) -> Result<usize, (io::Error, usize)> {
    batch(map, BPF_MAP_LOOKUP_BATCH, chunk, f)
}

/// Every (key, value) of the hash map `map`, handed to `f`: in batches, or,
/// where the kernel refuses them before handing over anything (before 5.6),
/// one entry at a time (said once on stderr when `say`). On a failure part-way
/// returns how many were handed over (the rest are still in the map).
pub fn read_each<K: Pod, V: Pod>(map: &aya::maps::HashMap<MapData, K, V>, say: bool, mut f: impl FnMut(&K, &V)) -> Result<(), (io::Error, usize)> {
    use aya::maps::IterableMap;
    match for_each(map.map(), BATCH, &mut f) {
        Ok(_) => Ok(()),
        Err((e, 0)) => {
            if say {
                eprintln!("sluice: batch map reads unavailable ({e}); reading kernel maps one entry at a time");
            }
            for (k, v) in map.iter().filter_map(Result::ok) {
                f(&k, &v);
            }
            Ok(())
        }
        Err(partial) => Err(partial),
    }
}

/// Entries per BPF_MAP_LOOKUP_BATCH call.
const BATCH: usize = 4096;

/// Every (key, value) of `map`, deleted as they are read (a plain hash map
/// used as a queue: the kernel marks, the agent drains).
pub fn take_all<K: Pod, V: Pod>(map: &MapData, chunk: usize) -> io::Result<Vec<(K, V)>> {
    collect(map, BPF_MAP_LOOKUP_AND_DELETE_BATCH, chunk)
}

fn collect<K: Pod, V: Pod>(map: &MapData, cmd: libc::c_long, chunk: usize) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    batch(map, cmd, chunk, |k: &K, v: &V| out.push((*k, *v))).map_err(|(e, _)| e)?;
    Ok(out)
}

fn batch<K: Pod, V: Pod>(map: &MapData, cmd: libc::c_long, chunk: usize, mut f: impl FnMut(&K, &V)) -> Result<usize, (io::Error, usize)> {
    let info = map.info().map_err(|e| (io::Error::other(e), 0))?;
    if (info.key_size() as usize, info.value_size() as usize) != (size_of::<K>(), size_of::<V>()) {
        let e = io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("map entries are {}+{} bytes, the types {}+{}", info.key_size(), info.value_size(), size_of::<K>(), size_of::<V>()),
        );
        return Err((e, 0));
    }
    let fd = map.fd().as_fd();
    let mut chunk = chunk.max(16);
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    let mut handed = 0usize;
    // Hash maps use a bucket index as the batch token.
    let mut token: u64 = 0;
    let mut first = true;
    // Bounded: a map holds at most 4M entries (kernel.flows_max), and every
    // round either returns entries, grows the chunk, or ends.
    for _ in 0..1_000_000 {
        keys.clear();
        values.clear();
        keys.reserve(chunk);
        values.reserve(chunk);
        let mut next: u64 = 0;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &token as *const u64 as u64 },
            out_batch: &mut next as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers with room for `count` keys and
        // values (reserved above) that live across the call; the kernel
        // writes at most `count` of each.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, &mut attr as *mut BatchAttr, size_of::<BatchAttr>()) };
        let err = (r < 0).then(io::Error::last_os_error);
        let n = (attr.count as usize).min(chunk);
        // SAFETY: the kernel filled the first `n` entries of both buffers.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        for (k, v) in keys.iter().zip(&values) {
            // SAFETY: initialized by the kernel (above), and any bit pattern
            // is a valid K and V (`Pod`), whose sizes are the map's (checked
            // on entry).
            unsafe { f(k.assume_init_ref(), v.assume_init_ref()) };
        }
        handed += n;
        match err {
            None => {}
            // The last chunk (possibly with entries in it).
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(handed),
            // One bucket holds more than `chunk` entries: retry it larger.
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                chunk *= 2;
                continue;
            }
            Some(e) => return Err((e, handed)),
        }
        token = next;
        first = false;
    }
    Err((io::Error::other("BPF_MAP_LOOKUP_BATCH did not finish"), handed))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    /// `union bpf_attr` for BPF_MAP_CREATE and BPF_MAP_UPDATE_ELEM (the prefixes used).
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
        // SAFETY: `attr` lives across the call, with its true size.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) }
    }

    #[test]
    fn a_draining_read_returns_every_entry_once_and_empties_the_map() {
        // BPF_MAP_TYPE_HASH = 1.
        let mut create = CreateAttr { map_type: 1, key_size: 8, value_size: 1, max_entries: 5_000, map_flags: 0 };
        let fd = bpf(0, &mut create);
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for k in 0..3_000u64 {
            let v = [1u8];
            let mut e = ElemAttr { map_fd: fd.as_raw_fd() as u32, key: &k as *const u64 as u64, value: v.as_ptr() as u64, ..Default::default() };
            assert_eq!(bpf(2, &mut e), 0);
        }
        let map = MapData::from_fd(fd).unwrap();
        let taken = take_all::<u64, u8>(&map, 64).unwrap();
        assert_eq!(taken.len(), 3_000);
        assert_eq!(taken.iter().map(|(k, _)| *k).collect::<std::collections::HashSet<_>>().len(), 3_000);
        assert!(take_all::<u64, u8>(&map, 64).unwrap().is_empty());
    }

    #[test]
    fn a_batch_read_returns_every_entry_of_an_lru_hash_map() {
        // BPF_MAP_TYPE_LRU_HASH = 9; the test runs as root (cargo xtask test).
        let mut create = CreateAttr { map_type: 9, key_size: 8, value_size: 16, max_entries: 20_000, map_flags: 0 };
        let fd = bpf(0, &mut create);
        assert!(fd >= 0, "BPF_MAP_CREATE: {} (the unit tests run as root)", io::Error::last_os_error());
        // SAFETY: a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        for k in 0..10_000u64 {
            let v = [k * 3, k + 7];
            let mut e = ElemAttr { map_fd: fd.as_raw_fd() as u32, key: &k as *const u64 as u64, value: v.as_ptr() as u64, ..Default::default() };
            assert_eq!(bpf(2, &mut e), 0, "BPF_MAP_UPDATE_ELEM: {}", io::Error::last_os_error());
        }
        let map = MapData::from_fd(fd).unwrap();
        // Types of other sizes than the map's entries are refused, not overrun.
        let wrong = lookup_all::<u64, u64>(&map, 100).unwrap_err();
        assert_eq!(wrong.kind(), io::ErrorKind::InvalidInput, "{wrong}");
        // A small chunk: many rounds, and buckets that need the chunk to grow.
        let all = lookup_all::<u64, [u64; 2]>(&map, 100).unwrap();
        assert_eq!(all.len(), 10_000);
        // The streaming form hands over the same entries, counted.
        let mut sum = 0u64;
        assert_eq!(for_each(&map, 100, |k: &u64, v: &[u64; 2]| sum += v[0] - 3 * k).unwrap(), 10_000);
        assert_eq!(sum, 0);
        let mut seen = std::collections::HashSet::new();
        for (k, v) in all {
            assert_eq!(v, [k * 3, k + 7]);
            assert!(seen.insert(k), "key {k} twice");
        }
    }
}
