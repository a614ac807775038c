//! TAP devices, through `tun-rs` (multi-queue and virtio-net offload
//! capable; see the README's design section for why not `tun-tap`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use crate::wire::{virtio, MacAddr};

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
    queues: Vec<SyncDevice>,
    name: String,
    vnet_hdr: bool,
    /// The kernel hands over UDP super-frames (USO) read from this TAP.
    uso: bool,
    /// The kernel takes UDP GSO frames (`VIRTIO_NET_HDR_GSO_UDP_L4`, Linux
    /// 6.2 and later) written into this TAP; cleared on the first refusal.
    uso_write: std::sync::atomic::AtomicBool,
    /// Refuse UDP GSO writes here as a kernel before 6.2 does ([`EMULATE_PRE_6_2`]).
    refuse_udp_gso: bool,
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
    /// Creates (or, after a crash, re-creates) the device, sets its MAC,
    /// MTU and address and brings it up. Non-persistent: the kernel removes
    /// it when the last descriptor closes, so a killed daemon leaves nothing
    /// behind.
    pub fn open(cfg: &TapConfig) -> io::Result<Tap> {
        if cfg.name.is_empty() || cfg.name.len() > IFNAMSIZ_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TAP name `{}` must be 1 to 15 bytes", cfg.name),
            ));
        }
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
        let mut queues = vec![dev];
        while queues.len() < cfg.queues {
            // tun-rs attaches a new queue to the same device (TUNSETIFF on a
            // fresh descriptor) and repeats the offload setup on it.
            let q = queues[0].try_clone().map_err(|e| named(cfg, e))?;
            queues.push(q);
        }
        // USO where the kernel has it (6.2+), on every queue or on none.
        let emulate = emulate_pre_6_2();
        if emulate {
            tracing::warn!(tap = %cfg.name, "{EMULATE_PRE_6_2}=1: acting as on a kernel before 6.2 (no USO)");
        }
        let uso = vnet_hdr
            && !emulate
            && queues
                .iter()
                .all(|q| super::sys::tap_offloads(q, true).is_ok());
        for q in &queues {
            if vnet_hdr && !uso {
                super::sys::tap_offloads(q, false)?;
            }
            q.set_nonblocking(true)?;
        }
        Ok(Tap {
            queues,
            name: cfg.name.clone(),
            vnet_hdr,
            uso,
            uso_write: std::sync::atomic::AtomicBool::new(vnet_hdr),
            refuse_udp_gso: emulate,
        })
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
        self.queues[q % self.queues.len()].recv(buf)
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
        self.queues[q % self.queues.len()].send(frame)
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
            self.queues[0].set_mtu(new.mtu)?;
        }
        if old.mac != new.mac {
            self.queues[0].set_mac_address(new.mac.0)?;
        }
        Ok(())
    }

    /// Queue `q`'s descriptor, to wait on.
    pub fn fd(&self, q: usize) -> BorrowedFd<'_> {
        self.queues[q % self.queues.len()].as_fd()
    }
}
