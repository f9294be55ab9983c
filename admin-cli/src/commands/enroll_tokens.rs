//! `geppetto enroll-tokens ...`

use geppetto_proto::v1 as pb;

use crate::api::{Api, request};
use crate::cli::{CreateEnrollTokenArgs, EnrollTokensCommand, Format};
use crate::error::Error;
use crate::output;
use crate::parse::pairs_to_map;
use crate::views::{CreatedTokenView, EnrollTokenView};

pub async fn run(api: &Api, command: EnrollTokensCommand, format: Format) -> Result<(), Error> {
    match command {
        EnrollTokensCommand::Create(args) => create(api, args, format).await,
        EnrollTokensCommand::List => {
            let req = pb::ListEnrollTokensRequest {};
            let list = api
                .call(api.enroll_tokens().list_enroll_tokens(request(req)))
                .await?;
            print_list(&list.tokens, format)
        }
        EnrollTokensCommand::Revoke { id } => {
            let req = pb::RevokeEnrollTokenRequest { id };
            let token = api
                .call(api.enroll_tokens().revoke_enroll_token(request(req)))
                .await?;
            match format {
                Format::Json => output::print_json(&EnrollTokenView::from(&token)),
                Format::Table => {
                    eprintln!("revoked enroll token {}", token.id);
                    Ok(())
                }
            }
        }
    }
}

async fn create(api: &Api, args: CreateEnrollTokenArgs, format: Format) -> Result<(), Error> {
    let ttl = args
        .expires
        .map(prost_types::Duration::try_from)
        .transpose()
        .map_err(|_| Error::Usage("--expires is too long".into()))?;
    let req = pb::CreateEnrollTokenRequest {
        description: args.description.unwrap_or_default(),
        labels: pairs_to_map("label", args.labels.unwrap_or_default())?
            .into_iter()
            .collect(),
        uses: args.uses,
        ttl,
        auto_approve: args.auto_approve,
    };
    let created = api
        .call(api.enroll_tokens().create_enroll_token(request(req)))
        .await?;
    let token = created.token.unwrap_or_default();
    match format {
        Format::Json => output::print_json(&CreatedTokenView {
            token: EnrollTokenView::from(&token),
            secret: created.secret,
        }),
        Format::Table => {
            // Only the secret on stdout, so `SECRET=$(geppetto enroll-tokens create)`
            // works; the rest is for the operator's eyes.
            let view = EnrollTokenView::from(&token);
            eprintln!(
                "created enroll token {} ({}, {}, {}); its secret, shown only once:",
                view.id,
                uses(&view),
                expiry(&view),
                approval_note(&view)
            );
            println!("{}", created.secret);
            Ok(())
        }
    }
}

fn uses(view: &EnrollTokenView) -> String {
    match view.uses_left {
        None => format!("{} used, no limit", view.used),
        Some(left) => format!("{} used, {left} left", view.used),
    }
}

fn approval_note(view: &EnrollTokenView) -> &'static str {
    if view.auto_approve {
        "puppets are enabled at once"
    } else {
        "puppets wait as pending until `geppetto puppets approve NAME`"
    }
}

fn approval(view: &EnrollTokenView) -> &'static str {
    if view.auto_approve { "auto" } else { "manual" }
}

fn expiry(view: &EnrollTokenView) -> String {
    match &view.expires_at {
        Some(at) => format!("expires {at}"),
        None => "never expires".into(),
    }
}

fn print_list(tokens: &[pb::EnrollToken], format: Format) -> Result<(), Error> {
    let views: Vec<_> = tokens.iter().map(EnrollTokenView::from).collect();
    if format == Format::Json {
        return output::print_json(&views);
    }
    let mut table = output::table([
        "ID",
        "STATUS",
        "USES",
        "EXPIRES",
        "APPROVAL",
        "LABELS",
        "DESCRIPTION",
    ]);
    for (view, token) in views.iter().zip(tokens) {
        table.add_row(vec![
            output::cell(&view.id),
            output::state_cell(&view.status),
            output::cell(uses(view)),
            output::cell(match &token.expires_at {
                Some(_) => output::when(token.expires_at.as_ref()),
                None => "never".into(),
            }),
            output::cell(approval(view)),
            output::cell(output::labels(&view.labels)),
            output::cell(&view.description),
        ]);
    }
    output::print_table(&table)
}
