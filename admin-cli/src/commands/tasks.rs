//! `geppetto tasks ...`

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{CreateTaskArgs, Format, ProgramArgs, TasksCommand, UpdateTaskArgs};
use crate::error::Error;
use crate::output;
use crate::parse::pairs_to_map;
use crate::views::{self, TaskView};

pub async fn run(api: &Api, command: TasksCommand, format: Format) -> Result<(), Error> {
    match command {
        TasksCommand::Create(args) => {
            let req = create_request(*args)?;
            let task = api.call(api.tasks().create_task(request(req))).await?;
            print_one(&task, format)
        }
        TasksCommand::Update(args) => {
            let get = pb::GetTaskRequest {
                name: args.name.clone(),
                version: 0,
            };
            let current = api.call(api.tasks().get_task(request(get))).await?;
            let req = update_request(*args, &current)?;
            let task = api.call(api.tasks().update_task(request(req))).await?;
            print_one(&task, format)
        }
        TasksCommand::List => {
            let list = api
                .call(api.tasks().list_tasks(request(pb::ListTasksRequest {})))
                .await?;
            let mut tasks = list.tasks;
            tasks.sort_by(|a, b| a.name.cmp(&b.name));
            print_list(&tasks, format)
        }
        TasksCommand::Show { name, version } => {
            let req = pb::GetTaskRequest {
                name,
                version: version.unwrap_or(0),
            };
            let task = api.call(api.tasks().get_task(request(req))).await?;
            print_one(&task, format)
        }
        TasksCommand::Remove { name } => {
            let req = pb::RemoveTaskRequest { name: name.clone() };
            api.call(api.tasks().remove_task(request(req))).await?;
            eprintln!("removed task {name}");
            Ok(())
        }
    }
}

/// The program the options describe, if any.
pub fn program(args: &ProgramArgs) -> Result<Option<pb::Program>, Error> {
    use pb::program::Kind;
    let body = match (&args.command, &args.script) {
        (Some(command), _) => Some(command.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Error::Input(format!("cannot read script {}: {e}", path.display())))?,
        ),
        (None, None) => None,
    };
    if let Some(body) = body {
        return Ok(Some(pb::Program {
            kind: Some(Kind::Script(pb::Script {
                body,
                interpreter: interpreter(args).unwrap_or_default(),
            })),
        }));
    }
    if let Some(argv) = &args.exec {
        if args.interpreter.is_some() {
            return Err(Error::Usage(
                "--interpreter goes with --command or --script, not with --exec".into(),
            ));
        }
        return Ok(Some(pb::Program {
            kind: Some(Kind::Argv(pb::Argv { args: argv.clone() })),
        }));
    }
    Ok(None)
}

/// Whether the task expects a reboot, and its window.
fn reboot_line(spec: &pb::RunSpec) -> String {
    if !spec.expect_reboot {
        return "not expected".into();
    }
    match &spec.reboot_window {
        Some(window) => format!(
            "expected: succeeds if the puppet comes back within {}",
            output::human_duration(Some(window))
        ),
        None => "expected: succeeds if the puppet comes back within 30m".into(),
    }
}

fn interpreter(args: &ProgramArgs) -> Option<Vec<String>> {
    let path = args.interpreter.clone()?;
    Some(
        std::iter::once(path)
            .chain(args.interpreter_arg.iter().cloned())
            .collect(),
    )
}

fn duration(d: std::time::Duration) -> Result<prost_types::Duration, Error> {
    prost_types::Duration::try_from(d).map_err(|_| Error::Usage("--timeout is too long".into()))
}

/// The needs of `--resource` options, refusing a resource given twice.
fn needs(resources: Vec<(String, u32)>) -> Result<Vec<pb::ResourceNeed>, Error> {
    let mut needs: Vec<pb::ResourceNeed> = Vec::with_capacity(resources.len());
    for (name, count) in resources {
        if needs.iter().any(|n| n.name == name) {
            return Err(Error::Usage(format!(
                "resource {name:?} is given twice: give it once, with the count wanted"
            )));
        }
        needs.push(pb::ResourceNeed { name, count });
    }
    Ok(needs)
}

/// The names of `--artifact` options, refusing a name given twice.
fn artifact_names(names: Vec<String>) -> Result<Vec<String>, Error> {
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(Error::Usage(format!("artifact {name:?} is given twice")));
        }
    }
    Ok(names)
}

pub fn create_request(args: CreateTaskArgs) -> Result<pb::CreateTaskRequest, Error> {
    let spec = pb::RunSpec {
        program: program(&args.program)?,
        timeout: args.spec.timeout.map(duration).transpose()?,
        env: pairs_to_map("environment variable", args.spec.env)?
            .into_iter()
            .collect(),
        workdir: args.spec.workdir.unwrap_or_default(),
        artifacts: artifact_names(args.spec.artifacts)?
            .into_iter()
            .map(|name| pb::ArtifactRef {
                name,
                ..Default::default()
            })
            .collect(),
        expect_reboot: args.spec.expect_reboot,
        reboot_window: args.spec.reboot_window.map(duration).transpose()?,
    };
    Ok(pb::CreateTaskRequest {
        name: args.name,
        description: args.spec.description.unwrap_or_default(),
        spec: Some(spec),
        resources: needs(args.spec.resources)?,
        retries: args.spec.retries.unwrap_or(0),
        requires: args.spec.requires.unwrap_or_default(),
    })
}

/// An update of `current`: only what the options name changes. The request
/// carries the version read, so an update made in between is not lost.
pub fn update_request(
    args: UpdateTaskArgs,
    current: &pb::Task,
) -> Result<pb::UpdateTaskRequest, Error> {
    let spec = current.spec.clone().unwrap_or_default();
    let mut program = program(&args.program)?;
    if program.is_none()
        && let Some(interpreter) = interpreter(&args.program)
    {
        program = Some(with_interpreter(spec.program.clone(), interpreter)?);
    }
    let mut req = pb::UpdateTaskRequest {
        name: args.name,
        expected_version: current.version,
        description: args.spec.description,
        program,
        timeout: args.spec.timeout.map(duration).transpose()?,
        workdir: args.spec.workdir,
        // The server merges these into the current needs by name, unless
        // --no-resources asks for exactly these (possibly none).
        resources: needs(args.spec.resources)?,
        replace_resources: args.no_resources,
        retries: args.spec.retries,
        requires: args.spec.requires,
        // The server pins these to their current content and merges them
        // into the current artifacts by name, unless --clear-artifacts asks
        // for exactly these (possibly none).
        artifacts: artifact_names(args.spec.artifacts)?,
        replace_artifacts: args.clear_artifacts,
        expect_reboot: match (args.spec.expect_reboot, args.no_expect_reboot) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        reboot_window: args.spec.reboot_window.map(duration).transpose()?,
        ..Default::default()
    };
    if !args.spec.env.is_empty() || !args.unset_env.is_empty() {
        let mut env = spec.env;
        for key in &args.unset_env {
            if env.remove(key).is_none() {
                eprintln!(
                    "warning: task {} has no environment variable {key:?}",
                    current.name
                );
            }
        }
        env.extend(pairs_to_map("environment variable", args.spec.env)?);
        req.env = env;
        req.replace_env = true;
    }
    let unchanged = pb::UpdateTaskRequest {
        name: req.name.clone(),
        expected_version: req.expected_version,
        ..Default::default()
    };
    if req == unchanged {
        return Err(Error::Usage(
            "nothing to update: give at least one option to change (see tasks update --help)"
                .into(),
        ));
    }
    Ok(req)
}

fn with_interpreter(
    current: Option<pb::Program>,
    interpreter: Vec<String>,
) -> Result<pb::Program, Error> {
    match current.and_then(|p| p.kind) {
        Some(pb::program::Kind::Script(script)) => Ok(pb::Program {
            kind: Some(pb::program::Kind::Script(pb::Script {
                interpreter,
                ..script
            })),
        }),
        _ => Err(Error::Usage(
            "--interpreter applies to a script, and this task runs an argv: give --command or --script too".into(),
        )),
    }
}

fn program_summary(task: &pb::Task) -> String {
    let program = task.spec.as_ref().and_then(|s| s.program.as_ref());
    match program.and_then(|p| p.kind.as_ref()) {
        Some(pb::program::Kind::Script(s)) => {
            let first = s.body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let mut line: String = first.chars().take(40).collect();
            if line.len() < first.len() || s.body.trim().lines().count() > 1 {
                line.push('…');
            }
            format!("script: {line}")
        }
        Some(pb::program::Kind::Argv(a)) => format!("exec: {}", a.args.join(" ")),
        Some(pb::program::Kind::Upgrade(u)) => format!("upgrade to puppet {}", u.version),
        None => "-".into(),
    }
}

fn print_list(tasks: &[pb::Task], format: Format) -> Result<(), Error> {
    if format == Format::Json {
        let views: Vec<_> = tasks.iter().map(TaskView::from).collect();
        return output::print_json(&views);
    }
    let mut table = output::table([
        "NAME",
        "VERSION",
        "PROGRAM",
        "TIMEOUT",
        "UPDATED",
        "DESCRIPTION",
    ]);
    for t in tasks {
        table.add_row(vec![
            output::cell(&t.name),
            output::cell(t.version),
            output::cell(program_summary(t)),
            output::cell(output::human_duration(
                t.spec.as_ref().and_then(|s| s.timeout.as_ref()),
            )),
            output::cell(output::ago(t.updated_at.as_ref())),
            output::cell(&t.description),
        ]);
    }
    output::print_table(&table)
}

fn print_one(task: &pb::Task, format: Format) -> Result<(), Error> {
    if format == Format::Json {
        return output::print_json(&TaskView::from(task));
    }
    let spec = task.spec.clone().unwrap_or_default();
    let mut rows = vec![
        ("name", task.name.clone()),
        ("version", task.version.to_string()),
        ("description", super::puppets::or_dash(&task.description)),
        ("created", output::when(task.created_at.as_ref())),
        ("updated", output::when(task.updated_at.as_ref())),
        ("timeout", output::human_duration(spec.timeout.as_ref())),
        ("workdir", super::puppets::or_dash(&spec.workdir)),
        ("env", output::labels(&spec.env)),
        ("resources", views::needs_line(&task.resources)),
        ("artifacts", views::artifacts_line(&spec.artifacts)),
        ("retries", task.retries.to_string()),
        (
            "requires",
            if task.requires.is_empty() {
                "any puppet".into()
            } else {
                task.requires.clone()
            },
        ),
        ("reboot", reboot_line(&spec)),
    ];
    match spec.program.and_then(|p| p.kind) {
        Some(pb::program::Kind::Argv(a)) => rows.push(("exec", a.args.join(" "))),
        Some(pb::program::Kind::Upgrade(u)) => {
            rows.push(("upgrade", format!("to puppet {}", u.version)));
            if let Some(d) = u.deadline {
                rows.push(("deadline", format!("{}s", d.seconds)));
            }
        }
        Some(pb::program::Kind::Script(s)) => {
            let interpreter = if s.interpreter.is_empty() {
                "/bin/sh".to_string()
            } else {
                s.interpreter.join(" ")
            };
            rows.push(("interpreter", interpreter));
            output::print_table(&output::fields(rows))?;
            output::print_section("script:")?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(s.body.as_bytes())?;
            if !s.body.ends_with('\n') {
                writeln!(out)?;
            }
            return Ok(());
        }
        None => {}
    }
    output::print_table(&output::fields(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn create_args(argv: &[&str]) -> CreateTaskArgs {
        let cli = Cli::try_parse_from(["geppetto", "tasks", "create"].iter().chain(argv)).unwrap();
        match cli.command {
            Command::Tasks(TasksCommand::Create(args)) => *args,
            _ => unreachable!(),
        }
    }

    fn update_args(argv: &[&str]) -> UpdateTaskArgs {
        let cli = Cli::try_parse_from(["geppetto", "tasks", "update"].iter().chain(argv)).unwrap();
        match cli.command {
            Command::Tasks(TasksCommand::Update(args)) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn command_becomes_a_script() {
        let req = create_request(create_args(&[
            "t",
            "--command",
            "df -h",
            "--interpreter",
            "/bin/bash",
            "--interpreter-arg",
            "-eu",
            "--env",
            "A=1",
            "--timeout",
            "1m",
        ]))
        .unwrap();
        let spec = req.spec.unwrap();
        let Some(pb::program::Kind::Script(script)) = spec.program.unwrap().kind else {
            panic!("not a script");
        };
        assert_eq!(script.body, "df -h");
        assert_eq!(script.interpreter, vec!["/bin/bash", "-eu"]);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.timeout.unwrap().seconds, 60);
    }

    #[test]
    fn script_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sh");
        std::fs::write(&path, "echo hi\n").unwrap();
        let req = create_request(create_args(&["t", "--script", path.to_str().unwrap()])).unwrap();
        let Some(pb::program::Kind::Script(script)) = req.spec.unwrap().program.unwrap().kind
        else {
            panic!("not a script");
        };
        assert_eq!(script.body, "echo hi\n");
        assert!(script.interpreter.is_empty());
        let err = create_request(create_args(&["t", "--script", "/nonexistent/s.sh"])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read script /nonexistent/s.sh")
        );
    }

    #[test]
    fn exec_refuses_an_interpreter() {
        let err = create_request(create_args(&[
            "t",
            "--interpreter",
            "/bin/bash",
            "--exec",
            "true",
        ]))
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn update_changes_only_what_is_given() {
        let current = pb::Task {
            name: "t".into(),
            version: 4,
            spec: Some(pb::RunSpec {
                program: Some(pb::Program {
                    kind: Some(pb::program::Kind::Script(pb::Script {
                        body: "echo".into(),
                        interpreter: vec![],
                    })),
                }),
                env: [("A".to_string(), "1".to_string()), ("B".into(), "2".into())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = update_request(
            update_args(&["t", "--env", "C=3", "--unset-env", "A"]),
            &current,
        )
        .unwrap();
        assert_eq!(req.expected_version, 4);
        assert!(req.replace_env);
        assert_eq!(req.env.len(), 2);
        assert!(req.program.is_none() && req.timeout.is_none() && req.description.is_none());

        let req =
            update_request(update_args(&["t", "--interpreter", "/bin/bash"]), &current).unwrap();
        let Some(pb::program::Kind::Script(script)) = req.program.unwrap().kind else {
            panic!("not a script");
        };
        assert_eq!(
            (script.body.as_str(), script.interpreter),
            ("echo", vec!["/bin/bash".to_string()])
        );

        let err = update_request(update_args(&["t"]), &current).unwrap_err();
        assert!(err.to_string().starts_with("nothing to update"));
    }

    #[test]
    fn reboot_expectations_travel_on_create_and_update() {
        let req = create_request(create_args(&[
            "patch",
            "--command",
            "apt-get -y upgrade && reboot",
            "--expect-reboot",
            "--reboot-window",
            "20m",
        ]))
        .unwrap();
        let spec = req.spec.unwrap();
        assert!(spec.expect_reboot);
        assert_eq!(spec.reboot_window.unwrap().seconds, 1200);
        let plain = create_request(create_args(&["t", "--command", "true"])).unwrap();
        assert!(!plain.spec.unwrap().expect_reboot);

        let current = pb::Task {
            name: "patch".into(),
            version: 2,
            ..Default::default()
        };
        let on = update_request(update_args(&["patch", "--expect-reboot"]), &current).unwrap();
        assert_eq!(on.expect_reboot, Some(true));
        let off = update_request(update_args(&["patch", "--no-expect-reboot"]), &current).unwrap();
        assert_eq!(off.expect_reboot, Some(false));
        let window =
            update_request(update_args(&["patch", "--reboot-window", "1h"]), &current).unwrap();
        assert_eq!(
            (window.expect_reboot, window.reboot_window.unwrap().seconds),
            (None, 3600)
        );
    }

    #[test]
    fn create_carries_resources_retries_and_requires() {
        let req = create_request(create_args(&[
            "upgrade",
            "--command",
            "true",
            "--resource",
            "uplink-lyon",
            "--resource",
            "db:2",
            "--retries",
            "2",
            "--requires",
            "os=debian",
        ]))
        .unwrap();
        assert_eq!(
            req.resources,
            vec![
                pb::ResourceNeed {
                    name: "uplink-lyon".into(),
                    count: 1
                },
                pb::ResourceNeed {
                    name: "db".into(),
                    count: 2
                },
            ]
        );
        assert_eq!((req.retries, req.requires.as_str()), (2, "os=debian"));

        let plain = create_request(create_args(&["t", "--command", "true"])).unwrap();
        assert!(plain.resources.is_empty() && plain.retries == 0 && plain.requires.is_empty());

        let err = create_request(create_args(&[
            "t",
            "--command",
            "true",
            "--resource",
            "a",
            "--resource",
            "a:2",
        ]))
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("\"a\" is given twice"), "{err}");
    }

    #[test]
    fn update_merges_or_replaces_resources() {
        let current = pb::Task {
            name: "t".into(),
            version: 2,
            resources: vec![pb::ResourceNeed {
                name: "old".into(),
                count: 1,
            }],
            ..Default::default()
        };
        let merge =
            update_request(update_args(&["t", "--resource", "uplink:2"]), &current).unwrap();
        assert_eq!(
            merge.resources,
            vec![pb::ResourceNeed {
                name: "uplink".into(),
                count: 2
            }]
        );
        assert!(!merge.replace_resources);
        assert!(merge.retries.is_none() && merge.requires.is_none());

        let clear = update_request(update_args(&["t", "--no-resources"]), &current).unwrap();
        assert!(clear.resources.is_empty() && clear.replace_resources);

        let replace = update_request(
            update_args(&["t", "--no-resources", "--resource", "uplink"]),
            &current,
        )
        .unwrap();
        assert!(replace.replace_resources);
        assert_eq!(replace.resources.len(), 1);

        let other = update_request(
            update_args(&["t", "--retries", "0", "--requires", ""]),
            &current,
        )
        .unwrap();
        assert_eq!(other.retries, Some(0));
        assert_eq!(other.requires.as_deref(), Some(""));
        assert!(other.resources.is_empty() && !other.replace_resources);
    }
}
