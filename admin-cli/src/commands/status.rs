//! `geppetto status`: one screen of the fleet, the jobs under way, the
//! resources in use, and what needs an operator.

use std::fmt::Write as _;
use std::io::Write as _;

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::Format;
use crate::error::Error;
use crate::output;
use crate::views::{JobBriefView, PuppetBrief, ServerView, StatusView};

/// How many of the newest jobs are looked at.
const JOBS_LOOKED_AT: u32 = 100;

pub async fn run(api: &Api, format: Format) -> Result<(), Error> {
    let (mut jobs_client, mut resources_client, mut server_client) =
        (api.jobs(), api.resources(), api.server());
    let server = async {
        // An older puppeteer cannot say: the rest of the screen still shows.
        Ok::<_, Error>(
            api.call(server_client.get_server_info(request(pb::GetServerInfoRequest {})))
                .await
                .ok(),
        )
    };
    let (puppets, jobs, resources, server) = tokio::try_join!(
        super::puppets::list_puppets_as(api, String::new(), |p| PuppetBrief::from(p)),
        api.call(jobs_client.list_jobs(request(pb::ListJobsRequest {
            limit: JOBS_LOOKED_AT,
            ..Default::default()
        }))),
        api.call(resources_client.list_resources(request(pb::ListResourcesRequest {}))),
        server,
    )?;
    let mut view = StatusView::new(&puppets, &jobs.jobs, &resources.resources);
    view.server = server.as_ref().map(ServerView::from);
    if format == Format::Json {
        return output::print_json(&view);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", render(&view).trim_end())?;
    Ok(())
}

/// The screen, as text.
pub fn render(view: &StatusView) -> String {
    let mut text = String::new();
    let f = &view.fleet;
    let _ = writeln!(
        text,
        "fleet: {} puppet{}: {} online, {} late, {} offline; {} pending, {} disabled",
        f.total,
        plural(f.total as usize),
        f.online,
        f.late,
        f.offline,
        f.pending,
        f.disabled
    );

    if view.jobs.is_empty() {
        let _ = writeln!(text, "\njobs: none running or awaiting approval");
    } else {
        let _ = writeln!(text, "\njobs running or awaiting approval:");
        let mut table = output::table(["ID", "TASK", "STATE", "RUNS"]);
        for job in &view.jobs {
            table.add_row(vec![
                output::cell(&job.id),
                output::cell(task(job)),
                output::state_cell(&job.state),
                output::cell(counts(job)),
            ]);
        }
        let _ = writeln!(text, "{}", table.to_string().trim_end());
    }

    if !view.fetching.is_empty() {
        let _ = writeln!(text, "\nfetching artifacts:");
        for run in &view.fetching {
            let _ = writeln!(
                text,
                "  {} ({}, {}): {}",
                run.puppet,
                run.job_id,
                run.run_id,
                run.fetch.words()
            );
        }
    }

    if view.resources.is_empty() {
        let _ = writeln!(text, "\nresources: none in use");
    } else {
        let _ = writeln!(text, "\nresources in use:");
        let mut table = output::table(["NAME", "USED", "WAITERS"]);
        for r in &view.resources {
            table.add_row(vec![
                output::cell(&r.name),
                output::cell(format!("{}/{}", r.used, r.capacity)),
                output::cell(r.waiters),
            ]);
        }
        let _ = writeln!(text, "{}", table.to_string().trim_end());
    }

    if let Some(server) = &view.server {
        let _ = writeln!(text, "\n{}", server_lines(server).trim_end());
    }

    let a = &view.attention;
    if a.pending_puppets.is_empty()
        && a.awaiting_approval.is_empty()
        && a.failed_jobs.is_empty()
        && a.offline_waits.is_empty()
    {
        let _ = writeln!(text, "\nneeds attention: nothing");
        return text;
    }
    let _ = writeln!(text, "\nneeds attention:");
    for name in &a.pending_puppets {
        let _ = writeln!(
            text,
            "  puppet {name} is pending: geppetto puppets approve {name} (or puppets reject)"
        );
    }
    for job in &a.awaiting_approval {
        let _ = writeln!(
            text,
            "  job {} ({}) awaits approval: geppetto jobs approve {0} (or jobs reject)",
            job.id,
            task(job)
        );
    }
    for wait in &a.offline_waits {
        let seen = match wait
            .last_seen
            .as_deref()
            .and_then(|at| humantime::parse_rfc3339(at).ok())
        {
            Some(at) => match std::time::SystemTime::now().duration_since(at) {
                Ok(ago) => format!("last seen {} ago", crate::output::short_duration(ago)),
                Err(_) => "last seen just now".into(),
            },
            None => "never seen".into(),
        };
        let _ = writeln!(
            text,
            "  job {} waits for puppet {}, offline ({seen}): geppetto jobs skip {0} --puppet {1} (or bring the puppet back)",
            wait.job_id, wait.puppet
        );
    }
    for job in &a.failed_jobs {
        let _ = writeln!(
            text,
            "  job {} ({}) failed, {}: geppetto jobs show {0}, then geppetto jobs ack {0}",
            job.id,
            task(job),
            counts(job)
        );
    }
    text
}

/// The puppeteer's disk and retention, in a few lines.
fn server_lines(s: &ServerView) -> String {
    let mut text = format!(
        "puppeteer {}: data dir {} (logs {}, artifacts {})\nretention: {}\n",
        s.version,
        output::bytes(s.data_dir_bytes),
        output::bytes(s.log_bytes),
        output::bytes(s.artifact_bytes),
        s.retention
    );
    match &s.last_prune_at {
        Some(at) => {
            let _ = writeln!(
                text,
                "last prune: {at}: {} job{} and {} run{} removed",
                s.pruned_jobs,
                plural(s.pruned_jobs as usize),
                s.pruned_runs,
                plural(s.pruned_runs as usize)
            );
        }
        None => text.push_str("last prune: not yet\n"),
    }
    if !s.store.is_empty() {
        let _ = writeln!(text, "store: {}", s.store);
    }
    if !s.puppet_versions.is_empty() {
        let versions: Vec<String> = s
            .puppet_versions
            .iter()
            .map(|(v, n)| format!("{n} on {v}"))
            .collect();
        let _ = writeln!(
            text,
            "puppet versions: {}; {} older than this puppeteer",
            versions.join(", "),
            s.puppets_older
        );
    }
    if !s.nodes.is_empty() {
        let _ = writeln!(
            text,
            "cluster: {} node{}, {} alive (bandwidth budgets split {} way{})",
            s.nodes.len(),
            plural(s.nodes.len()),
            s.nodes_alive,
            s.nodes_alive.max(1),
            plural(s.nodes_alive.max(1) as usize)
        );
        for node in &s.nodes {
            let mut marks = Vec::new();
            if node.leader {
                marks.push("leader");
            }
            if node.answering {
                marks.push("answered this");
            }
            let marks = if marks.is_empty() {
                String::new()
            } else {
                format!(" ({})", marks.join(", "))
            };
            let _ = writeln!(
                text,
                "  node {} at {}: {} poll{} held, seen {}{marks}",
                node.id,
                node.listen,
                node.polls_held,
                plural(node.polls_held as usize),
                node.last_seen.as_deref().unwrap_or("never")
            );
        }
    }
    text
}

/// `patch v2`
fn task(job: &JobBriefView) -> String {
    format!("{} v{}", job.task_name, job.task_version)
}

/// `3 runs: 1 failed, 2 succeeded`
fn counts(job: &JobBriefView) -> String {
    let total: u32 = job.counts.values().sum();
    if total == 0 {
        return "no runs".into();
    }
    let parts: Vec<String> = job
        .counts
        .iter()
        .map(|(state, n)| format!("{n} {}", state.replace('_', " ")))
        .collect();
    format!(
        "{total} run{}: {}",
        plural(total as usize),
        parts.join(", ")
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, state: pb::JobState, runs: &[pb::RunState]) -> pb::Job {
        pb::Job {
            id: id.into(),
            task_name: "patch".into(),
            task_version: 2,
            state: state as i32,
            runs: runs
                .iter()
                .map(|s| pb::RunSummary {
                    state: *s as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn screen_lists_what_needs_attention() {
        let puppets = [
            pb::Puppet {
                name: "web-1".into(),
                state: pb::PuppetState::Enabled as i32,
                presence: pb::Presence::Online as i32,
                ..Default::default()
            },
            pb::Puppet {
                name: "new-1".into(),
                state: pb::PuppetState::Pending as i32,
                presence: pb::Presence::Online as i32,
                ..Default::default()
            },
        ];
        use pb::RunState::*;
        let jobs = [
            job("job-3", pb::JobState::AwaitingApproval, &[Queued]),
            job("job-2", pb::JobState::Running, &[Running, Succeeded]),
            job(
                "job-1",
                pb::JobState::Failed,
                &[Failed, Succeeded, Succeeded],
            ),
        ];
        let resources = [pb::Resource {
            name: "uplink".into(),
            capacity: 1,
            used: 1,
            waiters: vec![pb::ResourceHolder::default()],
            ..Default::default()
        }];
        let puppets: Vec<PuppetBrief> = puppets.iter().map(PuppetBrief::from).collect();
        let text = render(&StatusView::new(&puppets, &jobs, &resources));
        assert!(
            text.starts_with(
                "fleet: 2 puppets: 2 online, 0 late, 0 offline; 1 pending, 0 disabled"
            ),
            "{text}"
        );
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in:\n{text}"))
                .to_string()
        };
        assert!(
            line("job-2").contains("2 runs: 1 running, 1 succeeded"),
            "{text}"
        );
        assert!(line("job-2").contains("patch v2"), "{text}");
        assert!(line("uplink").contains("1/1"), "{text}");
        assert!(
            line("new-1").contains("geppetto puppets approve new-1"),
            "{text}"
        );
        assert!(
            line("awaits approval").contains("geppetto jobs approve job-3"),
            "{text}"
        );
        assert!(
            line("job-1").contains("failed, 3 runs: 1 failed, 2 succeeded"),
            "{text}"
        );

        let mut quiet = StatusView::new(&puppets[..1], &[], &[]);
        quiet.server = Some(ServerView {
            version: "0.1.0".into(),
            data_dir_bytes: 3 << 20,
            artifact_bytes: 0,
            log_bytes: 1024,
            retention: "finished jobs are pruned ...".into(),
            last_prune_at: None,
            pruned_jobs: 0,
            pruned_runs: 0,
            store: "PostgreSQL db:5432/geppetto".into(),
            nodes: vec![crate::views::NodeView {
                id: "n1".into(),
                listen: "10.0.0.1:7443".into(),
                started_at: None,
                last_seen: Some("2026-12-06T00:00:00Z".into()),
                polls_held: 2,
                leader: true,
                answering: true,
            }],
            nodes_alive: 1,
            puppet_versions: vec![("0.1.0".into(), 3), ("unknown".into(), 1)],
            puppets_older: 0,
        });
        let quiet = render(&quiet);
        assert!(
            quiet.contains("puppeteer 0.1.0: data dir 3.0 MiB (logs 1.0 KiB, artifacts 0 B)"),
            "{quiet}"
        );
        assert!(quiet.contains("last prune: not yet"), "{quiet}");
        assert!(
            quiet.contains("store: PostgreSQL db:5432/geppetto"),
            "{quiet}"
        );
        assert!(
            quiet.contains("cluster: 1 node, 1 alive (bandwidth budgets split 1 way)\n  node n1 at 10.0.0.1:7443: 2 polls held, seen 2026-12-06T00:00:00Z (leader, answered this)"),
            "{quiet}"
        );
        assert!(quiet.contains("jobs: none running"), "{quiet}");
        assert!(quiet.contains("resources: none in use"), "{quiet}");
        assert!(quiet.contains("needs attention: nothing"), "{quiet}");
        assert!(quiet.starts_with("fleet: 1 puppet: 1 online"), "{quiet}");
    }
}
