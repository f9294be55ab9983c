//! JSON views of a task version: its program, resources and artifacts.

use std::collections::BTreeMap;

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::{non_empty, sorted};
use crate::output::{rfc3339, seconds};

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProgramView {
    Script {
        body: String,
        interpreter: Vec<String>,
    },
    Argv {
        args: Vec<String>,
    },
    Upgrade {
        version: String,
        deadline_seconds: Option<i64>,
    },
    None,
}

impl From<Option<&pb::Program>> for ProgramView {
    fn from(p: Option<&pb::Program>) -> Self {
        match p.and_then(|p| p.kind.as_ref()) {
            Some(pb::program::Kind::Script(s)) => ProgramView::Script {
                body: s.body.clone(),
                interpreter: s.interpreter.clone(),
            },
            Some(pb::program::Kind::Argv(a)) => ProgramView::Argv {
                args: a.args.clone(),
            },
            Some(pb::program::Kind::Upgrade(u)) => ProgramView::Upgrade {
                version: u.version.clone(),
                deadline_seconds: u.deadline.map(|d| d.seconds),
            },
            None => ProgramView::None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TaskView {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub program: ProgramView,
    pub timeout_seconds: Option<f64>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// What a run holds while it runs, in the task's order.
    pub resources: Vec<ResourceNeedView>,
    /// Artifacts fetched before each run, pinned by content.
    pub artifacts: Vec<ArtifactRefView>,
    /// New attempts of a run that is lost, interrupted or timed out.
    pub retries: u32,
    /// Selector of the puppets the task is valid for; `null`: any puppet.
    pub requires: Option<String>,
    /// The task ends by rebooting the machine: a run succeeds when its
    /// puppet comes back after a reboot within the window.
    pub expect_reboot: bool,
    /// `null`: the default (30 minutes) when a reboot is expected.
    pub reboot_window_seconds: Option<f64>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ResourceNeedView {
    pub name: String,
    pub count: u32,
}

impl From<&pb::ResourceNeed> for ResourceNeedView {
    fn from(n: &pb::ResourceNeed) -> Self {
        ResourceNeedView {
            name: n.name.clone(),
            count: n.count,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ArtifactRefView {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// The environment variable holding the file's path in a run.
    pub env: String,
}

impl From<&pb::ArtifactRef> for ArtifactRefView {
    fn from(a: &pb::ArtifactRef) -> Self {
        ArtifactRefView {
            name: a.name.clone(),
            sha256: a.sha256.clone(),
            size: a.size,
            env: a.env.clone(),
        }
    }
}

/// `patch.tar.gz (sha256 1a2b3c4d…, $GEPPETTO_ARTIFACT_PATCH_TAR_GZ)`, one
/// per artifact, or `-`.
pub fn artifacts_line(artifacts: &[pb::ArtifactRef]) -> String {
    if artifacts.is_empty() {
        return "-".into();
    }
    artifacts
        .iter()
        .map(|a| {
            let short: String = a.sha256.chars().take(12).collect();
            format!("{} ({short}…, ${})", a.name, a.env)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `uplink-lyon, db:2`: needs as `--resource` takes them, or `-`.
pub fn needs_line(needs: &[pb::ResourceNeed]) -> String {
    if needs.is_empty() {
        return "-".into();
    }
    needs
        .iter()
        .map(|n| match n.count {
            1 => n.name.clone(),
            count => format!("{}:{count}", n.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<&pb::Task> for TaskView {
    fn from(t: &pb::Task) -> Self {
        let spec = t.spec.clone().unwrap_or_default();
        TaskView {
            name: t.name.clone(),
            version: t.version,
            description: t.description.clone(),
            program: ProgramView::from(spec.program.as_ref()),
            timeout_seconds: seconds(spec.timeout.as_ref()),
            env: sorted(&spec.env),
            workdir: non_empty(&spec.workdir),
            resources: t.resources.iter().map(ResourceNeedView::from).collect(),
            artifacts: spec.artifacts.iter().map(ArtifactRefView::from).collect(),
            retries: t.retries,
            requires: non_empty(&t.requires),
            expect_reboot: spec.expect_reboot,
            reboot_window_seconds: seconds(spec.reboot_window.as_ref()),
            created_at: rfc3339(t.created_at.as_ref()),
            updated_at: rfc3339(t.updated_at.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Duration;
    use serde_json::json;

    #[test]
    fn task_json_has_resources_retries_and_requires() {
        let task = pb::Task {
            name: "upgrade".into(),
            version: 3,
            resources: vec![
                pb::ResourceNeed {
                    name: "uplink-lyon".into(),
                    count: 1,
                },
                pb::ResourceNeed {
                    name: "db".into(),
                    count: 2,
                },
            ],
            retries: 2,
            requires: "os=debian".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&task)).unwrap();
        assert_eq!(
            value["resources"],
            json!([{"name": "uplink-lyon", "count": 1}, {"name": "db", "count": 2}])
        );
        assert_eq!(value["retries"], 2);
        assert_eq!(value["requires"], "os=debian");
        assert_eq!(needs_line(&task.resources), "uplink-lyon, db:2");
        assert_eq!(value["artifacts"], json!([]));
        let with_artifact = pb::Task {
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "patch.tar.gz".into(),
                    sha256: "ab".repeat(32),
                    size: 10,
                    env: "GEPPETTO_ARTIFACT_PATCH_TAR_GZ".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&with_artifact)).unwrap();
        assert_eq!(
            value["artifacts"],
            json!([{"name": "patch.tar.gz", "sha256": "ab".repeat(32), "size": 10,
                    "env": "GEPPETTO_ARTIFACT_PATCH_TAR_GZ"}])
        );
        assert_eq!(
            artifacts_line(&with_artifact.spec.unwrap().artifacts),
            "patch.tar.gz (abababababab…, $GEPPETTO_ARTIFACT_PATCH_TAR_GZ)"
        );

        let plain = pb::Task {
            name: "t".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&plain)).unwrap();
        assert_eq!(value["resources"], json!([]));
        assert_eq!(value["retries"], 0);
        assert_eq!(value["requires"], serde_json::Value::Null);
        assert_eq!(needs_line(&plain.resources), "-");
    }

    #[test]
    fn task_json_has_program_and_timeout() {
        let task = pb::Task {
            name: "t".into(),
            version: 1,
            spec: Some(pb::RunSpec {
                program: Some(pb::Program {
                    kind: Some(pb::program::Kind::Argv(pb::Argv {
                        args: vec!["true".into()],
                    })),
                }),
                timeout: Some(Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&task)).unwrap();
        assert_eq!(value["program"], json!({"kind": "argv", "args": ["true"]}));
        assert_eq!(value["timeout_seconds"], 60.0);
    }
}
