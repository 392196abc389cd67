//! The kernel prototypes the send-path hooks read their arguments and return
//! values by (fentry and kprobe read raw registers: a changed signature would
//! miscount silently). Each is written above its hook in
//! `sensor-ebpf/src/sendpath.rs`; this table is what `sluice check` and the
//! loader verify against the running kernel's BTF before loading.

use super::btf::Btf;

/// One hooked function: the C types of the arguments read, by position, and
/// of the return value read.
pub struct Prototype {
    pub func: &'static str,
    pub args: &'static [(usize, &'static str)],
    pub ret: &'static str,
    /// Not in every kernel (tcp_sendpage left in 6.5; MPTCP is a config option).
    pub optional: bool,
}

const SOCK_MSG: &[(usize, &str)] = &[(0, "struct sock *"), (1, "struct msghdr *")];

pub const HOOKS: &[Prototype] = &[
    // int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size);
    Prototype { func: "tcp_sendmsg", args: SOCK_MSG, ret: "int", optional: false },
    // int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags);
    Prototype { func: "tcp_sendpage", args: &[(0, "struct sock *")], ret: "int", optional: true },
    // static int mptcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len);
    Prototype { func: "mptcp_sendmsg", args: SOCK_MSG, ret: "int", optional: true },
    // static int tcp_bpf_sendmsg(struct sock *sk, struct msghdr *msg, size_t size);
    Prototype { func: "tcp_bpf_sendmsg", args: SOCK_MSG, ret: "int", optional: true },
    // int inet_sendmsg(struct socket *sock, struct msghdr *msg, size_t size);
    // (and inet6_sendmsg, in a module where IPv6 is one): kTLS sends
    Prototype { func: "inet_sendmsg", args: &[(0, "struct socket *")], ret: "int", optional: false },
    Prototype { func: "inet6_sendmsg", args: &[(0, "struct socket *")], ret: "int", optional: true },
    // ssize_t inet_sendpage(struct socket *sock, struct page *page, int offset, size_t size, int flags);
    Prototype { func: "inet_sendpage", args: &[(0, "struct socket *")], ret: "ssize_t", optional: true },
    // int udp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len);
    Prototype { func: "udp_sendmsg", args: SOCK_MSG, ret: "int", optional: false },
    // int udpv6_sendmsg(struct sock *sk, struct msghdr *msg, size_t len);
    Prototype { func: "udpv6_sendmsg", args: SOCK_MSG, ret: "int", optional: false },
    // int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len);
    // (`flags` is found by name: it was argument 5 before 5.19)
    Prototype { func: "tcp_recvmsg", args: &[(0, "struct sock *")], ret: "int", optional: false },
    // void tcp_cleanup_rbuf(struct sock *sk, int copied);
    Prototype { func: "tcp_cleanup_rbuf", args: &[(0, "struct sock *"), (1, "int")], ret: "void", optional: false },
];

/// Every hook against `btf`: Ok with one line per hook (optional ones that
/// are absent said so), or the first mismatch, worded for the operator.
pub fn verify(btf: &Btf) -> Result<Vec<String>, String> {
    verify_hooks(btf, HOOKS)
}

fn verify_hooks(btf: &Btf, hooks: &[Prototype]) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for h in hooks {
        let Some(params) = btf.params(h.func) else {
            if h.optional {
                lines.push(format!("{}: not in this kernel (optional)", h.func));
                continue;
            }
            return Err(format!("{} is not in this kernel's BTF; the send-path backends need it", h.func));
        };
        for &(i, want) in h.args {
            let got = params.get(i).map(|(_, t)| t.as_str()).unwrap_or("(none)");
            if got != want {
                return Err(format!(
                    "{}'s argument {} is `{got}` on this kernel, the probe reads `{want}`: refusing rather than miscounting",
                    h.func,
                    i + 1
                ));
            }
        }
        let ret = btf.returns(h.func).unwrap_or_default();
        if ret != h.ret {
            return Err(format!("{} returns `{ret}` on this kernel, the probe reads `{}`: refusing rather than miscounting", h.func, h.ret));
        }
        lines.push(format!("{}: matches", h.func));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_hooks_match_what_the_probes_read() {
        let btf = Btf::from_sys_fs().expect("the project machines have /sys/kernel/btf/vmlinux");
        let lines = verify(&btf).unwrap();
        assert_eq!(lines.len(), HOOKS.len());
        assert!(lines.iter().any(|l| l == "tcp_sendmsg: matches"), "{lines:?}");
        // 6.5 folded tcp_sendpage into tcp_sendmsg: optional, said as such.
        assert!(lines.iter().any(|l| l.starts_with("tcp_sendpage: ")), "{lines:?}");
    }

    #[test]
    fn a_changed_signature_is_refused_with_what_differs() {
        let btf = Btf::from_sys_fs().unwrap();
        let changed = [Prototype { func: "tcp_sendmsg", args: &[(1, "struct sk_buff *")], ret: "int", optional: false }];
        let e = verify_hooks(&btf, &changed).unwrap_err();
        assert!(e.contains("tcp_sendmsg's argument 2 is `struct msghdr *`") && e.contains("`struct sk_buff *`"), "{e}");
        let gone = [Prototype { func: "tcp_sendmsg_v9", args: &[], ret: "int", optional: false }];
        assert!(verify_hooks(&btf, &gone).unwrap_err().contains("not in this kernel"));
        let ret = [Prototype { func: "tcp_cleanup_rbuf", args: &[], ret: "int", optional: false }];
        assert!(verify_hooks(&btf, &ret).unwrap_err().contains("returns `void`"));
    }
}
