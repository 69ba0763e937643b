//! Fail-open notes: a hook that could not reach the daemon leaves a note, which the daemon
//! records as a coverage event once it runs again.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Where hooks leave notes of containers started unprotected (fail-open), beside the
/// daemon's socket; the daemon records and counts them ([`collect_fail_open_notes`]).
pub fn fail_open_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("/run/driftlock"))
        .join("fail-open")
}

/// A note left by a hook that let a container start unprotected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailOpenNote {
    /// The container.
    pub id: String,
    /// When (RFC 3339).
    pub time: String,
    /// Why the daemon could not arm it.
    pub reason: String,
}

/// Says, where an operator looks, that a container started unprotected: syslog at once,
/// and a note the daemon records (audit record, `status`, metrics) when it runs again.
pub fn note_fail_open(socket: &Path, id: &str, reason: &str) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let text = format!("container {id} started UNPROTECTED (fail-open): {reason}");
    // daemon facility (3), warning (4); the hook runs with no environment, so no tag config.
    let line = format!("<28>driftlock-hook[{}]: {text}", std::process::id());
    // (DRIFTLOCK_SYSLOG_SOCKET: tests; runc gives hooks no environment.)
    let syslog = std::env::var_os("DRIFTLOCK_SYSLOG_SOCKET")
        .map_or_else(|| PathBuf::from("/dev/log"), PathBuf::from);
    if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = sock.send_to(line.as_bytes(), &syslog);
    }
    let dir = fail_open_dir(socket);
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let note = FailOpenNote {
        id: id.to_string(),
        time: crate::audit::rfc3339(std::time::SystemTime::now()),
        reason: reason.to_string(),
    };
    let name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!("{name}.{nanos}.{}.json", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            std::io::Write::write_all(
                &mut f,
                serde_json::to_string(&note).unwrap_or_default().as_bytes(),
            )
        });
    if let Err(e) = written {
        eprintln!(
            "driftlock: cannot leave the fail-open note {}: {e}",
            path.display()
        );
    }
}

/// Takes the hooks' fail-open notes (oldest first), removing them; unreadable ones are
/// removed and reported with what is known.
pub fn collect_fail_open_notes(dir: &Path) -> Vec<FailOpenNote> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let note = read_limited_file(&p).and_then(|b| {
                serde_json::from_slice::<FailOpenNote>(&b).map_err(|e| e.to_string())
            });
            let _ = std::fs::remove_file(&p);
            note.unwrap_or_else(|e| FailOpenNote {
                id: p
                    .file_name()
                    .map(|n| {
                        n.to_string_lossy()
                            .split('.')
                            .next()
                            .unwrap_or("")
                            .to_string()
                    })
                    .unwrap_or_default(),
                time: crate::audit::rfc3339(std::time::SystemTime::now()),
                reason: format!("unreadable note: {e}"),
            })
        })
        .collect()
}

pub(super) fn read_limited_file(p: &Path) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(p).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    f.take(64 << 10)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    Ok(data)
}
