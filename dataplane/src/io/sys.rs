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

/// Sets the offloads a TAP hands over: checksum and TCP segmentation
/// (TSO4/6), and with `uso` UDP segmentation (USO4/6, Linux 6.2 and
/// later; refused with EINVAL before). The datapath cuts both kinds of
/// super-frame itself.
pub fn tap_offloads(tap: &impl AsRawFd, uso: bool) -> io::Result<()> {
    let mut flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    if uso {
        flags |= libc::TUN_F_USO4 | libc::TUN_F_USO6;
    }
    // SAFETY: the fd is an open TUN/TAP descriptor for the lifetime of
    // `tap`; TUNSETOFFLOAD takes the flag word by value.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The flags a TUN/TAP descriptor was attached with (TUNGETIFF):
/// `IFF_TAP`, `IFF_MULTI_QUEUE`, `IFF_VNET_HDR`, ... and the device's name.
/// Used to check a descriptor a predecessor handed over before reading
/// frames from it.
pub fn tap_flags(tap: &impl AsRawFd) -> io::Result<(String, libc::c_short)> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is open for the lifetime of `tap`; TUNGETIFF writes
    // the name and flags into the ifreq we own, which outlives the call.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETIFF, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let name: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    // SAFETY: TUNGETIFF filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    Ok((String::from_utf8_lossy(&name).into_owned(), flags))
}

/// Makes the device of `tap` outlive its descriptors (TUNSETPERSIST 1), or
/// lets the kernel remove it when the last one closes (0).
pub fn tap_persist(tap: &impl AsRawFd, on: bool) -> io::Result<()> {
    // SAFETY: the fd is an open TUN/TAP descriptor for the lifetime of
    // `tap`; TUNSETPERSIST takes its flag by value.
    let rc = unsafe {
        libc::ioctl(
            tap.as_raw_fd(),
            libc::TUNSETPERSIST,
            libc::c_ulong::from(on),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The descriptor of `dev` as an owned one (tun-rs devices give theirs up
/// only as a raw descriptor).
pub fn owned(dev: impl std::os::fd::IntoRawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let raw = dev.into_raw_fd();
    // SAFETY: `into_raw_fd` gave the open descriptor up; nothing else owns
    // or closes it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }
}
