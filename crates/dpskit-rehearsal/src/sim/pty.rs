//! The serial line of a virtual board: a Linux pseudo-terminal. The board holds the master; the
//! client (espflash, esptool) opens the slave path like any serial port.
//!
//! The board also keeps one slave descriptor open, so the master never sees a hangup between
//! two clients and the line settings (raw mode) persist. Descriptors are close-on-exec so that a
//! child process (esptool) cannot keep another board's line alive.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios::{self, BaudRate, SetArg};
use nix::unistd::pipe2;

/// Readiness reported by [`Pty::wait`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready {
    pub readable: bool,
    pub writable: bool,
}

/// One pseudo-terminal pair, master side.
pub struct Pty {
    master: PtyMaster,
    keeper: File,
    path: PathBuf,
}

impl std::fmt::Debug for Pty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pty").field("path", &self.path).finish()
    }
}

impl Pty {
    /// Allocates a pty in raw mode; the master is non-blocking.
    pub fn open() -> io::Result<Pty> {
        let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
        grantpt(&master)?;
        unlockpt(&master)?;
        let path = PathBuf::from(ptsname_r(&master)?);
        let flags = OFlag::from_bits_truncate(fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(
            master.as_raw_fd(),
            FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
        )?;
        let keeper = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
            .open(&path)?;
        let mut t = termios::tcgetattr(keeper.as_fd())?;
        termios::cfmakeraw(&mut t);
        termios::cfsetspeed(&mut t, BaudRate::B115200)?;
        termios::tcsetattr(keeper.as_fd(), SetArg::TCSANOW, &t)?;
        Ok(Pty {
            master,
            keeper,
            path,
        })
    }

    /// The slave device path clients open, e.g. `/dev/pts/7`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for input (and for room to write, if `want_write`), or until
    /// `wake` becomes readable.
    pub fn wait(
        &self,
        want_write: bool,
        wake: Option<&Waker>,
        timeout: Duration,
    ) -> io::Result<Ready> {
        let mut flags = PollFlags::POLLIN;
        if want_write {
            flags |= PollFlags::POLLOUT;
        }
        let mut fds = vec![PollFd::new(self.master.as_fd(), flags)];
        if let Some(w) = wake {
            fds.push(PollFd::new(w.read.as_fd(), PollFlags::POLLIN));
        }
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Ready::default()),
            Err(e) => return Err(e.into()),
        }
        if let Some(w) = wake {
            w.drain();
        }
        let r = fds[0].revents().unwrap_or(PollFlags::empty());
        Ok(Ready {
            readable: r.contains(PollFlags::POLLIN),
            writable: r.contains(PollFlags::POLLOUT),
        })
    }

    /// Reads what the client sent; `Ok(0)` when nothing is pending.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match nix::unistd::read(self.master.as_raw_fd(), buf) {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(0),
            // No slave open (cannot happen while the keeper lives, but harmless).
            Err(Errno::EIO) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes as much as the line takes now; `Ok(0)` when it is full.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        match nix::unistd::write(self.master.as_fd(), buf) {
            Ok(n) => Ok(n),
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies a baud rate to the line settings (cosmetic on a pty, but visible to `stty`).
    /// Rates without a termios constant are left alone.
    pub fn set_baud(&self, baud: u32) {
        let Some(rate) = baud_constant(baud) else {
            return;
        };
        if let Ok(mut t) = termios::tcgetattr(self.keeper.as_fd()) {
            if termios::cfsetspeed(&mut t, rate).is_ok() {
                let _ = termios::tcsetattr(self.keeper.as_fd(), SetArg::TCSANOW, &t);
            }
        }
    }
}

/// Wakes a thread blocked in [`Pty::wait`] (a non-blocking self-pipe).
#[derive(Debug)]
pub struct Waker {
    read: OwnedFd,
    write: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Waker { read, write })
    }

    /// Makes the next (or current) wait return.
    pub fn wake(&self) {
        let _ = nix::unistd::write(self.write.as_fd(), &[1]);
    }

    fn drain(&self) {
        let mut buf = [0u8; 64];
        while matches!(nix::unistd::read(self.read.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
    }
}

fn baud_constant(baud: u32) -> Option<BaudRate> {
    Some(match baud {
        9600 => BaudRate::B9600,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115_200 => BaudRate::B115200,
        230_400 => BaudRate::B230400,
        460_800 => BaudRate::B460800,
        500_000 => BaudRate::B500000,
        576_000 => BaudRate::B576000,
        921_600 => BaudRate::B921600,
        1_000_000 => BaudRate::B1000000,
        1_152_000 => BaudRate::B1152000,
        1_500_000 => BaudRate::B1500000,
        2_000_000 => BaudRate::B2000000,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_cross_both_ways_in_raw_mode() {
        let pty = Pty::open().unwrap();
        let mut client = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(pty.path())
            .unwrap();
        // Bytes that a cooked tty would mangle: CR, ^C, ^D, 0xC0.
        let msg = [0xC0u8, b'\r', 0x03, 0x04, b'\n', 0xDB, 0xC0];
        client.write_all(&msg).unwrap();
        let mut got = Vec::new();
        while got.len() < msg.len() {
            if pty
                .wait(false, None, Duration::from_millis(500))
                .unwrap()
                .readable
            {
                let mut buf = [0u8; 64];
                let n = pty.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            } else {
                panic!("timeout, got {got:?}");
            }
        }
        assert_eq!(got, msg);
        assert_eq!(pty.write(&msg).unwrap(), msg.len());
        let mut back = [0u8; 7];
        client.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        pty.set_baud(921_600);
        let t = termios::tcgetattr(client.as_fd()).unwrap();
        assert_eq!(termios::cfgetospeed(&t), BaudRate::B921600);
    }

    #[test]
    fn waker_interrupts_a_long_wait() {
        let pty = Pty::open().unwrap();
        let waker = std::sync::Arc::new(Waker::new().unwrap());
        let w2 = std::sync::Arc::clone(&waker);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.wake();
        });
        let start = std::time::Instant::now();
        let r = pty
            .wait(false, Some(&waker), Duration::from_secs(10))
            .unwrap();
        assert!(!r.readable);
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
    }
}
