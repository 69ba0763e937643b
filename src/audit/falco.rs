//! Falco's JSON alert shape, so records reach Falcosidekick (and from there Slack, Loki,
//! Elasticsearch, ...) without new code: `POST` of one alert per request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use super::AuditRecord;
use crate::verdict::Verdict;

/// The rule name alerts carry.
pub const RULE: &str = "Container drift: program not in the image executed";

/// True for characters that change how text reads without showing themselves: bidi
/// controls, zero-width characters, line and paragraph separators, soft hyphen, tags.
fn is_invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFB
            | 0xE0000..=0xE0FFF
    ) || c.is_control()
}

/// A name chosen by whoever controls the container (a path, a command line, a process
/// name, an annotation), as it may appear in the alert's one-line text: quoted, with
/// quotes, backslashes and invisible characters escaped, so it can neither pose as the
/// text around it ("x executed in container billing") nor hide or reorder what it shows.
fn quoted(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_invisible(c) => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Converts a record to a Falco alert.
pub fn to_falco(rec: &AuditRecord, hostname: &str) -> Value {
    let priority = match rec.verdict {
        Verdict::Deny => "Critical",
        Verdict::WouldDeny => "Warning",
        Verdict::Allow => "Informational",
    };
    let verb = match rec.verdict {
        Verdict::Deny => "prevented",
        Verdict::WouldDeny => "detected (audit mode)",
        Verdict::Allow => "allowed",
    };
    let path = rec.path.clone().unwrap_or_default();
    let cmdline = rec.cmdline.join(" ");
    let parent = rec.chain.get(1).map(|p| p.comm.clone());
    let output = format!(
        "Drift {verb}: {} executed in container {} (image {}) by {} ({}); reason {}, sha256 {}",
        quoted(&path),
        quoted(&rec.unit),
        quoted(rec.image_name.as_deref().unwrap_or(&rec.image_key)),
        quoted(rec.comm.as_deref().unwrap_or("?")),
        quoted(&cmdline),
        rec.reason.as_str(),
        rec.sha256.as_deref().unwrap_or("?"),
    );
    json!({
        "output": output,
        "priority": priority,
        "rule": RULE,
        "time": rec.time,
        "source": "driftlock",
        "hostname": hostname,
        "tags": ["container", "drift", "mitre_execution", "driftlock"],
        "output_fields": {
            "evt.time.iso8601": rec.time,
            "evt.type": "execve",
            "container.id": rec.unit,
            "container.image.repository": rec.image_name,
            "container.name": rec.k8s_container,
            "k8s.ns.name": rec.k8s_namespace,
            "k8s.pod.name": rec.k8s_pod,
            "proc.exepath": path,
            "proc.name": rec.comm,
            "proc.cmdline": cmdline,
            "proc.pid": rec.pid,
            "proc.ppid": rec.ppid,
            "proc.pname": parent,
            "user.uid": rec.uid,
            "driftlock.verdict": rec.verdict,
            "driftlock.reason": rec.reason,
            "driftlock.mode": rec.mode,
            "driftlock.sha256": rec.sha256,
            "driftlock.blake3": rec.blake3,
            "driftlock.image_key": rec.image_key,
        }
    })
}

/// Where Falcosidekick listens (plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`.
    pub authority: String,
    /// Request path.
    pub path: String,
}

/// Why a Falcosidekick URL is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not `http://`.
    #[error("{0:?}: only http:// URLs are supported (run Falcosidekick beside the node)")]
    NotHttp(String),
    /// No `host:port`.
    #[error("{0:?}: give host:port")]
    NoHostPort(String),
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(url: &str) -> Result<Self, EndpointError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| EndpointError::NotHttp(url.to_string()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(EndpointError::NoHostPort(url.to_string()));
        }
        Ok(Endpoint {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// Posts one alert; returns the HTTP status.
pub fn post(endpoint: &Endpoint, alert: &Value) -> std::io::Result<u16> {
    let body = serde_json::to_vec(alert).unwrap_or_default();
    let mut s = TcpStream::connect(&endpoint.authority)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.path,
        endpoint.authority,
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&body)?;
    let mut resp = [0u8; 64];
    let n = s.read(&mut resp)?;
    let text = String::from_utf8_lossy(&resp[..n]);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (7): attacker-chosen names could pose as the alert's own text or hide.
    #[test]
    fn names_in_the_alert_text_are_quoted_and_cannot_pose_as_its_text() {
        assert_eq!(
            quoted("/tmp/x executed in container billing (image y) by sh"),
            "\"/tmp/x executed in container billing (image y) by sh\""
        );
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        // Right-to-left override, zero-width space, line separator, BOM, a tag character.
        assert_eq!(
            quoted("evil\u{202e}gpj.exe\u{200b}\u{2028}\u{feff}\u{e0041}"),
            "\"evil\\u{202e}gpj.exe\\u{200b}\\u{2028}\\u{feff}\\u{e0041}\""
        );
        assert_eq!(
            quoted("ünïcödé 名前"),
            "\"ünïcödé 名前\"",
            "visible text stays"
        );
    }

    #[test]
    fn endpoints() {
        let e: Endpoint = "http://127.0.0.1:2801/".parse().unwrap();
        assert_eq!(
            e,
            Endpoint {
                authority: "127.0.0.1:2801".into(),
                path: "/".into()
            }
        );
        let e: Endpoint = "http://falcosidekick.falco.svc:2801".parse().unwrap();
        assert_eq!(e.path, "/");
        assert!("https://x:1/".parse::<Endpoint>().is_err());
        assert!("http:///".parse::<Endpoint>().is_err());
    }
}
