//! `geppetto users ...` and `geppetto whoami`

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{Format, RoleArg, UsersCommand};
use crate::error::Error;
use crate::output;
use crate::views::{UserView, WhoAmIView};

impl From<RoleArg> for pb::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Admin => pb::Role::Admin,
            RoleArg::Operator => pb::Role::Operator,
            RoleArg::Viewer => pb::Role::Viewer,
        }
    }
}

pub async fn run(api: &Api, command: UsersCommand, format: Format) -> Result<(), Error> {
    match command {
        UsersCommand::Add { name, role } => {
            let req = pb::AddUserRequest {
                name,
                role: pb::Role::from(role) as i32,
            };
            let user = api.call(api.users().add_user(request(req))).await?;
            if format == Format::Table {
                eprintln!(
                    "added user {}; give them a token with `geppetto tokens create --user {}`",
                    user.name, user.name
                );
            }
            print_one(&user, format)
        }
        UsersCommand::List => {
            let req = pb::ListUsersRequest {};
            let mut list = api.call(api.users().list_users(request(req))).await?;
            list.users.sort_by(|a, b| a.name.cmp(&b.name));
            print_list(&list.users, format)
        }
        UsersCommand::SetRole { name, role } => {
            let req = pb::SetUserRoleRequest {
                name,
                role: pb::Role::from(role) as i32,
            };
            let user = api.call(api.users().set_user_role(request(req))).await?;
            print_one(&user, format)
        }
        UsersCommand::Remove { name } => {
            let req = pb::RemoveUserRequest { name: name.clone() };
            let removed = api.call(api.users().remove_user(request(req))).await?;
            match format {
                Format::Json => output::print_json(&serde_json::json!({
                    "name": name,
                    "revoked_tokens": removed.revoked_tokens,
                })),
                Format::Table => {
                    eprintln!("{}", removed_message(&name, removed.revoked_tokens));
                    Ok(())
                }
            }
        }
    }
}

fn removed_message(name: &str, revoked_tokens: u32) -> String {
    match revoked_tokens {
        1 => format!("removed user {name}; revoked 1 token"),
        n => format!("removed user {name}; revoked {n} tokens"),
    }
}

/// `geppetto whoami`
pub async fn whoami(api: &Api, format: Format) -> Result<(), Error> {
    let me = api
        .call(api.users().who_am_i(request(pb::WhoAmIRequest {})))
        .await?;
    let view = WhoAmIView::from(&me);
    if format == Format::Json {
        return output::print_json(&view);
    }
    output::print_table(&output::fields(vec![
        ("user", view.user),
        ("role", view.role),
        ("token", or_dash(&view.token_id)),
    ]))
}

fn print_list(users: &[pb::User], format: Format) -> Result<(), Error> {
    let views: Vec<_> = users.iter().map(UserView::from).collect();
    if format == Format::Json {
        return output::print_json(&views);
    }
    let mut table = output::table(["NAME", "ROLE", "TOKENS", "CREATED"]);
    for (view, user) in views.iter().zip(users) {
        table.add_row(vec![
            output::cell(&view.name),
            output::cell(&view.role),
            output::cell(view.active_tokens),
            output::cell(output::when(user.created_at.as_ref())),
        ]);
    }
    output::print_table(&table)
}

fn print_one(user: &pb::User, format: Format) -> Result<(), Error> {
    let view = UserView::from(user);
    if format == Format::Json {
        return output::print_json(&view);
    }
    output::print_table(&output::fields(vec![
        ("name", view.name),
        ("role", view.role),
        ("active tokens", view.active_tokens.to_string()),
        ("created", output::when(user.created_at.as_ref())),
    ]))
}

fn or_dash(s: &str) -> String {
    super::puppets::or_dash(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_the_api() {
        assert_eq!(pb::Role::from(RoleArg::Admin), pb::Role::Admin);
        assert_eq!(pb::Role::from(RoleArg::Operator), pb::Role::Operator);
        assert_eq!(pb::Role::from(RoleArg::Viewer), pb::Role::Viewer);
    }

    #[test]
    fn removal_counts_tokens() {
        assert_eq!(
            removed_message("bob", 0),
            "removed user bob; revoked 0 tokens"
        );
        assert_eq!(
            removed_message("bob", 1),
            "removed user bob; revoked 1 token"
        );
        assert_eq!(
            removed_message("bob", 3),
            "removed user bob; revoked 3 tokens"
        );
    }
}
