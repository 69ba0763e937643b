//! Changes to a directory's entries (inotify): the configuration file's directory, where
//! the kubelet swaps a `..data` symlink when a mounted ConfigMap changes.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// An inotify watch on one directory.
pub struct DirWatch {
    inotify: Inotify,
}

impl DirWatch {
    /// Watches `dir` for entries created, renamed in or out, written, or removed.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        inotify.add_watch(
            dir,
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_ATTRIB
                | AddWatchFlags::IN_DELETE_SELF,
        )?;
        Ok(DirWatch { inotify })
    }

    /// Waits up to `timeout` for a change; true if one came (the events are consumed).
    pub fn wait(&self, timeout: Duration) -> bool {
        let ms = timeout.as_millis().min(60_000) as i32;
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        let ready = matches!(
            poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)),
            Ok(n) if n > 0
        );
        let mut any = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            any = true;
        }
        ready && any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_swapped_in_is_seen() {
        let dir = std::env::temp_dir().join(format!("driftlock-dirwatch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let w = DirWatch::new(&dir).unwrap();
        assert!(!w.wait(Duration::from_millis(20)));
        std::os::unix::fs::symlink("a", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert!(w.wait(Duration::from_secs(5)));
        assert!(!w.wait(Duration::from_millis(20)), "events are consumed");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
