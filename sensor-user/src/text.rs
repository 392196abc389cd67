//! Turning kernel bytes (comm, paths, argv: attacker-controlled) into strings.
//! Valid UTF-8 is kept as is, every invalid byte becomes `\xNN`, so nothing is
//! silently lost and the output stays valid UTF-8. Control characters are kept in
//! the string (JSON escapes them); `escape_control` is for one-line text output.

use std::fmt::Write;

/// Decode `bytes` up to the first NUL, escaping invalid UTF-8 bytes as `\xNN`.
pub fn lossless(bytes: &[u8]) -> String {
    let bytes = match bytes.iter().position(|&b| b == 0) {
        Some(n) => &bytes[..n],
        None => bytes,
    };
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// For text output: control characters (newline, ESC, DEL, C1) shown escaped so a
/// hostile name can neither break the line nor drive the terminal.
pub fn escape_control(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_nul_and_escapes_invalid_bytes() {
        assert_eq!(lossless(b"curl\0garbage"), "curl");
        assert_eq!(lossless(b"a\xffb\xc3"), "a\\xffb\\xc3");
        assert_eq!(lossless("t\u{e9}l\u{e9}".as_bytes()), "t\u{e9}l\u{e9}");
    }

    #[test]
    fn control_characters_never_reach_a_terminal() {
        let hostile = "x\n{\"fake\":1}\x1b[31mred\x7f";
        let shown = escape_control(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown}");
        assert!(shown.contains("\\n") && shown.contains("\\u{1b}"));
    }
}
