//! `geppetto artifacts ...`
//!
//! An upload hashes the file here, asks the puppeteer where to start (an
//! upload cut off earlier resumes at the bytes the puppeteer holds durably),
//! sends 1 MiB chunks, and commits: the puppeteer checks the hash and only
//! then publishes the name.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use geppetto_proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::api::{Api, request};
use crate::cli::{ArtifactsCommand, Format};
use crate::error::Error;
use crate::output;
use crate::views::ArtifactView;

/// Bytes per `UploadChunk` (the puppeteer's limit).
const CHUNK: usize = 1024 * 1024;
/// Tries of one chunk on a failing link before giving up (the next run of
/// the command resumes).
const CHUNK_TRIES: u32 = 5;

pub async fn run(api: &Api, command: ArtifactsCommand, format: Format) -> Result<(), Error> {
    match command {
        ArtifactsCommand::Upload { file, name } => {
            let artifact = upload(api, &file, name).await?;
            print_one(&artifact, format)
        }
        ArtifactsCommand::List => {
            let mut list = api
                .call(
                    api.artifacts()
                        .list_artifacts(request(pb::ListArtifactsRequest {})),
                )
                .await?;
            list.artifacts.sort_by(|a, b| a.name.cmp(&b.name));
            print_list(&list.artifacts, format)
        }
        ArtifactsCommand::Show { name } => {
            let req = pb::GetArtifactRequest { name };
            let artifact = api.call(api.artifacts().get_artifact(request(req))).await?;
            print_one(&artifact, format)
        }
        ArtifactsCommand::Remove { name, force } => {
            let req = pb::RemoveArtifactRequest {
                name: name.clone(),
                force,
            };
            api.call(api.artifacts().remove_artifact(request(req)))
                .await?;
            eprintln!("removed artifact {name}");
            Ok(())
        }
    }
}

/// The name an artifact gets from its file when none is given.
fn default_name(file: &Path) -> Result<String, Error> {
    file.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Usage(format!(
                "cannot name an artifact after {}: give --name NAME",
                file.display()
            ))
        })
}

/// The SHA-256 (lowercase hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64), Error> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

pub(crate) async fn upload(
    api: &Api,
    file: &Path,
    name: Option<String>,
) -> Result<pb::Artifact, Error> {
    let name = match name {
        Some(name) => name,
        None => default_name(file)?,
    };
    let path = file.to_path_buf();
    let (sha256, size) = tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(|e| Error::Input(format!("cannot hash the file: {e}")))??;
    let begin = pb::BeginUploadRequest {
        name: name.clone(),
        sha256: sha256.clone(),
        size,
    };
    let status = api
        .call(api.artifacts().begin_upload(request(begin)))
        .await?;
    if status.committed > 0 && status.committed < size {
        eprintln!(
            "resuming the upload of {name} at {} of {}",
            output::bytes(status.committed),
            output::bytes(size)
        );
    }
    let mut reader = std::fs::File::open(file)
        .map_err(|e| Error::Input(format!("cannot read {}: {e}", file.display())))?;
    let mut progress = Progress::new(&name, size, status.committed);
    let mut committed = status.committed;
    while committed < size {
        let n = CHUNK.min((size - committed) as usize);
        let mut data = vec![0u8; n];
        reader.seek(SeekFrom::Start(committed))?;
        reader.read_exact(&mut data).map_err(|e| {
            Error::Input(format!(
                "cannot read {} (did it change during the upload?): {e}",
                file.display()
            ))
        })?;
        let chunk = pb::UploadChunkRequest {
            upload_id: status.upload_id.clone(),
            offset: committed,
            data,
        };
        committed = send_chunk(api, chunk).await?.committed;
        progress.show(committed);
    }
    let commit = pb::CommitUploadRequest {
        upload_id: status.upload_id,
    };
    api.call(api.artifacts().commit_upload(request(commit)))
        .await
}

/// Sends one chunk, again after a failure of the link (the chunk is
/// idempotent), a few times before giving up.
async fn send_chunk(api: &Api, chunk: pb::UploadChunkRequest) -> Result<pb::UploadStatus, Error> {
    let mut delay = Duration::from_secs(1);
    let mut tries = 0;
    loop {
        tries += 1;
        match api
            .call(api.artifacts().upload_chunk(request(chunk.clone())))
            .await
        {
            Ok(status) => return Ok(status),
            Err(e @ (Error::Unreachable { .. } | Error::Timeout { .. })) if tries < CHUNK_TRIES => {
                eprintln!("{e}; retrying in {}s", delay.as_secs());
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e @ (Error::Unreachable { .. } | Error::Timeout { .. })) => {
                return Err(Error::Failed(format!(
                    "{e}; the puppeteer keeps what it received: run the same command again to resume"
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Progress as plain lines on stderr, every tenth of the file.
struct Progress {
    name: String,
    size: u64,
    next_tenth: u64,
}

impl Progress {
    fn new(name: &str, size: u64, from: u64) -> Self {
        let tenth = |b: u64| (b * 10).checked_div(size).unwrap_or(10);
        Progress {
            name: name.to_string(),
            size,
            next_tenth: tenth(from) + 1,
        }
    }

    fn show(&mut self, committed: u64) {
        if self.size < 4 * CHUNK as u64 {
            // Small files are done before a progress line could help.
            return;
        }
        let tenth = committed * 10 / self.size;
        if tenth >= self.next_tenth {
            eprintln!(
                "{}: {} of {} ({}%)",
                self.name,
                output::bytes(committed),
                output::bytes(self.size),
                committed * 100 / self.size
            );
            self.next_tenth = tenth + 1;
        }
    }
}

fn print_list(artifacts: &[pb::Artifact], format: Format) -> Result<(), Error> {
    let views: Vec<_> = artifacts.iter().map(ArtifactView::from).collect();
    if format == Format::Json {
        return output::print_json(&views);
    }
    let mut table = output::table(["NAME", "SIZE", "SHA256", "UPLOADED", "USED BY"]);
    for (a, view) in artifacts.iter().zip(&views) {
        table.add_row(vec![
            output::cell(&view.name),
            output::cell(output::bytes(view.size)),
            output::cell(view.sha256.chars().take(16).collect::<String>()),
            output::cell(output::ago(a.created_at.as_ref())),
            output::cell(if view.used_by.is_empty() {
                "-".to_string()
            } else {
                view.used_by.join(", ")
            }),
        ]);
    }
    output::print_table(&table)
}

fn print_one(artifact: &pb::Artifact, format: Format) -> Result<(), Error> {
    let view = ArtifactView::from(artifact);
    if format == Format::Json {
        return output::print_json(&view);
    }
    output::print_table(&output::fields(vec![
        ("name", view.name.clone()),
        (
            "size",
            format!("{} ({} bytes)", output::bytes(view.size), view.size),
        ),
        ("sha256", view.sha256.clone()),
        ("uploaded", output::when(artifact.created_at.as_ref())),
        ("uploaded by", view.uploaded_by.clone()),
        (
            "used by",
            if view.used_by.is_empty() {
                "-".into()
            } else {
                view.used_by.join(", ")
            },
        ),
    ]))?;
    if !view.copies.is_empty() {
        output::print_section("copies on puppets (the site peer cache):")?;
        let mut table = output::table(["PUPPET", "SITE", "STATE", "FROM", "FETCH", "LAST FAILURE"]);
        for c in &view.copies {
            table.add_row(vec![
                output::cell(&c.puppet),
                output::cell(if c.site.is_empty() { "-" } else { &c.site }),
                output::cell(if c.held { "held" } else { "receiving" }),
                output::cell(if c.source.is_empty() {
                    "the puppeteer".to_string()
                } else {
                    format!("peer {}", c.source)
                }),
                output::cell(if c.held {
                    format!(
                        "{} in {}",
                        output::bytes(c.bytes),
                        humantime::format_duration(std::time::Duration::from_millis(
                            c.took_ms - c.took_ms % 100
                        ))
                    )
                } else {
                    "-".to_string()
                }),
                output::cell(if c.last_failure.is_empty() {
                    "-"
                } else {
                    &c.last_failure
                }),
            ]);
        }
        output::print_table(&table)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_hashed_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("patch.tar.gz");
        std::fs::write(&path, b"abc").unwrap();
        let (sha, size) = hash_file(&path).unwrap();
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
        assert_eq!(default_name(&path).unwrap(), "patch.tar.gz");
        assert!(matches!(
            hash_file(&dir.path().join("missing")),
            Err(Error::Input(_))
        ));
    }
}
