//! Struct field offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux),
//! patched into the eBPF programs as globals: CO-RE without a C shim. The send-
//! path probes read `struct sock_common` and `struct msghdr` fields; their
//! offsets come from here, never from one kernel's headers.
//!
//! A small reader on purpose: aya keeps BTF member lookups private, and the
//! maintained Rust BTF crate (btf-rs) is LGPL, awkward for a statically linked
//! MIT/Apache binary. Only what offset resolution needs is parsed.

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    #[error("field {1} not found in struct {0}")]
    NoField(String, String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    Composite { name: u32, members: Vec<Member>, union: bool },
    /// FUNC_PROTO: its return type and (name, type) of each parameter.
    Proto { ret: u32, params: Vec<(u32, u32)> },
    /// PTR, TYPEDEF, CONST, VOLATILE, RESTRICT, TYPE_TAG: what it refers to
    /// (`name` is the typedef's own, else 0).
    Ref { kind: u32, name: u32, target: u32 },
    /// INT, ENUM, FWD, FLOAT, ENUM64: a type known by its name.
    Named { name: u32 },
    Other,
}

const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;

pub struct Btf {
    strings: Vec<u8>,
    /// Index = type id (0 is void).
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
    /// Enumerator name -> value (`enum iter_type`'s order changed in 6.5).
    enumerators: HashMap<String, i64>,
    /// Kernel function name -> its FUNC_PROTO type id.
    funcs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, String> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .map_err(|e| format!("the kernel exposes no BTF (/sys/kernel/btf/vmlinux: {e}); fentry/kprobe need CONFIG_DEBUG_INFO_BTF"))?;
        Btf::parse(&data).map_err(|e| e.to_string())
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_sec = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut types = vec![Type::Other];
        let mut enum_entries: Vec<(u32, i64)> = Vec::new();
        let mut funcs: Vec<(u32, u32)> = Vec::new();
        let mut p = 0usize;
        while p < types_sec.len() {
            let name = u32_at(types_sec, p)?;
            let info = u32_at(types_sec, p + 4)?;
            let size_or_type = u32_at(types_sec, p + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            p += 12;
            // Bytes of kind-specific data after the common header.
            let extra = match kind {
                1 => 4,                             // INT
                3 => 12,                            // ARRAY
                4 | 5 => 12 * vlen,                 // STRUCT, UNION
                6 => 8 * vlen,                      // ENUM
                13 => 8 * vlen,                     // FUNC_PROTO
                14 => 4,                            // VAR
                15 => 12 * vlen,                    // DATASEC
                17 => 4,                            // DECL_TAG
                19 => 12 * vlen,                    // ENUM64
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR FWD TYPEDEF VOLATILE CONST RESTRICT FUNC FLOAT TYPE_TAG
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            let body = types_sec.get(p..p + extra).ok_or(BtfError::Malformed("truncated type"))?;
            let t = if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let off = u32_at(body, i * 12 + 8)?;
                    members.push(Member {
                        name: u32_at(body, i * 12)?,
                        type_id: u32_at(body, i * 12 + 4)?,
                        // With kind_flag the high 8 bits are a bitfield size.
                        bit_offset: if kind_flag { off & 0x00ff_ffff } else { off },
                    });
                }
                Type::Composite { name, members, union: kind == KIND_UNION }
            } else {
                if kind == KIND_ENUM {
                    for i in 0..vlen {
                        enum_entries.push((u32_at(body, i * 8)?, u32_at(body, i * 8 + 4)? as i32 as i64));
                    }
                }
                match kind {
                    KIND_FUNC_PROTO => Type::Proto {
                        ret: size_or_type,
                        params: (0..vlen).map(|i| Ok((u32_at(body, i * 8)?, u32_at(body, i * 8 + 4)?))).collect::<Result<_, BtfError>>()?,
                    },
                    KIND_FUNC => {
                        funcs.push((name, size_or_type));
                        Type::Other
                    }
                    KIND_PTR | KIND_TYPEDEF | 9 | 10 | 11 | 18 => Type::Ref { kind, name, target: size_or_type },
                    1 | 6 | 7 | 16 | 19 => Type::Named { name },
                    _ => Type::Other,
                }
            };
            types.push(t);
            p += extra;
        }
        let mut btf = Btf { strings, types, by_name: HashMap::new(), enumerators: HashMap::new(), funcs: HashMap::new() };
        for (name, proto) in funcs {
            let n = btf.name(name).to_string();
            btf.funcs.entry(n).or_insert(proto);
        }
        for (name, value) in enum_entries {
            let n = btf.name(name).to_string();
            btf.enumerators.entry(n).or_insert(value);
        }
        for (id, t) in btf.types.iter().enumerate() {
            if let Type::Composite { name, .. } = t {
                if *name != 0 {
                    let n = btf.name(*name).to_string();
                    btf.by_name.entry(n).or_default().push(id as u32);
                }
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Byte offset of `field` in `struct_name`, looking through anonymous
    /// unions and structs (as `sock_common` nests `skc_daddr`).
    pub fn field_offset(&self, struct_name: &str, field: &str) -> Result<u32, BtfError> {
        let ids = self.by_name.get(struct_name).ok_or_else(|| BtfError::NoStruct(struct_name.into()))?;
        for &id in ids {
            if let Some(bits) = self.find(id, field, 0) {
                return Ok(bits / 8);
            }
        }
        Err(BtfError::NoField(struct_name.into(), field.into()))
    }

    /// A kernel function's parameters as (name, C type), e.g.
    /// `("sk", "struct sock *")`; None if BTF has no such function.
    pub fn params(&self, func: &str) -> Option<Vec<(String, String)>> {
        let Type::Proto { params, .. } = self.types.get(*self.funcs.get(func)? as usize)? else { return None };
        Some(params.iter().map(|&(n, t)| (self.name(n).to_string(), self.render(t, 0))).collect())
    }

    /// A kernel function's return type as C spells it.
    pub fn returns(&self, func: &str) -> Option<String> {
        let Type::Proto { ret, .. } = self.types.get(*self.funcs.get(func)? as usize)? else { return None };
        Some(self.render(*ret, 0))
    }

    /// A type as C spells it, qualifiers dropped: `struct sock *`, `size_t`.
    fn render(&self, id: u32, depth: u32) -> String {
        if depth > 16 {
            return "?".into();
        }
        match self.types.get(id as usize) {
            None => "?".into(),
            Some(_) if id == 0 => "void".into(),
            Some(Type::Composite { name, union, .. }) => format!("{} {}", if *union { "union" } else { "struct" }, self.name(*name)),
            Some(Type::Named { name }) => self.name(*name).to_string(),
            Some(Type::Ref { kind: KIND_PTR, target, .. }) => format!("{} *", self.render(*target, depth + 1)),
            Some(Type::Ref { kind: KIND_TYPEDEF, name, .. }) => self.name(*name).to_string(),
            Some(Type::Ref { target, .. }) => self.render(*target, depth + 1),
            Some(_) => "?".into(),
        }
    }

    /// Value of an enumerator (e.g. `ITER_UBUF`), if the kernel has it.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.enumerators.get(name).copied()
    }

    fn find(&self, id: u32, field: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let Type::Composite { members, .. } = self.types.get(id as usize)? else { return None };
        for m in members {
            if m.name != 0 && self.name(m.name) == field {
                return Some(m.bit_offset);
            }
            if m.name == 0 {
                if let Some(inner) = self.find(m.type_id, field, depth + 1) {
                    return Some(m.bit_offset + inner);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's own BTF: real data, and the fields the probes read.
    #[test]
    fn sock_common_and_msghdr_fields_from_this_kernel() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("this test needs /sys/kernel/btf/vmlinux (the project machines have it)");
        };
        let btf = Btf::parse(&data).unwrap();
        // The hash-lookup layout at the head of sock_common has been stable for
        // 15 years: these are the known values, read here from BTF.
        assert_eq!(btf.field_offset("sock_common", "skc_daddr"), Ok(0));
        assert_eq!(btf.field_offset("sock_common", "skc_rcv_saddr"), Ok(4));
        assert_eq!(btf.field_offset("sock_common", "skc_dport"), Ok(12));
        assert_eq!(btf.field_offset("sock_common", "skc_num"), Ok(14));
        assert_eq!(btf.field_offset("sock_common", "skc_family"), Ok(16));
        let v6 = btf.field_offset("sock_common", "skc_v6_daddr").unwrap();
        assert!(v6 > 16 && v6 < 200, "{v6}");
        assert_eq!(btf.field_offset("msghdr", "msg_name"), Ok(0));
        assert_eq!(btf.field_offset("msghdr", "msg_namelen"), Ok(8));
        assert!(matches!(btf.field_offset("sock_common", "no_such"), Err(BtfError::NoField(..))));
        // What the send-path capture reads to find a send's first bytes.
        let iter = btf.field_offset("msghdr", "msg_iter").unwrap();
        assert!(iter > 8 && iter < 64, "{iter}");
        let count = btf.field_offset("iov_iter", "count").unwrap();
        let ubuf = btf.field_offset("iov_iter", "ubuf").unwrap();
        assert!(ubuf != count && ubuf.is_multiple_of(8), "{ubuf} {count}");
        assert!(btf.enum_value("ITER_UBUF").is_some() && btf.enum_value("ITER_IOVEC").is_some());
        assert_eq!(btf.enum_value("TCP_ESTABLISHED"), Some(1));
        assert_eq!(btf.enum_value("NO_SUCH_ENUMERATOR"), None);
        assert!(matches!(btf.field_offset("no_such_struct", "x"), Err(BtfError::NoStruct(..))));
        // Function prototypes, as the hooks rely on them.
        let p = btf.params("tcp_sendmsg").unwrap();
        assert_eq!(p[..2], [("sk".into(), "struct sock *".into()), ("msg".into(), "struct msghdr *".into())]);
        assert_eq!(btf.params("tcp_cleanup_rbuf").unwrap()[1].1, "int");
        assert_eq!(btf.params("udp_sendmsg").unwrap()[2].1, "size_t");
        assert_eq!(btf.params("no_such_function"), None);
        assert_eq!(btf.returns("tcp_sendmsg").as_deref(), Some("int"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut data = std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default();
        if data.len() > 1000 {
            data.truncate(data.len() / 2);
            assert!(Btf::parse(&data).is_err());
        }
    }
}
