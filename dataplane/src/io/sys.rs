//! The few system calls no safe wrapper covers. The only module of the
//! dataplane allowed `unsafe`; every block says why it is sound.

use std::io;
use std::os::fd::AsRawFd;

/// Clears the DF bit on datagrams sent from `sock` (IP_PMTUDISC_DONT), as
/// the kernel's vxlan does by default (`df unset`): a VXLAN datagram that
/// meets a smaller MTU on the underlay is fragmented, not dropped.
pub fn clear_dont_fragment(sock: &impl AsRawFd) -> io::Result<()> {
    let val: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: the fd is open for the lifetime of `sock`; `val` is a live
    // c_int and the length passed is its size, as IP_MTU_DISCOVER expects.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Limits a TAP's offloads to checksum and TCP segmentation (TSO4/6): the
/// datapath segments TCP super-frames itself but not UDP ones, so USO,
/// which tun-rs turns on where the kernel has it, is turned back off.
pub fn tap_tcp_offloads_only(tap: &impl AsRawFd) -> io::Result<()> {
    let flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: the fd is an open TUN/TAP descriptor for the lifetime of
    // `tap`; TUNSETOFFLOAD takes the flag word by value.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
