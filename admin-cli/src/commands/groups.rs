//! `geppetto groups ...`

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{CreateGroupArgs, Format, GroupsCommand};
use crate::error::Error;
use crate::output;
use crate::views::{GroupShowView, GroupView};

pub async fn run(api: &Api, command: GroupsCommand, format: Format) -> Result<(), Error> {
    match command {
        GroupsCommand::Create(args) => {
            let group = api
                .call(api.groups().create_group(request(create_request(args))))
                .await?;
            let view = GroupView::from(&group);
            match format {
                Format::Json => output::print_json(&view),
                Format::Table => {
                    eprintln!("created group {}: {}", view.name, view.members_line());
                    Ok(())
                }
            }
        }
        GroupsCommand::List => {
            let req = pb::ListGroupsRequest {};
            let mut list = api.call(api.groups().list_groups(request(req))).await?;
            list.groups.sort_by(|a, b| a.name.cmp(&b.name));
            print_list(&list.groups, format)
        }
        GroupsCommand::Show { name } => {
            let req = pb::GetGroupRequest { name };
            let group = api.call(api.groups().get_group(request(req))).await?;
            print_one(&group, format)
        }
        GroupsCommand::Remove { name } => {
            let req = pb::GetGroupRequest { name: name.clone() };
            api.call(api.groups().remove_group(request(req))).await?;
            eprintln!("removed group {name}");
            Ok(())
        }
    }
}

/// The request of `groups create`: clap lets through exactly one of
/// `--selector` and `--puppet`.
fn create_request(args: CreateGroupArgs) -> pb::Group {
    let members = match args.selector {
        Some(selector) => pb::group::Members::Selector(selector),
        None => pb::group::Members::Puppets(pb::PuppetNames {
            names: args.puppets,
        }),
    };
    pb::Group {
        name: args.name,
        members: Some(members),
        description: args.description.unwrap_or_default(),
    }
}

fn list_table(views: &[GroupView]) -> comfy_table::Table {
    let mut table = output::table(["NAME", "MEMBERS", "DESCRIPTION"]);
    for view in views {
        table.add_row(vec![
            output::cell(&view.name),
            output::cell(view.members_line()),
            output::cell(if view.description.is_empty() {
                "-"
            } else {
                &view.description
            }),
        ]);
    }
    table
}

fn print_list(groups: &[pb::Group], format: Format) -> Result<(), Error> {
    let views: Vec<_> = groups.iter().map(GroupView::from).collect();
    if format == Format::Json {
        return output::print_json(&views);
    }
    output::print_table(&list_table(&views))
}

fn show_fields(view: &GroupShowView) -> comfy_table::Table {
    let group = &view.group;
    let mut rows = vec![("name", group.name.clone())];
    match &group.selector {
        Some(_) => rows.push(("selector", group.members_line())),
        None => rows.push(("puppets", group.members_line())),
    }
    if !group.description.is_empty() {
        rows.push(("description", group.description.clone()));
    }
    rows.push((
        "members now",
        if view.current_members.is_empty() {
            "none".into()
        } else {
            view.current_members.len().to_string()
        },
    ));
    output::fields(rows)
}

fn print_one(group: &pb::GroupView, format: Format) -> Result<(), Error> {
    let view = GroupShowView::from(group);
    if format == Format::Json {
        return output::print_json(&view);
    }
    output::print_table(&show_fields(&view))?;
    if !view.current_members.is_empty() {
        output::print_section("current members:")?;
        let mut table = output::table(["PUPPET"]);
        for name in &view.current_members {
            table.add_row(vec![output::cell(name)]);
        }
        output::print_table(&table)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        selector: Option<&str>,
        puppets: &[&str],
        description: Option<&str>,
    ) -> CreateGroupArgs {
        CreateGroupArgs {
            name: "g".into(),
            selector: selector.map(Into::into),
            puppets: puppets.iter().map(|p| p.to_string()).collect(),
            description: description.map(Into::into),
        }
    }

    #[test]
    fn create_request_carries_the_members() {
        let req = create_request(args(Some("role in (web,proxy)"), &[], Some("front")));
        assert_eq!(
            req,
            pb::Group {
                name: "g".into(),
                members: Some(pb::group::Members::Selector("role in (web,proxy)".into())),
                description: "front".into(),
            }
        );
        let req = create_request(args(None, &["db-1", "db-2"], None));
        assert_eq!(
            req.members,
            Some(pb::group::Members::Puppets(pb::PuppetNames {
                names: vec!["db-1".into(), "db-2".into()],
            }))
        );
        assert_eq!(req.description, "");
    }

    #[test]
    fn tables_show_members_and_description() {
        let webs = GroupView {
            name: "webs".into(),
            selector: Some("role=web".into()),
            puppets: vec![],
            description: "front ends".into(),
        };
        let dbs = GroupView {
            name: "dbs".into(),
            selector: None,
            puppets: vec!["db-1".into(), "db-2".into()],
            description: String::new(),
        };
        let text = list_table(&[webs, dbs]).to_string();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("MEMBERS"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("webs") && lines[1].contains("role=web"),
            "{text}"
        );
        assert!(lines[1].contains("front ends"), "{text}");
        assert!(
            lines[2].starts_with("dbs") && lines[2].contains("db-1,db-2"),
            "{text}"
        );

        let shown = GroupShowView {
            group: GroupView {
                name: "dbs".into(),
                selector: None,
                puppets: vec!["db-1".into(), "db-2".into()],
                description: String::new(),
            },
            current_members: vec!["db-1".into()],
        };
        let text = show_fields(&shown).to_string();
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("puppets:") && l.contains("db-1,db-2")),
            "{text}"
        );
        assert!(!text.contains("description:"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("members now:") && l.contains('1')),
            "{text}"
        );
    }
}
