//! `geppetto tokens ...`: operators' API tokens.

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{CreateTokenArgs, Format, TokensCommand};
use crate::error::Error;
use crate::output;
use crate::views::{ApiTokenView, CreatedApiTokenView};

pub async fn run(api: &Api, command: TokensCommand, format: Format) -> Result<(), Error> {
    match command {
        TokensCommand::Create(args) => create(api, args, format).await,
        TokensCommand::List { user } => {
            let req = pb::ListTokensRequest {
                user: user.unwrap_or_default(),
            };
            let mut list = api.call(api.tokens().list_tokens(request(req))).await?;
            list.tokens.sort_by(|a, b| {
                (&a.user, a.created_at.map(|t| (t.seconds, t.nanos)))
                    .cmp(&(&b.user, b.created_at.map(|t| (t.seconds, t.nanos))))
            });
            print_list(&list.tokens, format)
        }
        TokensCommand::Revoke { id } => {
            let req = pb::RevokeTokenRequest { id };
            let token = api.call(api.tokens().revoke_token(request(req))).await?;
            match format {
                Format::Json => output::print_json(&ApiTokenView::from(&token)),
                Format::Table => {
                    eprintln!("revoked token {} of user {}", token.id, token.user);
                    Ok(())
                }
            }
        }
    }
}

async fn create(api: &Api, args: CreateTokenArgs, format: Format) -> Result<(), Error> {
    let ttl = args
        .expires
        .map(prost_types::Duration::try_from)
        .transpose()
        .map_err(|_| Error::Usage("--expires is too long".into()))?;
    let req = pb::CreateTokenRequest {
        user: args.user.unwrap_or_default(),
        name: args.name.unwrap_or_default(),
        ttl,
    };
    let created = api.call(api.tokens().create_token(request(req))).await?;
    let view = ApiTokenView::from(&created.token.unwrap_or_default());
    match format {
        Format::Json => output::print_json(&CreatedApiTokenView {
            token: view,
            secret: created.secret,
        }),
        Format::Table => {
            // Only the secret on stdout, so `TOKEN=$(geppetto tokens create)`
            // works; the rest is for the operator's eyes.
            eprintln!("{}; its secret, shown only once:", created_message(&view));
            println!("{}", created.secret);
            Ok(())
        }
    }
}

fn created_message(view: &ApiTokenView) -> String {
    let name = if view.name.is_empty() {
        String::new()
    } else {
        format!(" {:?}", view.name)
    };
    let expiry = match &view.expires_at {
        Some(at) => format!("expires {at}"),
        None => "never expires".into(),
    };
    format!(
        "created token {}{name} for user {} ({expiry})",
        view.id, view.user
    )
}

fn print_list(tokens: &[pb::ApiToken], format: Format) -> Result<(), Error> {
    let views: Vec<_> = tokens.iter().map(ApiTokenView::from).collect();
    if format == Format::Json {
        return output::print_json(&views);
    }
    let mut table = output::table(["ID", "USER", "NAME", "STATUS", "CREATED", "EXPIRES"]);
    for (view, token) in views.iter().zip(tokens) {
        table.add_row(vec![
            output::cell(&view.id),
            output::cell(&view.user),
            output::cell(if view.name.is_empty() {
                "-"
            } else {
                &view.name
            }),
            output::state_cell(&view.status),
            output::cell(output::when(token.created_at.as_ref())),
            output::cell(match &token.expires_at {
                Some(_) => output::when(token.expires_at.as_ref()),
                None => "never".into(),
            }),
        ]);
    }
    output::print_table(&table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_message_names_the_token() {
        let token = pb::ApiToken {
            id: "tok-1".into(),
            user: "alice".into(),
            name: "laptop".into(),
            ..Default::default()
        };
        assert_eq!(
            created_message(&ApiTokenView::from(&token)),
            "created token tok-1 \"laptop\" for user alice (never expires)"
        );
        let token = pb::ApiToken {
            name: String::new(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..token
        };
        assert_eq!(
            created_message(&ApiTokenView::from(&token)),
            "created token tok-1 for user alice (expires 2023-11-14T22:13:20Z)"
        );
    }
}
