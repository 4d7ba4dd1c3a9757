//! A one-shot monotonic `timerfd`, for event loops that wait on descriptors (the gateway port's
//! timers: its descriptor is registered on the port's mio `Poll`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};

/// A non-blocking, close-on-exec `timerfd` on `CLOCK_MONOTONIC`, armed one shot at a time. It
/// is readable from its expiry until [`Timer::clear`].
#[derive(Debug)]
pub(crate) struct Timer(OwnedFd);

impl Timer {
    /// A new, disarmed timer.
    pub(crate) fn new() -> io::Result<Timer> {
        Ok(Timer(timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?))
    }

    /// Arms the timer to expire once, `d` from now (a zero `d` would disarm it: the caller
    /// passes at least a microsecond).
    pub(crate) fn arm_in(&self, d: Duration) -> io::Result<()> {
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: d.as_secs() as _,
                tv_nsec: d.subsec_nanos() as _,
            },
        };
        timerfd_settime(&self.0, TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// Consumes an expiry (the descriptor's readiness lasts until its count is read); a timer
    /// that has not expired is left as it is.
    pub(crate) fn clear(&self) {
        let mut n = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut n);
    }
}

impl AsFd for Timer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_once_and_clears() {
        let t = Timer::new().expect("timerfd");
        let mut n = [0u8; 8];
        assert!(
            rustix::io::read(&t, &mut n).is_err(),
            "disarmed: would block"
        );
        t.arm_in(Duration::from_micros(1)).expect("arm");
        std::thread::sleep(Duration::from_millis(5));
        t.clear();
        assert!(
            rustix::io::read(&t, &mut n).is_err(),
            "cleared: would block"
        );
    }
}
