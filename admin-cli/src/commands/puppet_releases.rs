//! `geppetto puppet-releases ...` and `geppetto puppets upgrade`.
//!
//! A release is an artifact named `puppet-VERSION-OS-ARCH`; an upgrade is a
//! job of the task `puppet-upgrade`, whose latest version names the version
//! to install (the puppeteer pins that release's binaries to it).

use std::path::Path;

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{Format, PuppetReleasesCommand, RunJobArgs, UpgradeArgs};
use crate::error::Error;
use crate::output;

/// The task upgrades run; each `puppets upgrade` makes a new version of it.
pub const UPGRADE_TASK: &str = "puppet-upgrade";
/// The upgrade run's timeout: fetching the binary over a slow link included.
const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn run(api: &Api, command: PuppetReleasesCommand, format: Format) -> Result<(), Error> {
    match command {
        PuppetReleasesCommand::Add {
            file,
            os,
            arch,
            version,
        } => {
            let version = match version {
                Some(version) => version,
                None => version_of(&file, &os, &arch)?,
            };
            let name = format!("puppet-{version}-{os}-{arch}");
            let artifact = super::artifacts::upload(api, &file, Some(name)).await?;
            match format {
                Format::Json => output::print_json(&crate::views::ArtifactView::from(&artifact)),
                Format::Table => {
                    eprintln!(
                        "added puppet {version} for {os}/{arch}: artifact {} ({} bytes, sha256 {})",
                        artifact.name, artifact.size, artifact.sha256
                    );
                    Ok(())
                }
            }
        }
        PuppetReleasesCommand::List => {
            let list = api
                .call(
                    api.artifacts()
                        .list_puppet_releases(request(pb::ListPuppetReleasesRequest {})),
                )
                .await?;
            print_list(&list, format)
        }
        PuppetReleasesCommand::Remove { version, os, arch } => {
            let name = format!("puppet-{version}-{os}-{arch}");
            let req = pb::RemoveArtifactRequest {
                name: name.clone(),
                force: false,
            };
            api.call(api.artifacts().remove_artifact(request(req)))
                .await?;
            eprintln!("removed puppet {version} for {os}/{arch} (artifact {name})");
            Ok(())
        }
    }
}

/// The version a puppet binary says it is, when it runs on this machine.
fn version_of(file: &Path, os: &str, arch: &str) -> Result<String, Error> {
    if (os, arch) != (std::env::consts::OS, std::env::consts::ARCH) {
        return Err(Error::Usage(format!(
            "a binary for {os}/{arch} cannot be asked its version here ({}/{}): give --version VERSION",
            std::env::consts::OS,
            std::env::consts::ARCH
        )));
    }
    let output = std::process::Command::new(file)
        .arg("--version")
        .output()
        .map_err(|e| {
            Error::Input(format!(
                "cannot run {} --version ({e}): give --version VERSION",
                file.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (Some("puppet"), Some(version)) if output.status.success() => Ok(version.to_string()),
        _ => Err(Error::Input(format!(
            "{} --version said {:?}, not \"puppet VERSION\": is it a puppet? Give --version VERSION",
            file.display(),
            text.chars().take(80).collect::<String>()
        ))),
    }
}

fn print_list(list: &pb::ListPuppetReleasesResponse, format: Format) -> Result<(), Error> {
    if format == Format::Json {
        let rows: Vec<serde_json::Value> = list
            .releases
            .iter()
            .map(|r| {
                let a = r.artifact.clone().unwrap_or_default();
                serde_json::json!({
                    "version": r.version,
                    "os": r.os,
                    "arch": r.arch,
                    "artifact": a.name,
                    "size": a.size,
                    "sha256": a.sha256,
                    "served": r.served,
                })
            })
            .collect();
        return output::print_json(&serde_json::json!({
            "served_version": list.served_version,
            "releases": rows,
        }));
    }
    if list.served_version.is_empty() {
        eprintln!("this puppeteer serves no puppet build (start it with --puppet-binary FILE)");
    }
    let mut table = output::table(["VERSION", "PLATFORM", "SIZE", "SHA256", "SERVED"]);
    for r in &list.releases {
        let a = r.artifact.clone().unwrap_or_default();
        table.add_row(vec![
            output::cell(&r.version),
            output::cell(format!("{}/{}", r.os, r.arch)),
            output::cell(bytesize::ByteSize(a.size).to_string()),
            output::cell(a.sha256.chars().take(12).collect::<String>()),
            output::cell(if r.served { "yes" } else { "" }),
        ]);
    }
    output::print_table(&table)
}

/// `geppetto puppets upgrade`: a new version of the task `puppet-upgrade`
/// naming the version, then a job of it.
pub async fn upgrade(api: &Api, args: UpgradeArgs, format: Format) -> Result<(), Error> {
    let program = pb::Program {
        kind: Some(pb::program::Kind::Upgrade(pb::Upgrade {
            version: args.to.clone().unwrap_or_default(),
            deadline: args.prove_within.map(|d| prost_types::Duration {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos() as i32,
            }),
        })),
    };
    let exists = api
        .tasks()
        .get_task(request(pb::GetTaskRequest {
            name: UPGRADE_TASK.into(),
            version: 0,
        }))
        .await;
    let task = match exists {
        Ok(_) => {
            let req = pb::UpdateTaskRequest {
                name: UPGRADE_TASK.into(),
                program: Some(program),
                ..Default::default()
            };
            api.call(api.tasks().update_task(request(req))).await?
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            let req = pb::CreateTaskRequest {
                name: UPGRADE_TASK.into(),
                description: "puppets upgrading themselves (geppetto puppets upgrade)".into(),
                spec: Some(pb::RunSpec {
                    program: Some(program),
                    timeout: Some(prost_types::Duration {
                        seconds: UPGRADE_TIMEOUT.as_secs() as i64,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            api.call(api.tasks().create_task(request(req))).await?
        }
        Err(status) => return Err(api.error(status)),
    };
    let version = match task
        .spec
        .as_ref()
        .and_then(|s| s.program.as_ref())
        .and_then(|p| p.kind.as_ref())
    {
        Some(pb::program::Kind::Upgrade(u)) => u.version.clone(),
        _ => String::new(),
    };
    let platforms: Vec<String> = task
        .spec
        .as_ref()
        .map(|s| {
            s.artifacts
                .iter()
                .filter_map(|a| a.name.strip_prefix(&format!("puppet-{version}-")))
                .map(|p| p.replacen('-', "/", 1))
                .collect()
        })
        .unwrap_or_default();
    eprintln!(
        "upgrading to puppet {version} (task {UPGRADE_TASK} v{}; binaries for {})",
        task.version,
        platforms.join(", ")
    );
    let job = RunJobArgs {
        task: UPGRADE_TASK.into(),
        target: args.target,
        puppets: args.puppets,
        version: Some(task.version),
        wait: args.wait,
        all_runs: args.all_runs,
        strategy: args.strategy,
    };
    super::jobs::launch(api, job, format).await
}
