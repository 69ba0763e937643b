//! Lossless text form of byte strings (paths, image keys, command lines).
//!
//! Linux paths are bytes: they may hold newlines, control characters and invalid UTF-8,
//! and an attacker chooses the names of the files it drops. Every place driftlock shows or
//! stores such bytes as text (baseline files, audit records, the socket protocol) uses this
//! one encoding, so a hostile name can neither break a line nor be mistaken for another:
//!
//! - printable ASCII other than `\` and valid UTF-8 outside the control ranges stay as they are;
//! - `\` becomes `\\`;
//! - every other byte (controls, DEL, bytes of invalid UTF-8, C1 controls) becomes `\xHH`.
//!
//! The result never contains a newline, tab or other control character, and [`unescape`]
//! returns exactly the original bytes.

use std::fmt::Write as _;

/// Encodes `bytes` in the lossless text form described in the module docs.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut rest = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                push_str_escaped(&mut out, valid);
                break;
            }
            Err(err) => {
                let (valid, after) = rest.split_at(err.valid_up_to());
                // The prefix was just checked, so this conversion cannot fail.
                if let Ok(valid) = std::str::from_utf8(valid) {
                    push_str_escaped(&mut out, valid);
                }
                let bad = err.error_len().unwrap_or(after.len()).max(1);
                for byte in &after[..bad.min(after.len())] {
                    push_hex(&mut out, *byte);
                }
                rest = &after[bad.min(after.len())..];
            }
        }
    }
    out
}

fn push_str_escaped(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for byte in c.encode_utf8(&mut buf).bytes() {
                    push_hex(out, byte);
                }
            }
            c => out.push(c),
        }
    }
}

fn push_hex(out: &mut String, byte: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{byte:02x}");
}

/// Why a string is not in the escaped form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnescapeError {
    /// A backslash not followed by `\` or `xHH`.
    #[error("bad escape at byte {0}: expected \\\\ or \\xHH")]
    BadEscape(usize),
    /// A raw control character, which the escaped form never contains.
    #[error("raw control character at byte {0}")]
    RawControl(usize),
}

/// Decodes the output of [`escape_bytes`] back to the original bytes.
pub fn unescape(text: &str) -> Result<Vec<u8>, UnescapeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            match bytes.get(i + 1) {
                Some(b'\\') => {
                    out.push(b'\\');
                    i += 2;
                }
                Some(b'x') => {
                    let hex = bytes.get(i + 2..i + 4).ok_or(UnescapeError::BadEscape(i))?;
                    let hi = hex_val(hex[0]).ok_or(UnescapeError::BadEscape(i))?;
                    let lo = hex_val(hex[1]).ok_or(UnescapeError::BadEscape(i))?;
                    out.push(hi << 4 | lo);
                    i += 4;
                }
                _ => return Err(UnescapeError::BadEscape(i)),
            }
        } else if b < 0x20 || b == 0x7f {
            return Err(UnescapeError::RawControl(i));
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_utf8_names_stay_readable() {
        assert_eq!(escape_bytes(b"/usr/bin/env"), "/usr/bin/env");
        assert_eq!(escape_bytes("/tmp/caf\u{e9}".as_bytes()), "/tmp/caf\u{e9}");
        assert_eq!(escape_bytes(b"a b"), "a b");
    }

    #[test]
    fn hostile_bytes_are_escaped() {
        assert_eq!(escape_bytes(b"/tmp/x\ny"), "/tmp/x\\x0ay");
        assert_eq!(escape_bytes(b"/tmp/\xff\xfe"), "/tmp/\\xff\\xfe");
        assert_eq!(escape_bytes(b"a\\xff"), "a\\\\xff");
        assert_eq!(escape_bytes(b"\x1b[31m"), "\\x1b[31m");
        assert_eq!(escape_bytes("\u{85}".as_bytes()), "\\xc2\\x85");
    }

    #[test]
    fn round_trip_every_byte_value() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let text = escape_bytes(&all);
        assert!(!text.chars().any(|c| c.is_control()));
        assert_eq!(unescape(&text).unwrap(), all);
        for len in 0..6 {
            let sample: Vec<u8> = (0..len)
                .map(|i| [0xe2, 0x82, 0xac, 0xff, b'\\'][i])
                .collect();
            assert_eq!(unescape(&escape_bytes(&sample)).unwrap(), sample);
        }
    }

    #[test]
    fn malformed_escapes_are_rejected() {
        assert_eq!(unescape("a\\q"), Err(UnescapeError::BadEscape(1)));
        assert_eq!(unescape("a\\x4"), Err(UnescapeError::BadEscape(1)));
        assert_eq!(unescape("a\nb"), Err(UnescapeError::RawControl(1)));
    }
}
