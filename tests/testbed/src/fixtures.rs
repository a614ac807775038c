//! Cluster files shared by the benchmarks, the end-to-end tests and the
//! fuzz targets: the files in `config/fixtures/`, embedded. Each is used as
//! written; a test that needs more appends to it or replaces a line.

/// Three hosts h1..h3 (198.18.0.1-3), the network `front` (VNI 4096, 10.0.9.0/24) and one endpoint per host (10.0.9.1-3); no settings, no services. The end-to-end tests add what each needs.
pub const FRONT: &str = include_str!("../../../config/fixtures/front.toml");

/// `config/lab.toml` without h3 and the service: the overlay benchmark's two hosts.
pub const TWO_HOSTS: &str = include_str!("../../../config/fixtures/two-hosts.toml");

/// The mesh benchmark: three nodes, the overlay `front`, two services (`web`, `iperf`) on the tasks of h2 and h3.
pub const MESH_BENCH: &str = include_str!("../../../config/fixtures/mesh-bench.toml");

/// Two hosts, two networks (`front` 10.0.9.0/24, `back` 10.0.10.0/24), an endpoint of each host in each.
pub const TWO_NETWORKS: &str = include_str!("../../../config/fixtures/two-networks.toml");

/// Two hosts, named endpoints, a `vip` service and a `dnsrr` one: the names a node serves (the DNS fuzz target).
pub const DNS: &str = include_str!("../../../config/fixtures/dns.toml");
