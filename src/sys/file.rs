//! Streaming a long file out without filling the page cache: [`DropBehind`], the writer of
//! capture files (`usernet ctl capture -w FILE`, `[[port]] pcap`).
//!
//! A capture at several Gbit/s writes GBs. Written the plain way, each GB becomes dirty page
//! cache that stays cached after its writeback, so the writer keeps taking fresh pages (and the
//! rest of the machine's cache is evicted for data nobody reads back soon); on a virtual machine
//! whose host backs guest memory on first touch, that costs about 2 s of CPU per GB in the
//! writer (measured: 4 GiB in 256 KiB writes, 8.5 s of CPU plain, 1.1 s with drop-behind).
//! [`DropBehind`] starts the writeback of each [`WINDOW`] as soon as it is written
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait) and, one window later,
//! waits for the previous window's writeback and drops its pages
//! (`posix_fadvise(POSIX_FADV_DONTNEED)`): at most about two windows of the file stay in the
//! cache, and their pages are reused while still warm. The bytes written are the same; both
//! calls are hints whose failure (a FIFO, a file system without them) is ignored.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;

/// Bytes written between two writeback starts (and dropped one window later).
pub const WINDOW: u64 = 8 << 20;

/// A regular file written front to back, whose written data leaves the page cache once it is
/// on disk (see the module documentation). Wraps any other file (a FIFO, a character device)
/// as a plain pass-through.
#[derive(Debug)]
pub struct DropBehind {
    file: File,
    /// Whether the hints apply (a regular file).
    regular: bool,
    /// File offset of the next byte written.
    pos: u64,
    /// Start of the window being written.
    start: u64,
    /// The window written before it, whose writeback has been started: (offset, length).
    prev: Option<(u64, u64)>,
}

impl DropBehind {
    /// Wraps `file`, positioned where the next write lands (its length when opened to append,
    /// 0 when created or truncated).
    pub fn new(file: File) -> DropBehind {
        let meta = file.metadata().ok();
        let regular = meta.as_ref().is_some_and(std::fs::Metadata::is_file);
        let pos = if regular {
            meta.map_or(0, |m| m.len())
        } else {
            0
        };
        DropBehind {
            file,
            regular,
            pos,
            start: pos,
            prev: None,
        }
    }

    /// `n` more bytes were written: a full window rotates.
    fn wrote(&mut self, n: usize) {
        if self.regular {
            self.pos += n as u64;
            if self.pos - self.start >= WINDOW {
                self.rotate();
            }
        }
    }

    fn rotate(&mut self) {
        let (start, len) = (self.start, self.pos - self.start);
        sync_range(&self.file, start, len, libc::SYNC_FILE_RANGE_WRITE);
        if let Some((ps, pl)) = self.prev {
            sync_range(
                &self.file,
                ps,
                pl,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            let _ = rustix::fs::fadvise(
                &self.file,
                ps,
                std::num::NonZeroU64::new(pl),
                rustix::fs::Advice::DontNeed,
            );
        }
        self.prev = Some((start, len));
        self.start = self.pos;
    }
}

/// Whether `fd` was opened for writing (`O_WRONLY` or `O_RDWR`): a descriptor passed to be
/// written to (a capture's file, see `crate::control::capture`) is checked before it is taken.
pub fn is_writable(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let fl = rustix::fs::fcntl_getfl(fd)?;
    Ok(fl.contains(rustix::fs::OFlags::WRONLY) || fl.contains(rustix::fs::OFlags::RDWR))
}

/// `sync_file_range(2)` on one range; a failure only loses a hint.
fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) {
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: plain integer arguments and a descriptor `file` owns for the whole call; the
    // kernel reads no memory of ours.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, flags) };
}

impl Write for DropBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.wrote(n);
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.wrote(n);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_every_byte_in_order_across_windows() {
        let dir = std::env::temp_dir().join(format!("usernet-dropbehind-{}", std::process::id()));
        let path = dir.with_extension("bin");
        let mut w = DropBehind::new(File::create(&path).expect("create"));
        let chunk: Vec<u8> = (0..=255u8).cycle().take(300_001).collect();
        let mut want = Vec::new();
        while (want.len() as u64) < 3 * WINDOW + 12_345 {
            w.write_all(&chunk).expect("write");
            want.extend_from_slice(&chunk);
        }
        w.flush().expect("flush");
        assert!(w.prev.is_some(), "windows rotated");
        drop(w);
        // Appending goes on from the end.
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("reopen");
        let mut w = DropBehind::new(f);
        assert_eq!(w.pos, want.len() as u64);
        w.write_all(b"tail").expect("append");
        want.extend_from_slice(b"tail");
        drop(w);
        let mut got = Vec::new();
        File::open(&path)
            .expect("open")
            .read_to_end(&mut got)
            .expect("read");
        let _ = std::fs::remove_file(&path);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "same bytes");
    }

    #[test]
    fn tells_writable_descriptors() {
        use std::os::fd::AsFd;
        let w = File::options().write(true).open("/dev/null").expect("w");
        let r = File::open("/dev/null").expect("r");
        assert!(is_writable(w.as_fd()).expect("w"));
        assert!(!is_writable(r.as_fd()).expect("r"));
    }

    #[test]
    fn non_regular_files_pass_through() {
        let mut w = DropBehind::new(File::options().write(true).open("/dev/null").expect("null"));
        assert!(!w.regular);
        w.write_all(&[0u8; 1 << 16]).expect("write");
        assert_eq!(w.pos, 0);
    }
}
