//! What a lab run measured, as tables or JSON, and what is wrong with it.

use serde_json::{json, Value};

use super::docker::Containers;
use super::mesh::MeshReport;
use super::overlay::{self, Row};

/// Everything one lab run measured.
pub struct Report {
    /// The testbed's suffix: every namespace of the run carries it.
    pub suffix: String,
    /// With `--docker`: the containers and their pings.
    pub docker: Option<Containers>,
    pub overlay: Vec<Row>,
    pub mesh: Option<MeshReport>,
}

impl Report {
    pub fn print(&self) {
        overlay::print(&self.overlay);
        if let Some(d) = &self.docker {
            d.print();
        }
        if let Some(m) = &self.mesh {
            m.print();
        }
    }

    /// The JSON document of `--json`.
    pub fn to_json(&self) -> Value {
        json!({
            "suffix": self.suffix,
            "tasks": if self.docker.is_some() { "containers" } else { "host servers" },
            "overlay": self.overlay.iter().map(Row::to_json).collect::<Vec<_>>(),
            "containers": self.docker.as_ref().map(Containers::to_json),
            "mesh": self.mesh.as_ref().map(MeshReport::to_json),
            "problems": self.problems(),
        })
    }

    /// What is wrong, if anything (empty: the lab proved everything).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let bad = self.overlay.iter().filter(|r| r.bad()).count();
        if bad > 0 {
            out.push(format!(
                "{bad} of {} paths lost packets or moved no data",
                self.overlay.len()
            ));
        }
        if let Some(d) = &self.docker {
            out.extend(d.problems());
        }
        if let Some(m) = &self.mesh {
            out.extend(m.problems().into_iter().map(|p| format!("the mesh: {p}")));
        }
        out
    }

    /// The closing line of a run without problems.
    pub fn verdict(&self) -> String {
        let mut s = String::from("\noverlay OK: every pair reached each other");
        if self.docker.is_some() {
            s += "; containers OK: each pinged a container on another host by name";
        }
        if let Some(m) = &self.mesh {
            let by = if self.docker.is_some() {
                "containers"
            } else {
                "tasks"
            };
            s += &format!(
                "; mesh OK: `{}` answered through every node by {by} on other nodes, its name resolved everywhere",
                m.service
            );
        }
        s + "; the lab was removed"
    }
}
