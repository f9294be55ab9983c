//! `geppetto resources ...`

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{Format, ResourcesCommand};
use crate::error::Error;
use crate::output;
use crate::views::{ResourceHolderView, ResourceView};

pub async fn run(api: &Api, command: ResourcesCommand, format: Format) -> Result<(), Error> {
    match command {
        ResourcesCommand::Create {
            name,
            capacity,
            bandwidth,
            site,
        } => {
            let req = pb::CreateResourceRequest {
                name,
                capacity,
                bandwidth: bandwidth.unwrap_or(0),
                site: site.unwrap_or_default(),
            };
            let resource = api
                .call(api.resources().create_resource(request(req)))
                .await?;
            print_one(&resource, format)
        }
        ResourcesCommand::List => {
            let req = pb::ListResourcesRequest {};
            let mut list = api
                .call(api.resources().list_resources(request(req)))
                .await?;
            list.resources.sort_by(|a, b| a.name.cmp(&b.name));
            print_list(&list.resources, format)
        }
        ResourcesCommand::Show { name } => {
            let req = pb::GetResourceRequest { name };
            let resource = api.call(api.resources().get_resource(request(req))).await?;
            print_one(&resource, format)
        }
        ResourcesCommand::Update {
            name,
            capacity,
            bandwidth,
            site,
        } => {
            let req = pb::UpdateResourceRequest {
                name,
                capacity: capacity.unwrap_or(0),
                bandwidth,
                site,
            };
            let resource = api
                .call(api.resources().update_resource(request(req)))
                .await?;
            if format == Format::Table && resource.used > resource.capacity {
                eprintln!(
                    "warning: {} of {} is held, more than the new capacity; new runs wait \
                     until enough is released",
                    resource.used, resource.name
                );
            }
            print_one(&resource, format)
        }
        ResourcesCommand::Remove { name } => {
            let req = pb::GetResourceRequest { name: name.clone() };
            api.call(api.resources().remove_resource(request(req)))
                .await?;
            eprintln!("removed resource {name}");
            Ok(())
        }
    }
}

fn print_list(resources: &[pb::Resource], format: Format) -> Result<(), Error> {
    let views: Vec<_> = resources.iter().map(ResourceView::from).collect();
    if format == Format::Json {
        return output::print_json(&views);
    }
    let mut table = output::table([
        "NAME",
        "CAPACITY",
        "USED",
        "BANDWIDTH",
        "HOLDERS",
        "WAITERS",
    ]);
    for view in &views {
        table.add_row(vec![
            output::cell(&view.name),
            output::cell(view.capacity),
            output::cell(view.used),
            output::cell(bandwidth_words(view.bandwidth)),
            output::cell(view.holders.len()),
            output::cell(view.waiters.len()),
        ]);
    }
    output::print_table(&table)
}

fn print_one(resource: &pb::Resource, format: Format) -> Result<(), Error> {
    let view = ResourceView::from(resource);
    if format == Format::Json {
        return output::print_json(&view);
    }
    output::print_table(&output::fields(vec![
        ("name", view.name.clone()),
        ("capacity", view.capacity.to_string()),
        ("used", view.used.to_string()),
        ("free", view.capacity.saturating_sub(view.used).to_string()),
        ("bandwidth", bandwidth_words(view.bandwidth)),
        (
            "uplink of site",
            if view.site.is_empty() {
                "-".to_string()
            } else {
                view.site.clone()
            },
        ),
        ("holders", view.holders.len().to_string()),
        ("waiters", view.waiters.len().to_string()),
        ("created", output::when(resource.created_at.as_ref())),
    ]))?;
    if !view.holders.is_empty() {
        output::print_section("holders:")?;
        output::print_table(&runs_table(&view.holders, false))?;
    }
    if !view.waiters.is_empty() {
        output::print_section("waiters, in the order they will be served:")?;
        output::print_table(&runs_table(&view.waiters, true))?;
    }
    Ok(())
}

/// A budget for people, `-` for none.
fn bandwidth_words(bandwidth: u64) -> String {
    if bandwidth == 0 {
        "-".into()
    } else {
        crate::parse::format_bandwidth(bandwidth)
    }
}

/// One row per run; waiters get their place in the queue first.
fn runs_table(runs: &[ResourceHolderView], numbered: bool) -> comfy_table::Table {
    let mut table = if numbered {
        output::table(["#", "RUN", "PUPPET", "JOB", "COUNT"])
    } else {
        output::table(["RUN", "PUPPET", "JOB", "COUNT"])
    };
    for (place, run) in runs.iter().enumerate() {
        let mut row = Vec::with_capacity(5);
        if numbered {
            row.push(output::cell(place + 1));
        }
        row.extend([
            output::cell(&run.run_id),
            output::cell(&run.puppet),
            output::cell(&run.job_id),
            output::cell(run.count),
        ]);
        table.add_row(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_numbered_in_order() {
        let run = |id: &str, count| ResourceHolderView {
            run_id: id.into(),
            puppet: "web-1".into(),
            job_id: "job-1".into(),
            count,
        };
        let text = runs_table(&[run("run-b", 1), run("run-a", 2)], true).to_string();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(
            lines[0].starts_with('#') && lines[0].contains("COUNT"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("1") && lines[1].contains("run-b"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("2") && lines[2].contains("run-a"),
            "{text}"
        );
        let text = runs_table(&[run("run-a", 2)], false).to_string();
        assert!(text.trim_start().starts_with("RUN"), "{text}");
        assert!(
            text.contains("job-1") && text.trim_end().ends_with('2'),
            "{text}"
        );
    }
}
