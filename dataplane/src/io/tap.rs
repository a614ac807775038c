//! TAP devices, through `tun-rs` (multi-queue and virtio-net offload
//! capable; see the README's design section for why not `tun-tap`).

use std::fs::File;
use std::io;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tun_rs::{DeviceBuilder, Layer};

use crate::offload::virtio;
use crate::wire::MacAddr;

/// How to create one network's TAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapConfig {
    /// Interface name, at most 15 bytes (`vxm-<network>`).
    pub name: String,
    pub mac: MacAddr,
    /// Overlay MTU (underlay MTU minus the 50 bytes of VXLAN over IPv4).
    pub mtu: u16,
    /// This node's own address in the network, with its prefix length.
    pub address: Option<(Ipv4Addr, u8)>,
    /// Open with a virtio-net header and TSO (the kernel hands over TCP
    /// super-frames). Falls back to plain frames where the kernel refuses.
    pub offload: bool,
    /// Queues to attach (one worker reads each); at least 1.
    pub queues: usize,
}

/// One TAP device with one or more queues (`IFF_MULTI_QUEUE`). The kernel
/// picks the queue of each frame it hands over by the frame's flow hash
/// (`tun_automq_select_queue`), so one flow always reaches the same queue
/// and the same worker: no reordering.
pub struct Tap {
    /// One descriptor per queue: plain read(2)/write(2) of frames (with
    /// their virtio-net header when `vnet_hdr`).
    queues: Vec<File>,
    name: String,
    vnet_hdr: bool,
    /// The kernel hands over UDP super-frames (USO) read from this TAP.
    uso: bool,
    /// The kernel takes UDP GSO frames (`VIRTIO_NET_HDR_GSO_UDP_L4`, Linux
    /// 6.2 and later) written into this TAP; cleared on the first refusal.
    uso_write: std::sync::atomic::AtomicBool,
    /// Refuse UDP GSO writes here as a kernel before 6.2 does ([`EMULATE_PRE_6_2`]).
    refuse_udp_gso: bool,
    /// Drop the device with the last queue ([`Tap::remove_when_closed`]).
    remove: std::sync::atomic::AtomicBool,
}

/// With this variable set to `1` in vxmeshd's environment, every TAP acts
/// as on a kernel before 6.2: USO is not offered to the kernel, and a UDP
/// GSO frame written to it fails with `EINVAL`, as the old kernel answers
/// an unknown GSO type. The fallbacks for those kernels (Debian 12's 6.1,
/// Ubuntu 22.04's 5.15) then run on a newer one: the tests use it, and an
/// operator can use it to keep USO off where a kernel's USO misbehaves.
pub const EMULATE_PRE_6_2: &str = "VXMESH_EMULATE_PRE_6_2";

/// [`EMULATE_PRE_6_2`] is set to `1`.
fn emulate_pre_6_2() -> bool {
    std::env::var_os(EMULATE_PRE_6_2).is_some_and(|v| v == "1")
}

/// Longest interface name Linux accepts.
pub const IFNAMSIZ_MAX: usize = 15;

fn named(cfg: &TapConfig, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("creating TAP {}: {e}", cfg.name))
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").field("name", &self.name).finish()
    }
}

impl Tap {
    /// Opens the network's TAP: the queues a predecessor handed over
    /// ([`super::inherit`]) if there are any, else the device itself,
    /// created or (left by an earlier run) reattached, with its MAC, MTU
    /// and address set and brought up. The device is persistent: it
    /// outlives this process, so a restart, an upgrade or a crash keeps its
    /// addresses, routes, bridge port and neighbour entries. It goes when
    /// the network is removed ([`Tap::remove_when_closed`]) or on
    /// `vxmeshd --cleanup`.
    pub fn open(cfg: &TapConfig) -> io::Result<Tap> {
        if cfg.name.is_empty() || cfg.name.len() > IFNAMSIZ_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TAP name `{}` must be 1 to 15 bytes", cfg.name),
            ));
        }
        let emulate = emulate_pre_6_2();
        if emulate {
            tracing::warn!(tap = %cfg.name, "{EMULATE_PRE_6_2}=1: acting as on a kernel before 6.2 (no USO)");
        }
        let (queues, vnet_hdr) = match adopt(cfg)? {
            Some(q) => q,
            None => create(cfg)?,
        };
        // USO where the kernel has it (6.2+), on every queue or on none.
        let uso = vnet_hdr
            && !emulate
            && queues
                .iter()
                .all(|q| super::sys::tap_offloads(q, true).is_ok());
        for q in &queues {
            if vnet_hdr && !uso {
                super::sys::tap_offloads(q, false)?;
            }
            nix::fcntl::fcntl(
                q,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )?;
        }
        super::sys::tap_persist(&queues[0], true).map_err(|e| named(cfg, e))?;
        Ok(Tap {
            queues,
            name: cfg.name.clone(),
            vnet_hdr,
            uso,
            uso_write: std::sync::atomic::AtomicBool::new(vnet_hdr),
            refuse_udp_gso: emulate,
            remove: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Lets the kernel remove the device once this process closes its last
    /// queue (the network left the node). Until then it keeps working.
    pub fn remove_when_closed(&self) {
        self.remove
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The queues' descriptors, named for a successor ([`super::inherit`]).
    pub fn descriptors(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, q)| (super::inherit::tap_name(&self.name, i), q.as_fd()))
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Frames carry a virtio-net header in both directions.
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads may return UDP super-frames (`VIRTIO_NET_HDR_GSO_UDP_L4`).
    pub fn uso(&self) -> bool {
        self.uso
    }

    /// Runs of UDP datagrams may be written as one UDP GSO frame.
    pub fn uso_write(&self) -> bool {
        self.uso_write.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The kernel refused a UDP GSO frame: write datagrams one by one from
    /// now on.
    pub fn refuse_uso_write(&self) {
        if self
            .uso_write
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(tap = %self.name, "the kernel refuses UDP GSO frames on this TAP; writing datagrams one by one");
        }
    }

    /// Number of queues attached.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Reads one frame from queue `q`; `WouldBlock` when none is waiting.
    pub fn recv(&self, q: usize, buf: &mut [u8]) -> io::Result<usize> {
        (&self.queues[q % self.queues.len()]).read(buf)
    }

    /// Writes one frame through queue `q` (any queue reaches the same
    /// device; writers on different queues do not share a descriptor).
    pub fn send(&self, q: usize, frame: &[u8]) -> io::Result<usize> {
        if self.refuse_udp_gso
            && self.vnet_hdr
            && virtio::Header::parse(frame)
                .is_some_and(|h| h.gso_type & !virtio::GSO_ECN == virtio::GSO_UDP_L4)
        {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        (&self.queues[q % self.queues.len()]).write(frame)
    }

    /// Applies a changed configuration to the live device (MTU, MAC,
    /// address) without closing it, so workloads keep their link.
    pub fn reconfigure(&self, old: &TapConfig, new: &TapConfig) -> io::Result<()> {
        if old.address != new.address {
            // tun-rs changes addresses only with its netlink feature; a
            // node's own overlay address changes rarely enough to ask for a
            // restart instead of pulling that in.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "changing {}'s address from {:?} to {:?} needs a restart",
                    self.name, old.address, new.address
                ),
            ));
        }
        if old.queues != new.queues {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("changing {}'s queue count needs a restart", self.name),
            ));
        }
        if old.mtu != new.mtu {
            super::netdev::set_mtu(&self.name, new.mtu)?;
        }
        if old.mac != new.mac {
            super::netdev::ip(&[
                "link",
                "set",
                "dev",
                &self.name,
                "address",
                &new.mac.to_string(),
            ])?;
        }
        Ok(())
    }

    /// Queue `q`'s descriptor, to wait on.
    pub fn fd(&self, q: usize) -> BorrowedFd<'_> {
        self.queues[q % self.queues.len()].as_fd()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.remove.load(std::sync::atomic::Ordering::Relaxed) {
            // The kernel removes a non-persistent device with its last
            // descriptor, which closes right after this.
            if let Err(e) = super::sys::tap_persist(&self.queues[0], false) {
                tracing::warn!(tap = %self.name, error = %e, "TAP not released");
            }
        }
    }
}

/// The queues of `cfg`'s device that a predecessor handed over, checked:
/// each must be a TAP queue of that very device, multi-queue, with or
/// without a virtio-net header like the others. `None` when there are none
/// (or not as many as `cfg` asks for: they are closed and the device is
/// reattached afresh).
fn adopt(cfg: &TapConfig) -> io::Result<Option<(Vec<File>, bool)>> {
    let mut fds: Vec<OwnedFd> = Vec::new();
    while let Some(fd) = super::inherit::take(&super::inherit::tap_name(&cfg.name, fds.len())) {
        fds.push(fd);
    }
    if fds.is_empty() {
        return Ok(None);
    }
    if fds.len() != cfg.queues.max(1) {
        tracing::warn!(tap = %cfg.name, inherited = fds.len(), want = cfg.queues,
            "inherited TAP queues do not match the queue count; reattaching");
        return Ok(None);
    }
    let mut vnet = None;
    for fd in &fds {
        let not_ours = |why: String| {
            named(
                cfg,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("an inherited descriptor is not a queue of this TAP ({why})"),
                ),
            )
        };
        let (name, flags) = super::sys::tap_flags(fd).map_err(|e| not_ours(e.to_string()))?;
        let tap = flags & libc::IFF_TAP as libc::c_short != 0
            && flags & libc::IFF_MULTI_QUEUE as libc::c_short != 0;
        let hdr = flags & libc::IFF_VNET_HDR as libc::c_short != 0;
        if name != cfg.name || !tap || vnet.is_some_and(|v| v != hdr) {
            return Err(not_ours(format!("it is `{name}`, flags {flags:#x}")));
        }
        vnet = Some(hdr);
    }
    // The device keeps its MAC, MTU and address across the handover; the
    // reconciler adjusts what the new desired state changes.
    tracing::info!(tap = %cfg.name, queues = fds.len(), "TAP queues taken over");
    Ok(Some((
        fds.into_iter().map(File::from).collect(),
        vnet == Some(true),
    )))
}

/// Creates the device (or attaches to the one an earlier run left) with
/// `cfg.queues` queues. A leftover device that cannot be attached (other
/// flags: a non-multi-queue TAP of an old version, say) is removed and
/// made again.
fn create(cfg: &TapConfig) -> io::Result<(Vec<File>, bool)> {
    let build = |offload: bool| {
        let mut b = DeviceBuilder::new()
            .name(cfg.name.clone())
            .layer(Layer::L2)
            .mac_addr(cfg.mac.0)
            .mtu(cfg.mtu)
            .with(|b| {
                b.multi_queue(true).offload(offload).tx_queue_len(1000);
            });
        if let Some((ip, prefix)) = cfg.address {
            b = b.ipv4(ip, prefix, None);
        }
        b.build_sync()
    };
    let build = |offload: bool| match build(offload) {
        Err(e) if super::netdev::exists(&cfg.name) => {
            tracing::warn!(tap = %cfg.name, error = %e, "a device of this name cannot be attached; re-creating it");
            super::netdev::delete(&cfg.name)?;
            build(offload)
        }
        r => r,
    };
    let (dev, vnet_hdr) = if cfg.offload {
        match build(true) {
            Ok(d) => (d, true),
            Err(e) => {
                tracing::warn!(tap = %cfg.name, error = %e, "TAP offloads refused; using plain frames");
                (build(false).map_err(|e| named(cfg, e))?, false)
            }
        }
    } else {
        (build(false).map_err(|e| named(cfg, e))?, false)
    };
    let mut queues = Vec::new();
    while queues.len() + 1 < cfg.queues {
        // tun-rs attaches a new queue to the same device (TUNSETIFF on a
        // fresh descriptor) and repeats the offload setup on it.
        queues.push(dev.try_clone().map_err(|e| named(cfg, e))?);
    }
    queues.insert(0, dev);
    let files = queues
        .into_iter()
        .map(|q| File::from(super::sys::owned(q)))
        .collect();
    Ok((files, vnet_hdr))
}
