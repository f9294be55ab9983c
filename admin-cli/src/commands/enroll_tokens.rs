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
    let args_install = args.install_command;
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
            if args_install {
                let ca = match api.ca_file() {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        Error::Config(format!("cannot read the CA file {}: {e}", path.display()))
                    })?),
                    None => None,
                };
                let url = api.url().split(',').next().unwrap_or_default().trim();
                eprintln!(
                    "to install a puppet, run this on the machine (as a user who may sudo); \
                     it asks for the secret above:"
                );
                eprintln!("{}", install_command(url, ca.as_deref()));
            }
            Ok(())
        }
    }
}

/// The one-line install command for the puppeteer at `url`, with its CA
/// (PEM) pinned when one is given (else the system's trust store checks it).
pub fn install_command(url: &str, ca_pem: Option<&[u8]>) -> String {
    use base64::Engine as _;
    let url = url.trim_end_matches('/');
    match ca_pem {
        Some(pem) => {
            let ca = base64::engine::general_purpose::STANDARD.encode(pem);
            format!(
                "sudo HTTPS_PROXY=\"${{HTTPS_PROXY:-}}\" sh -c 'c=$(mktemp) && echo {ca} | base64 -d > \"$c\" && curl -fsS --cacert \"$c\" {url}/install.sh -o \"$c.sh\" && sh \"$c.sh\" --server {url} --ca-file \"$c\"; r=$?; rm -f \"$c\" \"$c.sh\"; exit $r'"
            )
        }
        None => format!(
            "sudo HTTPS_PROXY=\"${{HTTPS_PROXY:-}}\" sh -c 'c=$(mktemp) && curl -fsS {url}/install.sh -o \"$c\" && sh \"$c\" --server {url}; r=$?; rm -f \"$c\"; exit $r'"
        ),
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

#[cfg(test)]
mod install_tests {
    use super::install_command;

    #[test]
    fn the_install_command_pins_the_ca_and_carries_no_token() {
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let command = install_command("https://p.example.org:7443/", Some(pem));
        assert!(
            command.contains("curl -fsS --cacert \"$c\" https://p.example.org:7443/install.sh")
        );
        assert!(command.contains("--server https://p.example.org:7443 --ca-file \"$c\""));
        assert!(!command.contains(" -k") && !command.contains("--insecure"));
        // The CA travels in base64, one word.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        assert!(command.contains(&format!("echo {b64} | base64 -d")));
        let public = install_command("https://p.example.org", None);
        assert!(public.contains("curl -fsS https://p.example.org/install.sh"));
        assert!(!public.contains("--ca-file"));
    }
}
