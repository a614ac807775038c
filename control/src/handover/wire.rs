//! The handover socket's frames: one JSON document per `SOCK_SEQPACKET`
//! message (the kernel keeps message boundaries and the descriptors sent
//! with each), descriptors as `SCM_RIGHTS`. The only module of the control
//! plane with `unsafe`: taking ownership of received descriptors.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use serde::{Deserialize, Serialize};

/// Largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most descriptors one frame carries (the kernel's limit is 253).
pub const MAX_FDS: usize = 200;

/// What the two sides say. `Hello`, `Offer`, `Decline` and `Abort` are
/// the envelope every version keeps as it is, so that a daemon can always
/// tell a successor it does not understand to restart cleanly instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Frame {
    /// Successor -> predecessor: who asks, and the version it speaks.
    Hello { version: u32, pid: u32 },
    /// Predecessor -> successor: the version of what would follow.
    Offer {
        version: u32,
        node: String,
        pid: u32,
    },
    /// Successor -> predecessor: go on and send everything.
    Accept,
    /// Successor -> predecessor: cannot read that version; stop cleanly
    /// (devices stay) and I start afresh after you.
    Decline { reason: String },
    /// Predecessor -> successor: descriptors, named in the order sent.
    Fds { names: Vec<String> },
    /// Predecessor -> successor: a piece of the saved state (JSON text).
    State { chunk: String },
    /// Predecessor -> successor: nothing more follows.
    End,
    /// Successor -> predecessor: I serve the node now; stop and leave.
    Taken,
    /// Either side: giving up (the predecessor keeps running).
    Abort { reason: String },
}

/// One end of a handover connection.
pub struct Conn {
    fd: OwnedFd,
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A listening handover socket at `path` (the caller checks the path's
/// directory, see `api::listen::bind_unix_with`).
pub fn bind(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket()?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    socket::listen(&fd, socket::Backlog::new(4)?)?;
    Ok(fd)
}

/// True when a daemon answers on the handover socket at `path`.
pub fn live(path: &Path) -> bool {
    Conn::connect(path).is_ok()
}

/// Waits up to `timeout` for a connection on `listener`; `None` when none
/// came.
pub fn accept(listener: &OwnedFd, timeout: Duration) -> io::Result<Option<Conn>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::from(ms))? == 0 {
        return Ok(None);
    }
    let raw = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 returned a new open descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(Some(Conn { fd }))
}

impl Conn {
    /// Connects to the handover socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Conn> {
        let fd = seqpacket()?;
        socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(Conn { fd })
    }

    /// The peer's uid and pid (SO_PEERCRED), as the kernel saw them when it
    /// connected: not something the peer can claim.
    pub fn peer(&self) -> io::Result<(u32, i32)> {
        let c = socket::getsockopt(&self.fd, socket::sockopt::PeerCredentials)?;
        Ok((c.uid(), c.pid()))
    }

    /// Every receive and send waits at most `d`.
    pub fn set_timeout(&self, d: Duration) -> io::Result<()> {
        let tv = nix::sys::time::TimeVal::new(
            d.as_secs() as nix::libc::time_t,
            d.subsec_micros() as nix::libc::suseconds_t,
        );
        socket::setsockopt(&self.fd, socket::sockopt::ReceiveTimeout, &tv)?;
        socket::setsockopt(&self.fd, socket::sockopt::SendTimeout, &tv)?;
        Ok(())
    }

    /// Sends `frame` with `fds` attached.
    pub fn send(&self, frame: &Frame, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(frame).map_err(io::Error::other)?;
        if body.len() > MAX_FRAME || fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "handover frame too large",
            ));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [io::IoSlice::new(&body)];
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        let n = socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if n != body.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "handover frame cut short",
            ));
        }
        Ok(())
    }

    /// Receives one frame and the descriptors that came with it. A frame
    /// that is too long, whose descriptors were cut, that is not one JSON
    /// frame, or that closes the connection is an error; descriptors that
    /// came with a bad frame are closed.
    pub fn recv(&self) -> io::Result<(Frame, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; MAX_FRAME + 1];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (n, flags, fds) = {
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let msg = socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut fds = Vec::new();
            for c in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: SCM_RIGHTS gave this process new open
                        // descriptors that nothing else owns.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
            (msg.bytes, msg.flags, fds)
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other side closed the handover connection",
            ));
        }
        if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || n > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handover frame truncated (too long, or too many descriptors)",
            ));
        }
        let frame: Frame = serde_json::from_slice(&buf[..n]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a handover frame: {e}"),
            )
        })?;
        Ok((frame, fds))
    }
}

/// Waits up to `timeout` for process `pid` to exit (a pidfd turns
/// readable then, reaped or not). True when it has; a process that is
/// already gone counts as exited.
pub fn wait_exit(pid: i32, timeout: Duration) -> io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new
    // descriptor or -1; it touches no memory of ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(true),
            _ => Err(e),
        };
    }
    // SAFETY: pidfd_open returned a new open descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The descriptors the service manager passed (`LISTEN_FDS`, with
/// `LISTEN_FDNAMES`), owned; none outside systemd or for another pid.
pub fn listen_fds() -> io::Result<Vec<(String, OwnedFd)>> {
    let fds = sd_notify::listen_fds_with_names(true)?;
    Ok(fds
        .map(|(raw, name)| {
            // SAFETY: sd_listen_fds' contract: descriptors 3.. up to
            // LISTEN_FDS were passed to this pid, are open and owned by
            // nothing else in the process (the variables are unset now, so
            // nothing takes them twice).
            (name, unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, Conn) {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (Conn { fd: a }, Conn { fd: b })
    }

    #[test]
    fn frames_and_descriptors_cross() {
        let (a, b) = pair();
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        a.send(
            &Frame::Fds {
                names: vec!["tap/vxm-a/0".into()],
            },
            &[x.as_fd()],
        )
        .unwrap();
        let (f, fds) = b.recv().unwrap();
        assert_eq!(
            f,
            Frame::Fds {
                names: vec!["tap/vxm-a/0".into()]
            }
        );
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn garbage_and_unknown_frames_are_errors() {
        let (a, b) = pair();
        socket::send(a.fd.as_raw_fd(), b"{\"fds\": 7}", MsgFlags::empty()).unwrap();
        let e = b.recv().err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        socket::send(a.fd.as_raw_fd(), b"\xff\xfe", MsgFlags::empty()).unwrap();
        assert!(b.recv().is_err());
        socket::send(
            a.fd.as_raw_fd(),
            b"{\"taken\":null,\"x\":1}",
            MsgFlags::empty(),
        )
        .unwrap();
        assert!(b.recv().is_err());
    }

    #[test]
    fn a_frame_longer_than_the_limit_is_refused() {
        let (a, b) = pair();
        let big = vec![b' '; MAX_FRAME + 10];
        socket::setsockopt(&a.fd, socket::sockopt::SndBuf, &(4 * MAX_FRAME)).unwrap();
        socket::send(a.fd.as_raw_fd(), &big, MsgFlags::empty()).unwrap();
        let e = b.recv().err().unwrap();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn a_closed_peer_is_eof() {
        let (a, b) = pair();
        drop(a);
        assert_eq!(b.recv().err().unwrap().kind(), io::ErrorKind::UnexpectedEof);
    }
}
