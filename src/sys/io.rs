//! Descriptor I/O the links need beyond the standard library: an `eventfd` wake-up counter,
//! `poll` on a few descriptors, scatter reads, plain writes and `O_NONBLOCK`. All through
//! rustix, so nothing here is `unsafe`; none of it allocates (the hot paths of the TAP and
//! in-process links call [`readv`], [`write`] and [`EventFd`] once per frame or batch).

use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::OFlags;

/// A non-blocking, close-on-exec `eventfd`: a counter one side bumps ([`EventFd::signal`]) to
/// make the descriptor readable for the other's poller, which clears it ([`EventFd::reset`]).
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    /// A fresh counter at 0.
    pub(crate) fn new() -> io::Result<EventFd> {
        Ok(EventFd(rustix::event::eventfd(
            0,
            EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )?))
    }

    /// Adds 1 (the descriptor becomes readable). A failure (counter overflow, impossible in
    /// practice) only loses a wake-up that a later signal repeats.
    pub(crate) fn signal(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Reads the counter back to 0; `EAGAIN` (already 0) is fine.
    pub(crate) fn reset(&self) {
        let mut v = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut v);
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits until one of `fds` is readable (or hung up, or in error), for at most `timeout`
/// (`None`: forever). Returns which ones are; all `false` on timeout. `EINTR` is returned as
/// [`io::ErrorKind::Interrupted`] for the caller to retry or not.
pub(crate) fn wait_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut pfd = fds.map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN));
    let ts = match timeout {
        Some(t) => Some(Timespec::try_from(t).map_err(|_| io::Error::other("poll timeout"))?),
        None => None,
    };
    rustix::event::poll(&mut pfd, ts.as_ref())?;
    Ok(std::array::from_fn(|i| !pfd[i].revents().is_empty()))
}

/// `readv(2)` into `bufs`: the bytes read (0 at end of file).
pub(crate) fn readv(fd: impl AsFd, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    Ok(rustix::io::readv(fd, bufs)?)
}

/// `write(2)` of `buf`: the bytes written.
pub(crate) fn write(fd: impl AsFd, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::io::write(fd, buf)?)
}

/// `writev(2)` of `bufs`, gathered: the bytes written.
pub(crate) fn writev(fd: impl AsFd, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    Ok(rustix::io::writev(fd, bufs)?)
}

/// Sets `O_NONBLOCK` on `fd`, keeping its other status flags.
pub(crate) fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let fl = rustix::fs::fcntl_getfl(&fd)?;
    Ok(rustix::fs::fcntl_setfl(&fd, fl | OFlags::NONBLOCK)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn eventfd_signals_and_resets() {
        let e = EventFd::new().expect("eventfd");
        let ready = |e: &EventFd| wait_readable([e.as_fd()], Some(Duration::ZERO)).expect("poll");
        assert_eq!(ready(&e), [false]);
        e.signal();
        e.signal();
        assert_eq!(ready(&e), [true]);
        e.reset();
        assert_eq!(ready(&e), [false]);
        e.reset();
    }

    #[test]
    fn readv_scatters_and_poll_tells_which() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (c, _d) = UnixStream::pair().expect("pair");
        assert_eq!(write(&a, b"hello!").expect("write"), 6);
        let got =
            wait_readable([b.as_fd(), c.as_fd()], Some(Duration::from_secs(1))).expect("poll");
        assert_eq!(got, [true, false]);
        let (mut x, mut y) = ([0u8; 4], [0u8; 4]);
        let n = readv(&b, &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)]).expect("readv");
        assert_eq!((n, &x, &y[..2]), (6, b"hell", &b"o!"[..]));
        set_nonblocking(&b).expect("nonblocking");
        let e = readv(&b, &mut [IoSliceMut::new(&mut x)]).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
