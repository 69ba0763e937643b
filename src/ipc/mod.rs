//! The daemon's socket protocol, version 1: one JSON object per line each way.
//!
//! ```text
//! → {"v":1,"op":"arm","id":"c1","rootfs":"/run/c1/rootfs","mounts":["/run/c1/rootfs/tmp"],"mode":"enforce"}
//! ← {"v":1,"ok":true,"result":{...}}
//! ← {"v":1,"ok":false,"code":"busy","error":"..."}
//! ```
//!
//! A failure carries a [`ErrorCode`] so a client can tell "busy, retry" from a refusal; the
//! message is for people. The message types here are the protocol's own: tests pin their
//! JSON, so a renamed field cannot silently change version 1.
//!
//! Paths travel in the lossless escaped form of [`crate::escape`], since JSON strings
//! cannot carry arbitrary bytes. Requests of another version are refused with a message
//! naming both versions.

pub mod client;
mod replies;
pub mod server;

pub use replies::{
    ArmResult, CacheReply, CountersReply, ExplainReply, LastDenyReply, MarkReply, ModeChange,
    PendingReply, Reply, STATUS_SCHEMA, StatsReply, StatusReply, UnitReply,
};

use serde::{Deserialize, Serialize};

use crate::Mode;

/// What kind of failure a reply reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The daemon cannot take the request now (all client slots taken, the event loop
    /// slow to answer): retry with backoff.
    Busy,
    /// The request clashes with the daemon's state (a unit id or a filesystem already
    /// armed).
    Conflict,
    /// The unit, process or path named does not exist.
    NotFound,
    /// The request is malformed or names something unacceptable.
    Invalid,
    /// The peer may not use the socket (not root).
    Forbidden,
    /// The daemon failed (a mark, the state directory, the kernel).
    Internal,
}

impl ErrorCode {
    /// True when the same request may succeed later without change.
    pub fn is_retryable(self) -> bool {
        self == ErrorCode::Busy
    }
}

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Protect a unit.
    Arm(Box<ArmRequest>),
    /// Stop protecting a unit.
    Disarm {
        /// Unit id.
        id: String,
    },
    /// Report armed units and counters.
    Status,
    /// Would this file run in that unit, and why?
    Explain {
        /// Unit id.
        id: String,
        /// Path (escaped) as the container sees it.
        path: String,
        /// Answer under this candidate configuration file's allow entries (escaped path,
        /// read by the daemon) instead of those in force.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        against: Option<String>,
    },
    /// Liveness check.
    Ping,
    /// A successor daemon asks for the fanotify group (sent back with the reply, as
    /// `SCM_RIGHTS`) and the daemon's place: see [`crate::handover`].
    HandOver,
    /// Switch running units to another mode at once (break-glass, and back).
    SetMode {
        /// The new mode.
        mode: Mode,
        /// Which units.
        #[serde(flatten)]
        select: UnitSelector,
        /// Who asks (recorded).
        #[serde(default)]
        by: String,
        /// Why (recorded).
        #[serde(default)]
        reason: String,
    },
    /// The mode a container of this identity would be armed in (the runtime wrapper asks
    /// before the container is created, to restrict only enforce-mode containers).
    ModeFor {
        /// The container's identity, as the hook will send it at arm.
        #[serde(flatten)]
        identity: ContainerIdentity,
    },
}

/// Which armed units a request is about. At least one selector must be given; units must
/// match every one given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSelector {
    /// A unit id, a unique prefix of one, or `containerd://ID` (as Kubernetes shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Units of this Kubernetes namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Units of images matching this name (`*` at the end matches any suffix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Every armed unit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// What selects a container's mode: its image, its namespace, its own annotation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerIdentity {
    /// Image name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Kubernetes namespace, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The mode the container's own annotation asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_mode: Option<Mode>,
    /// Where the image name and namespace came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::IdentitySource>,
}

/// Parameters of `arm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmRequest {
    /// Unit id.
    pub id: String,
    /// Rootfs mount point (escaped bytes).
    pub rootfs: String,
    /// Further mount points of the unit (escaped bytes).
    #[serde(default)]
    pub mounts: Vec<String>,
    /// Mode chosen by the operator (`driftlock arm --mode`); wins over every rule.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Mode the container's own annotation asks for (sent by the hook): counts only as far
    /// as the daemon's annotation policy lets it ([`crate::AnnotationPolicy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_mode: Option<Mode>,
    /// Image key (escaped bytes); derived from the rootfs if absent.
    #[serde(default)]
    pub image_key: Option<String>,
    /// A process of the container (runc init at `createRuntime`): `rootfs` and `mounts`
    /// are then paths in its mount namespace, reached through `/proc/<pid>/root`.
    #[serde(default)]
    pub pid: Option<i32>,
    /// Also arm every mount under `rootfs` found in the mount table (pseudo filesystems
    /// such as proc and sysfs excepted).
    #[serde(default)]
    pub discover_mounts: bool,
    /// Where the host mounted the container's rootfs (escaped), in the daemon's namespace.
    #[serde(default)]
    pub host_rootfs: Option<String>,
    /// Image name for records (e.g. from `io.kubernetes.cri.image-name`).
    #[serde(default)]
    pub image_name: Option<String>,
    /// Kubernetes namespace (for per-namespace modes).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Kubernetes pod name (for records).
    #[serde(default)]
    pub pod: Option<String>,
    /// Container name in the pod (for records).
    #[serde(default)]
    pub container_name: Option<String>,
    /// Where the image name and namespace came from (for records; sent only when known,
    /// so an older daemon, which refuses unknown fields, is asked again without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_source: Option<crate::IdentitySource>,
}

/// The envelope on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u32,
    /// Success.
    pub ok: bool,
    /// What kind of failure (absent on success; a daemon of the first release sends none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub code: Option<ErrorCode>,
    /// Payload on success.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<serde_json::Value>,
    /// Message on failure.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl Response {
    /// A success.
    pub fn ok(reply: &Reply) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ok: true,
            code: None,
            result: serde_json::to_value(reply).ok(),
            error: None,
        }
    }
    /// A failure.
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            ok: false,
            code: Some(code),
            result: None,
            error: Some(message.into()),
        }
    }
}

/// Why a request line was refused before reaching a handler.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not JSON.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Missing or other version.
    #[error(
        "protocol version {found:?} is not supported (this daemon speaks version {PROTOCOL_VERSION})"
    )]
    Version {
        /// What the client sent.
        found: Option<u64>,
    },
}

/// Parses one request line.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    let mut value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let version = value
        .as_object_mut()
        .and_then(|o| o.remove("v"))
        .and_then(|v| v.as_u64());
    if version != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(ProtocolError::Version { found: version });
    }
    serde_json::from_value(value).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Encodes a request line (with the version and a trailing newline).
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut value = serde_json::to_value(req).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = value.as_object_mut() {
        obj.insert("v".into(), PROTOCOL_VERSION.into());
    }
    let mut line = serde_json::to_vec(&value).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let req = Request::Arm(Box::new(ArmRequest {
            id: "c1".into(),
            rootfs: crate::escape::escape_bytes(b"/run/x\n\xff"),
            mounts: vec!["/run/x/tmp".into()],
            mode: Some(Mode::Audit),
            annotated_mode: None,
            image_key: None,
            pid: Some(42),
            discover_mounts: true,
            host_rootfs: None,
            image_name: Some("docker.io/library/postgres:16".into()),
            namespace: Some("default".into()),
            pod: Some("db-0".into()),
            container_name: Some("postgres".into()),
            identity_source: None,
        }));
        let line = encode_request(&req);
        assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), req);
        assert_eq!(
            parse_request(br#"{"op":"ping"}"#),
            Err(ProtocolError::Version { found: None })
        );
        assert_eq!(
            parse_request(br#"{"v":2,"op":"ping"}"#),
            Err(ProtocolError::Version { found: Some(2) })
        );
        assert!(matches!(
            parse_request(b"\xff garbage"),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(br#"{"v":1,"op":"reboot"}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(br#"{"v":1,"op":"arm","id":"x","rootfs":"/r","evil":1}"#),
            Err(ProtocolError::Malformed(_))
        ));
        assert_eq!(
            parse_request(br#"{"v":1,"op":"status"}"#),
            Ok(Request::Status)
        );
    }
}
