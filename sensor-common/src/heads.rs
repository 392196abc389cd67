//! Payload heads: the bounded copies of connection starts and DNS messages
//! the kernel makes for naming destinations, and when it makes them.

use crate::{EventHeader, FlowKey};

/// Bytes of payload one `PayloadEvent` carries: a ClientHello with a
/// post-quantum key share is ~1.9 KB, a DNS answer over UDP at most 1232 with
/// the usual EDNS size. A power of two, so the eBPF side can mask lengths.
pub const PAYLOAD_LEN: usize = 2048;
/// Outbound stream bytes captured per connection at most (a ClientHello split
/// across writes or segments is reassembled from these).
pub const HEAD_STREAM_LIMIT: u64 = 4096;
/// Outbound datagrams captured per UDP flow at most (QUIC Initials).
pub const HEAD_DATAGRAM_LIMIT: u64 = 3;

/// `FlowCounters::head`: nothing decided yet, capturing, or done.
pub const HEAD_UNDECIDED: u32 = 0;
pub const HEAD_CAPTURING: u32 = 1;
pub const HEAD_DONE: u32 = 2;

/// Payload copies each CPU may make per `PAYLOAD_RATE_NS` (a flood of
/// ClientHellos or port-53 datagrams costs the agent at most this much work).
pub const PAYLOAD_RATE_MAX: u64 = 2_000;
pub const PAYLOAD_RATE_NS: u64 = 100_000_000;

/// `PayloadEvent::kind`.
/// The start of an outbound TCP stream that looks like TLS or HTTP.
pub const PAYLOAD_STREAM_HEAD: u32 = 1;
/// The first outbound datagrams of a UDP flow that look like QUIC.
pub const PAYLOAD_DATAGRAM_HEAD: u32 = 2;
/// An inbound DNS answer (UDP or TCP from port 53).
pub const PAYLOAD_DNS: u32 = 3;
/// An outbound DNS query (UDP to port 53): what an answer must match.
pub const PAYLOAD_DNS_QUERY: u32 = 4;

/// Payload bytes the kernel copied for userspace to parse (TLS SNI, HTTP Host,
/// QUIC, DNS). Parsing happens in userspace only: the kernel copies bounded
/// bytes and never interprets them beyond a few magic bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PayloadEvent {
    pub header: EventHeader,
    pub key: FlowKey,
    /// `PAYLOAD_*`.
    pub kind: u32,
    /// Bytes used in `data`.
    pub len: u32,
    /// Stream offset of `data[0]` (outbound TCP), datagram index (outbound
    /// UDP), TCP sequence number (inbound DNS over TCP), 0 otherwise.
    pub offset: u64,
    /// Payload length of the segment, write or datagram `data` came from.
    pub orig_len: u32,
    pub _pad: u32,
    pub data: [u8; PAYLOAD_LEN],
}
const _: () = assert!(core::mem::size_of::<PayloadEvent>() == 2144, "PayloadEvent changed size: both sides must agree");
// SAFETY: #[repr(C)] plain data; any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PayloadEvent {}

/// Whether bytes at the start of a stream look like a TLS handshake record
/// (content type 22, major version 3), an HTTP/1 request line, or a SOCKS
/// client's first message: SOCKS4 CONNECT/BIND (`04 01|02`), or a SOCKS5
/// greeting offering 1-8 methods, the first of them no-auth, GSSAPI or
/// username/password (`05 n 00|01|02`). A SOCKS5 greeting is often a write
/// of 3 bytes, so callers pass what they could read, zero-padded.
#[inline(always)]
pub fn looks_like_stream_head(b: [u8; 5]) -> bool {
    let word = [b[0], b[1], b[2], b[3]];
    (b[0] == 0x16 && b[1] == 0x03)
        || matches!(
            &word,
            b"GET " | b"PUT " | b"POST" | b"HEAD" | b"PATC" | b"DELE" | b"OPTI" | b"CONN"
        )
        || (b[0] == 4 && (b[1] == 1 || b[1] == 2))
        || (b[0] == 5 && b[1] >= 1 && b[1] <= 8 && b[2] <= 2)
}

/// Whether a datagram starts like a QUIC long-header packet of a known
/// version (v1, v2, or a draft): header form and fixed bits set.
#[inline(always)]
pub fn looks_like_quic(b: [u8; 5]) -> bool {
    let version = u32::from_be_bytes([b[1], b[2], b[3], b[4]]);
    b[0] & 0xc0 == 0xc0 && (version == 1 || version == 0x6b33_43cf || version >> 8 == 0xff_0000)
}

/// Capture decision for one outbound write or segment: given the flow's head
/// state, the stream offset (or datagram index) of its first new byte and
/// whether its first bytes look interesting, return the new state and whether
/// to copy it. Only the first write can start a capture; it then continues up
/// to `limit`.
#[inline(always)]
pub fn head_step(state: u32, offset: u64, interesting: bool, limit: u64) -> (u32, bool) {
    match state {
        HEAD_UNDECIDED if offset == 0 && interesting => (HEAD_CAPTURING, true),
        HEAD_UNDECIDED => (HEAD_DONE, false),
        HEAD_CAPTURING if offset < limit => (HEAD_CAPTURING, true),
        _ => (HEAD_DONE, false),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_capture_starts_only_at_offset_zero_and_stops_at_the_limit() {
        assert_eq!(head_step(HEAD_UNDECIDED, 0, true, 4096), (HEAD_CAPTURING, true));
        assert_eq!(head_step(HEAD_UNDECIDED, 0, false, 4096), (HEAD_DONE, false));
        // A connection first seen mid-stream (older than the sensor) is never captured.
        assert_eq!(head_step(HEAD_UNDECIDED, 900, true, 4096), (HEAD_DONE, false));
        assert_eq!(head_step(HEAD_CAPTURING, 1448, false, 4096), (HEAD_CAPTURING, true));
        assert_eq!(head_step(HEAD_CAPTURING, 4096, true, 4096), (HEAD_DONE, false));
        assert_eq!(head_step(HEAD_DONE, 0, true, 4096), (HEAD_DONE, false));
        assert!(looks_like_stream_head([0x16, 0x03, 0x01, 0x02, 0]));
        assert!(looks_like_stream_head(*b"PUT /"));
        assert!(!looks_like_stream_head(*b"SSH-2"));
        // SOCKS: a 3-byte SOCKS5 greeting (zero-padded), SOCKS4 CONNECT.
        assert!(looks_like_stream_head([5, 1, 0, 0, 0]));
        assert!(looks_like_stream_head([5, 2, 0, 2, 0]));
        assert!(looks_like_stream_head([4, 1, 0, 80, 1]));
        assert!(!looks_like_stream_head([5, 0, 0, 0, 0]));
        assert!(!looks_like_stream_head([5, 1, 0x80, 0, 0]));
        assert!(looks_like_quic([0xc3, 0, 0, 0, 1]));
        assert!(!looks_like_quic([0x43, 0, 0, 0, 1]));
        assert!(!looks_like_quic([0xc3, 0, 0, 0, 7]));
    }

}
