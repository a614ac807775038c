//! The shared cluster files (`config/fixtures/`, embedded in
//! `vxmesh_netns::fixtures`) are valid as written.

use std::path::Path;

use vxmesh_control::config;
use vxmesh_netns::fixtures;

#[test]
fn every_fixture_is_a_valid_cluster_file() {
    for (name, text, nodes) in [
        ("front.toml", fixtures::FRONT, 3),
        ("two-hosts.toml", fixtures::TWO_HOSTS, 2),
        ("mesh-bench.toml", fixtures::MESH_BENCH, 3),
        ("two-networks.toml", fixtures::TWO_NETWORKS, 2),
        ("dns.toml", fixtures::DNS, 2),
    ] {
        let c = config::parse(Path::new(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.nodes.len(), nodes, "{name}");
        assert!(c.network("front").is_some(), "{name} has `front`");
    }
}
