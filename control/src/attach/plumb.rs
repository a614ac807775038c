//! Plumbing an attachment: waiting for this node to run its new endpoint,
//! the veth on the network's bridge, the CNI side in the container's
//! namespace, and taking it all down again.

use vxmesh_dataplane::io::netdev::{self, Veth};
use vxmesh_dataplane::wire::MacAddr;

use super::{
    allocate, local_attachments, release, release_container, AttachError, AttachRequest,
    AttachResponse, APPLY_WAIT,
};
use crate::state::State;

/// Waits until `done` holds of the state this node runs, checked after
/// each applied change, bounded by [`APPLY_WAIT`].
pub(super) async fn wait_applied(
    st: &State,
    done: impl Fn(&State) -> bool,
) -> Result<(), AttachError> {
    let mut rx = st.attach.applied.subscribe();
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    loop {
        if done(st) {
            return Ok(());
        }
        // A timeout, or the daemon dropping the sender: either way no
        // further change will come (never loop on a closed channel).
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(AttachError::NotApplied(APPLY_WAIT)),
        }
    }
}

/// The bridge of `network` on this node, once it runs it (a new endpoint
/// makes the node a member).
async fn bridge_of(st: &State, network: &str) -> Result<String, AttachError> {
    let get = |st: &State| {
        st.inner
            .lock()
            .expect("state lock poisoned")
            .reconciler
            .bridge(network)
            .map(str::to_string)
    };
    wait_applied(st, |st| get(st).is_some()).await?;
    get(st).ok_or(AttachError::NotApplied(APPLY_WAIT))
}

/// Creates the veth of attachment `key` with the host end on the
/// network's bridge; the container end keeps the name in the result.
pub async fn plumb(st: &State, a: &AttachResponse, key: &str) -> Result<Veth, AttachError> {
    let br = bridge_of(st, &a.network).await?;
    let v = Veth::for_key(key);
    let mac: MacAddr = a
        .mac
        .parse()
        .map_err(|e| AttachError::Invalid(format!("mac: {e}")))?;
    netdev::create_veth(&v, a.mtu, mac, &br)?;
    Ok(v)
}

/// Removes the veth of attachment `key` (gone already is fine).
pub fn unplumb(key: &str) -> Result<(), AttachError> {
    netdev::delete(&Veth::for_key(key).host)?;
    Ok(())
}

/// The whole CNI ADD: allocate, plumb, move into the namespace. Anything
/// that fails after the allocation releases it again, so a failed ADD
/// leaves no veth, no allocation and no endpoint behind.
pub async fn attach_into(st: &State, req: &AttachRequest) -> Result<AttachResponse, AttachError> {
    let (Some(netns), Some(ifname)) = (&req.netns, &req.ifname) else {
        return Err(AttachError::Invalid("netns and ifname are required".into()));
    };
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains('/') || ifname.contains(' ') {
        return Err(AttachError::Invalid(format!(
            "interface name `{ifname}` must be 1-15 bytes without '/' or spaces"
        )));
    }
    if !netns.exists() {
        return Err(AttachError::Invalid(format!(
            "network namespace {} does not exist",
            netns.display()
        )));
    }
    let mut a = allocate(st, req).await?;
    let done = async {
        let v = plumb(st, &a, &req.container).await?;
        netdev::move_into(&v, netns, ifname, a.ip, a.prefix)?;
        Ok::<Veth, AttachError>(v)
    }
    .await;
    match done {
        Ok(v) => {
            a.host_ifname = Some(v.host);
            a.ifname = Some(ifname.clone());
            Ok(a)
        }
        Err(e) => {
            let _ = unplumb(&req.container);
            let _ = release(st, &a.network, a.ip, Some(&req.container)).await;
            Err(e)
        }
    }
}

/// The CNI DEL: the veth and every allocation of the key; idempotent.
pub async fn detach(st: &State, container: &str) -> Result<usize, AttachError> {
    unplumb(container)?;
    release_container(st, container).await
}

/// The CNI CHECK: the key holds an address of `network`, and the
/// namespace's interface has it.
pub fn check(st: &State, req: &AttachRequest) -> Result<(), AttachError> {
    let a = local_attachments(st)
        .into_iter()
        .find(|a| a.network == req.network && a.container == req.container)
        .ok_or_else(|| {
            AttachError::Invalid(format!(
                "container `{}` has no address in `{}`",
                req.container, req.network
            ))
        })?;
    if let (Some(ns), Some(ifname)) = (&req.netns, &req.ifname) {
        if !netdev::has_address(ns, ifname, a.ip) {
            return Err(AttachError::Invalid(format!(
                "{ifname} in {} does not hold {}",
                ns.display(),
                a.ip
            )));
        }
    }
    if !netdev::exists(&Veth::for_key(&req.container).host) {
        return Err(AttachError::Invalid(format!(
            "the veth of `{}` is gone",
            req.container
        )));
    }
    Ok(())
}
