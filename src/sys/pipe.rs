//! Pipes and `splice(2)`: the kernel-to-kernel relay of spliced port forwards
//! ([`crate::nat`]'s splicer moves socket -> pipe -> socket without copying to userspace).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pipe::{PipeFlags, SpliceFlags};

/// A non-blocking, close-on-exec pipe: (read end, write end). Its capacity is raised to
/// `size` bytes when the kernel allows it (`F_SETPIPE_SZ`; a refusal, over
/// `/proc/sys/fs/pipe-max-size`, keeps the default).
pub(crate) fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&w, size);
    Ok((r, w))
}

/// The capacity of pipe `fd` (`F_GETPIPE_SZ`).
pub(crate) fn pipe_size(fd: impl AsFd) -> io::Result<usize> {
    Ok(rustix::pipe::fcntl_getpipe_size(fd)?)
}

/// `splice(from -> to)` of up to `len` bytes, non-blocking, no offsets (both ends are pipes or
/// sockets); retries on `EINTR`. `Ok(None)` means would block.
pub(crate) fn splice_once(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<Option<usize>> {
    loop {
        match rustix::pipe::splice(
            from.as_fd(),
            None,
            to.as_fd(),
            None,
            len,
            SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
        ) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_move_pipe_to_pipe() {
        let (r1, w1) = pipe(65536).expect("pipe");
        let (r2, w2) = pipe(65536).expect("pipe");
        assert!(pipe_size(&w1).expect("size") >= 4096);
        assert_eq!(splice_once(&r1, &w2, 64).expect("empty"), None);
        rustix::io::write(&w1, b"hello").expect("write");
        assert_eq!(splice_once(&r1, &w2, 64).expect("splice"), Some(5));
        let mut buf = [0u8; 8];
        assert_eq!(rustix::io::read(&r2, &mut buf).expect("read"), 5);
        assert_eq!(&buf[..5], b"hello");
    }
}
