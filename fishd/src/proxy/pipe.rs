//! One direction of a relay moved by the kernel: splice(2) takes what a socket has queued
//! into a pipe, and from the pipe into the other socket, so the bytes never cross into
//! user space (a plain copy reads them out and writes them back: two copies per byte).
//!
//! Each splice is non-blocking and driven by tokio's readiness of the socket it touches
//! (`readable()`/`writable()` + `try_io`), so a would-block clears exactly that readiness
//! and one runtime thread serves many pipes. A pipe is filled only when empty, so an
//! `EAGAIN` always means the socket, never a full or empty pipe.

use std::io;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;

use super::stream::Stream;

/// Pipe size asked for. 1 MiB is the most an unprivileged process may ask
/// (`fs.pipe-max-size`'s default) and lets one splice take all a fast socket has queued,
/// where the default 64 KiB pipe takes 16 round trips through the runtime for the same
/// bytes; the pages are only held while bytes wait in the pipe.
const CAPACITY: i32 = 1 << 20;

/// A pipe between two sockets, and how many bytes wait in it.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Spliced in from the source and not yet out to the destination.
    held: usize,
    capacity: usize,
}

impl Pipe {
    /// A new, empty pipe of [`CAPACITY`], or of the kernel's default size where it refuses
    /// that (past `fs.pipe-user-pages-soft` without `CAP_SYS_RESOURCE`).
    pub fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let capacity = match fcntl(&write, FcntlArg::F_SETPIPE_SZ(CAPACITY)) {
            Ok(size) => size,
            Err(_) => fcntl(&write, FcntlArg::F_GETPIPE_SZ)?,
        };
        let capacity = usize::try_from(capacity).map_err(|_| io::Error::other("negative pipe size"))?;
        Ok(Pipe { read, write, held: 0, capacity })
    }

    /// Waits until `from` has bytes or its end, and moves what it has queued (up to the
    /// pipe's size) into the empty pipe. Returns how many; 0 is the end of `from`'s stream.
    pub async fn fill(&mut self, from: &Stream) -> io::Result<usize> {
        debug_assert_eq!(self.held, 0, "a pipe is filled only when empty");
        loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || splice_once(from, &self.write, self.capacity)) {
                Ok(n) => {
                    self.held = n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until `to` takes bytes, and moves as many of the held ones as it takes.
    /// Returns how many (at least one).
    pub async fn drain(&mut self, to: &Stream) -> io::Result<usize> {
        debug_assert!(self.held > 0, "drain only a pipe that holds bytes");
        loop {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || splice_once(&self.read, to, self.held)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.held -= n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Whether `e` says this kernel or sandbox cannot splice these descriptors at all (rather
/// than that the connection failed), so the bytes must go through a buffer instead.
pub fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP))
}

fn splice_once(from: impl std::os::fd::AsFd, to: impl std::os::fd::AsFd, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let (from, to) = (from.as_fd(), to.as_fd());
    loop {
        match splice(from, None, to, None, len, flags) {
            Err(Errno::EINTR) => continue,
            result => return result.map_err(io::Error::from),
        }
    }
}
