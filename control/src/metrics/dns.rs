//! The DNS responders' families, per network.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::counters;

/// Counters of one network's responder, in the order of [`encode`]'s
/// families: queries, six results, five guards.
pub(super) type DnsCounts = (String, [u64; 12]);

pub(super) fn encode(e: &mut DescriptorEncoder, dns: &[DnsCounts]) -> fmt::Result {
    counters(
        e,
        "vxmesh_dns_queries",
        "Queries the network's DNS responder received (UDP datagrams and TCP messages).",
        None,
        dns.iter()
            .map(|(net, c)| (vec![("network", net.clone())], c[0]))
            .collect(),
    )?;
    counters(
        e,
        "vxmesh_dns_responses",
        "What the network's DNS responder did with a query, by result.",
        None,
        dns.iter()
            .flat_map(|(net, c)| {
                [
                    "answered",
                    "nxdomain",
                    "refused",
                    "malformed",
                    "forwarded",
                    "forward_failed",
                ]
                .into_iter()
                .zip(&c[1..7])
                .map(|(r, v)| (vec![("network", net.clone()), ("result", r.into())], *v))
            })
            .collect(),
    )?;
    counters(
        e,
        "vxmesh_dns_guarded",
        "Queries and connections the network's DNS responder refused to serve, by guard.",
        None,
        dns.iter()
            .flat_map(|(net, c)| {
                [
                    "outside_subnet",
                    "forward_rate",
                    "truncated",
                    "tcp_limit",
                    "accept_error",
                ]
                .into_iter()
                .zip(&c[7..])
                .map(|(r, v)| (vec![("network", net.clone()), ("guard", r.into())], *v))
            })
            .collect(),
    )?;
    Ok(())
}
