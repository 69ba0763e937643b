//! Just enough ELF to find a program's interpreter (`PT_INTERP`), read through an fd.
//!
//! The loaders an image's programs name are the only files whose direct invocation
//! (`ld.so /tmp/payload`) runs code that raises no exec event of its own; the baseline
//! keeps their digests so the engine knows which exec events need the loader check.

use std::os::fd::BorrowedFd;

const PT_INTERP: u32 = 3;
/// Longest interpreter path accepted.
const MAX_INTERP: usize = 4096;
/// Most program headers read.
const MAX_PHNUM: usize = 256;

fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Option<()> {
    let mut done = 0;
    while done < buf.len() {
        let pos = i64::try_from(offset.checked_add(done as u64)?).ok()?;
        match nix::sys::uio::pread(fd, &mut buf[done..], pos) {
            Ok(0) => return None,
            Ok(n) => done += n,
            Err(nix::Error::EINTR) => {}
            Err(_) => return None,
        }
    }
    Some(())
}

fn field(bytes: &[u8], at: usize, len: usize, le: bool) -> Option<u64> {
    let s = bytes.get(at..at + len)?;
    let mut v: u64 = 0;
    for i in 0..len {
        let b = if le { s[len - 1 - i] } else { s[i] };
        v = (v << 8) | u64::from(b);
    }
    Some(v)
}

/// The `PT_INTERP` path of the ELF file behind `fd`, if it is an ELF with one.
pub fn interpreter(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    let mut ident = [0u8; 64];
    pread_exact(fd, &mut ident[..16], 0)?;
    if &ident[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = match ident[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let le = match ident[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let header_len = if is64 { 64 } else { 52 };
    pread_exact(fd, &mut ident[..header_len], 0)?;
    let (phoff, phentsize, phnum) = if is64 {
        (
            field(&ident, 32, 8, le)?,
            field(&ident, 54, 2, le)?,
            field(&ident, 56, 2, le)?,
        )
    } else {
        (
            field(&ident, 28, 4, le)?,
            field(&ident, 42, 2, le)?,
            field(&ident, 44, 2, le)?,
        )
    };
    let (phentsize, phnum) = (
        usize::try_from(phentsize).ok()?,
        usize::try_from(phnum).ok()?,
    );
    if phnum == 0 || phnum > MAX_PHNUM || phentsize < if is64 { 56 } else { 32 } || phentsize > 256
    {
        return None;
    }
    let mut table = vec![0u8; phentsize * phnum];
    pread_exact(fd, &mut table, phoff)?;
    for ph in table.chunks_exact(phentsize) {
        if field(ph, 0, 4, le)? != u64::from(PT_INTERP) {
            continue;
        }
        let (offset, size) = if is64 {
            (field(ph, 8, 8, le)?, field(ph, 32, 8, le)?)
        } else {
            (field(ph, 4, 4, le)?, field(ph, 16, 4, le)?)
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (1..=MAX_INTERP).contains(s))?;
        let mut path = vec![0u8; size];
        pread_exact(fd, &mut path, offset)?;
        if let Some(nul) = path.iter().position(|b| *b == 0) {
            path.truncate(nul);
        }
        return (!path.is_empty()).then_some(path);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn finds_the_interpreter_of_a_dynamic_program() {
        let f = std::fs::File::open("/usr/bin/true").unwrap();
        let interp = interpreter(f.as_fd()).unwrap();
        assert!(
            interp.starts_with(b"/lib"),
            "{}",
            String::from_utf8_lossy(&interp)
        );
    }

    #[test]
    fn non_elf_and_truncated_files_have_none() {
        let f = std::fs::File::open("/etc/hostname")
            .or_else(|_| std::fs::File::open("/etc/passwd"))
            .unwrap();
        assert_eq!(interpreter(f.as_fd()), None);
        let dir = std::env::temp_dir().join(format!("driftlock-elf-{}", std::process::id()));
        std::fs::write(&dir, &std::fs::read("/usr/bin/true").unwrap()[..40]).unwrap();
        assert_eq!(
            interpreter(std::fs::File::open(&dir).unwrap().as_fd()),
            None
        );
        std::fs::remove_file(&dir).unwrap();
    }
}
