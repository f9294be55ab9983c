//! `geppetto puppets ...`

use geppetto_proto::v1 as pb;

use crate::api::{Api, each_page, pages, request};
use crate::cli::{Format, PuppetsCommand};
use crate::error::Error;
use crate::output;
use crate::parse::pairs_to_map;
use crate::views::{self, PuppetView};

/// What `keep` takes of every puppet the selector matches, by name, a page
/// at a time: only a page of whole records is held at once.
pub async fn list_puppets_as<T>(
    api: &Api,
    selector: String,
    keep: fn(&pb::Puppet) -> T,
) -> Result<Vec<T>, Error> {
    pages(None, |page_token| {
        let req = pb::ListPuppetsRequest {
            selector: selector.clone(),
            page_token,
            ..Default::default()
        };
        async move {
            let page = api.call(api.puppets().list_puppets(request(req))).await?;
            Ok((
                page.puppets.iter().map(keep).collect(),
                page.next_page_token,
            ))
        }
    })
    .await
}

pub async fn run(api: &Api, command: PuppetsCommand, format: Format) -> Result<(), Error> {
    match command {
        PuppetsCommand::Upgrade(args) => super::puppet_releases::upgrade(api, args, format).await,
        PuppetsCommand::List { selector } => list(api, selector.unwrap_or_default(), format).await,
        PuppetsCommand::Show { name } => {
            let req = pb::GetPuppetRequest { name };
            let puppet = api.call(api.puppets().get_puppet(request(req))).await?;
            print_one(&puppet, format)
        }
        PuppetsCommand::Label {
            name,
            labels,
            remove,
        } => {
            let req = pb::LabelPuppetRequest {
                name,
                set: pairs_to_map("label", labels)?.into_iter().collect(),
                remove,
            };
            let puppet = api.call(api.puppets().label_puppet(request(req))).await?;
            print_one(&puppet, format)
        }
        PuppetsCommand::Disable { name } => {
            let req = pb::GetPuppetRequest { name };
            let puppet = api.call(api.puppets().disable_puppet(request(req))).await?;
            print_one(&puppet, format)
        }
        PuppetsCommand::Enable { name } => {
            let req = pb::GetPuppetRequest { name };
            let puppet = api.call(api.puppets().enable_puppet(request(req))).await?;
            print_one(&puppet, format)
        }
        PuppetsCommand::Remove { name, force } => {
            let req = pb::RemovePuppetRequest {
                name: name.clone(),
                force,
            };
            let removed = api.call(api.puppets().remove_puppet(request(req))).await?;
            print_removed("removed", &name, &removed, format)
        }
        PuppetsCommand::Approve { names } => approve(api, names, format).await,
        PuppetsCommand::Reject { name } => {
            let req = pb::GetPuppetRequest { name: name.clone() };
            let removed = api.call(api.puppets().reject_puppet(request(req))).await?;
            print_removed("rejected", &name, &removed, format)
        }
        PuppetsCommand::Rotate { name, grace } => {
            let grace = grace
                .map(prost_types::Duration::try_from)
                .transpose()
                .map_err(|_| Error::Usage("--grace is too long".into()))?;
            let req = pb::RotatePuppetCredentialRequest { name, grace };
            let puppet = api
                .call(api.puppets().rotate_puppet_credential(request(req)))
                .await?;
            if format == Format::Table {
                eprintln!(
                    "rotated the credential of {}: it picks the new one up at its next poll",
                    puppet.name
                );
            }
            print_one(&puppet, format)
        }
        PuppetsCommand::Queue { name } => {
            let req = pb::GetPuppetRequest { name };
            let queue = api
                .call(api.puppets().get_puppet_queue(request(req)))
                .await?;
            print_queue(&queue, format)
        }
        PuppetsCommand::Revoke { name } => {
            let req = pb::GetPuppetRequest { name };
            let puppet = api
                .call(api.puppets().revoke_puppet_credential(request(req)))
                .await?;
            if format == Format::Table {
                eprintln!(
                    "revoked the credential of {}: it is cut off; to bring it back, \
                     remove it and enroll it again",
                    puppet.name
                );
            }
            print_one(&puppet, format)
        }
    }
}

/// `puppets queue`: the runs a puppet takes next, in order.
fn print_queue(queue: &pb::PuppetQueue, format: Format) -> Result<(), Error> {
    if format == Format::Json {
        return output::print_json(&views::PuppetQueueView::from(queue));
    }
    if queue.entries.is_empty() {
        // A message, not an empty table.
        eprintln!("puppet {} has nothing to run", output::clean(&queue.puppet));
        return Ok(());
    }
    let mut table = output::table(["#", "RUN", "JOB", "TASK", "STATE", "WHY"]);
    for (i, entry) in queue.entries.iter().enumerate() {
        table.add_row(vec![
            output::cell(i + 1),
            output::cell(&entry.run_id),
            output::cell(&entry.job_id),
            output::cell(&entry.task_name),
            output::state_cell(&views::run_state(entry.state)),
            output::cell(or_dash(&output::cause(&entry.cause))),
        ]);
    }
    output::print_table(&table)
}

/// What `puppets remove` and `puppets reject` print: the runs they cancelled.
fn print_removed(
    what: &str,
    name: &str,
    removed: &pb::RemovePuppetResponse,
    format: Format,
) -> Result<(), Error> {
    match format {
        Format::Json => output::print_json(&serde_json::json!({
            "name": name,
            "cancelled_runs": removed.cancelled_runs,
        })),
        Format::Table => {
            eprintln!("{what} puppet {name}");
            for run in &removed.cancelled_runs {
                eprintln!("cancelled run {run}");
            }
            Ok(())
        }
    }
}

/// The state column of the list: a revoked puppet is disabled, but "revoked"
/// says why and that enabling it will not help.
fn state_word(p: &pb::Puppet) -> String {
    if p.revoked {
        "revoked".into()
    } else {
        views::puppet_state(p.state)
    }
}

/// The credential line of `puppets show`.
fn credential(p: &pb::Puppet) -> &'static str {
    if p.revoked {
        "revoked (remove the puppet and enroll it again)"
    } else if p.rotation_pending {
        "rotation pending (the puppet has not picked the new one up yet)"
    } else {
        "ok"
    }
}

/// `puppets list`: each page is printed (JSON) or turned into table rows
/// as it comes, so that a listing of a large fleet holds one page of
/// puppets at a time, not the whole fleet's records.
async fn list(api: &Api, selector: String, format: Format) -> Result<(), Error> {
    let mut table = (format == Format::Table).then(table);
    let mut json = (format == Format::Json).then(output::JsonArray::default);
    let mut failed = None;
    each_page(
        usize::MAX,
        |page_token| {
            let req = pb::ListPuppetsRequest {
                selector: selector.clone(),
                page_token,
                ..Default::default()
            };
            async move {
                let page = api.call(api.puppets().list_puppets(request(req))).await?;
                Ok((page.puppets, page.next_page_token))
            }
        },
        |puppets| {
            for p in &puppets {
                if let Some(table) = &mut table {
                    table.add_row(row(p));
                }
                if let Some(json) = &mut json
                    && let Err(e) = json.push(&PuppetView::from(p))
                {
                    failed = Some(e);
                    return false;
                }
            }
            true
        },
    )
    .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(json) = json {
        json.finish()?;
    }
    match table {
        Some(table) => output::print_table(&table),
        None => Ok(()),
    }
}

fn table() -> comfy_table::Table {
    output::table([
        "NAME",
        "STATE",
        "PRESENCE",
        "LAST SEEN",
        "RUNS",
        "OS (FACT)",
        "VERSION",
        "LABELS",
    ])
}

fn row(p: &pb::Puppet) -> Vec<comfy_table::Cell> {
    {
        let os = p
            .facts
            .as_ref()
            .map(|f| f.os_id.clone())
            .unwrap_or_default();
        let version = p
            .facts
            .as_ref()
            .map(|f| f.agent_version.clone())
            .unwrap_or_default();
        vec![
            output::cell(&p.name),
            output::state_cell(&state_word(p)),
            output::state_cell(&views::presence(p.presence)),
            output::cell(output::ago(p.last_seen.as_ref())),
            output::cell(p.active_runs),
            output::cell(if os.is_empty() { "-".into() } else { os }),
            output::cell(if version.is_empty() {
                "-".into()
            } else {
                version
            }),
            output::cell(output::labels(&p.labels)),
        ]
    }
}

fn print_one(p: &pb::Puppet, format: Format) -> Result<(), Error> {
    if format == Format::Json {
        return output::print_json(&PuppetView::from(p));
    }
    let mut rows = vec![
        ("name", p.name.clone()),
        ("state", views::puppet_state(p.state)),
        ("presence", views::presence(p.presence)),
        ("last seen", output::when(p.last_seen.as_ref())),
        ("poll hold", poll_hold(p)),
        ("enrolled", output::when(p.enrolled_at.as_ref())),
        ("enroll token", or_dash(&p.enroll_token_id)),
        ("credential", credential(p).into()),
        ("active runs", p.active_runs.to_string()),
        ("labels", output::labels(&p.labels)),
        ("declared labels", output::labels(&p.declared_labels)),
        ("assigned labels", output::labels(&p.assigned_labels)),
    ];
    if let Some(f) = &p.facts {
        let load: Vec<String> = f.load.iter().map(|l| format!("{l:.2}")).collect();
        rows.extend([
            ("hostname", or_dash(&f.hostname)),
            ("os (fact)", or_dash(&f.os)),
            ("kernel", or_dash(&f.kernel)),
            ("arch", or_dash(&f.arch)),
            ("agent version", or_dash(&f.agent_version)),
            ("uptime", output::human_duration(f.uptime.as_ref())),
            (
                "load",
                if load.is_empty() {
                    "-".into()
                } else {
                    load.join(" ")
                },
            ),
            (
                "memory",
                format!(
                    "{} free of {}",
                    output::bytes(f.memory_available_bytes),
                    output::bytes(f.memory_total_bytes)
                ),
            ),
            (
                "disk",
                format!(
                    "{} free of {}",
                    output::bytes(f.disk_available_bytes),
                    output::bytes(f.disk_total_bytes)
                ),
            ),
            ("facts collected", output::when(f.collected_at.as_ref())),
        ]);
    }
    output::print_table(&output::fields(rows))
}

/// The hold the puppet uses, and how many of its polls the path cut.
fn poll_hold(p: &pb::Puppet) -> String {
    let Some(hold) = p.poll_hold.as_ref() else {
        return "- (not polled since the puppeteer started)".into();
    };
    let hold = output::human_duration(Some(hold));
    match p.polls_cut {
        0 => hold,
        1 => format!("{hold} (1 poll cut by the path)"),
        n => format!("{hold} ({n} polls cut by the path)"),
    }
}

pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// Approves each puppet in turn; one refused does not stop the others.
/// One puppet: shown whole, as `puppets show`; several: a line each (JSON:
/// the approved puppets). Fails if any was refused.
async fn approve(api: &Api, names: Vec<String>, format: Format) -> Result<(), Error> {
    if let [name] = names.as_slice() {
        let req = pb::GetPuppetRequest { name: name.clone() };
        let puppet = api.call(api.puppets().approve_puppet(request(req))).await?;
        return print_one(&puppet, format);
    }
    let (mut approved, mut refused) = (Vec::new(), 0);
    for name in names {
        let req = pb::GetPuppetRequest { name: name.clone() };
        match api.call(api.puppets().approve_puppet(request(req))).await {
            Ok(puppet) => {
                if format == Format::Table {
                    println!("approved puppet {}", puppet.name);
                }
                approved.push(PuppetView::from(&puppet));
            }
            Err(e) => {
                refused += 1;
                eprintln!("error: puppet {name}: {e}");
            }
        }
    }
    if format == Format::Json {
        output::print_json(&approved)?;
    }
    if refused > 0 {
        return Err(Error::Api(format!(
            "{refused} of {} puppets not approved",
            approved.len() + refused
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_state_is_shown() {
        let mut p = pb::Puppet {
            state: pb::PuppetState::Pending as i32,
            ..Default::default()
        };
        assert_eq!(state_word(&p), "pending");
        assert_eq!(credential(&p), "ok");
        p.rotation_pending = true;
        assert!(credential(&p).starts_with("rotation pending"));
        p.state = pb::PuppetState::Disabled as i32;
        p.revoked = true;
        assert_eq!(state_word(&p), "revoked");
        assert!(credential(&p).starts_with("revoked"));
    }

    #[test]
    fn poll_hold_says_why() {
        let mut p = pb::Puppet::default();
        assert!(poll_hold(&p).starts_with("- "));
        p.poll_hold = Some(prost_types::Duration {
            seconds: 160,
            nanos: 0,
        });
        assert_eq!(poll_hold(&p), "2m 40s");
        p.polls_cut = 3;
        assert_eq!(poll_hold(&p), "2m 40s (3 polls cut by the path)");
    }
}
