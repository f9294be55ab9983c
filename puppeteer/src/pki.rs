//! First start: a local CA, a server certificate and the first admin token.
//!
//! On an empty data dir the puppeteer needs no preparation. It creates
//! `tls/ca.pem` + `tls/ca.key` (a local CA), `tls/server.pem` +
//! `tls/server.key` signed by it for the configured names, and
//! `admin-token`, the first admin's API token. Private keys and the token are
//! written with mode 0600. On later starts the files are reused; an operator
//! who brings their own certificate points the config at it instead.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::domain::{ApiToken, Millis, Role, User};
use crate::ids::{hash_secret, new_id, new_secret};
use crate::store::Store;

/// Where the TLS material lives.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA file to give to puppets and operators, if known.
    pub ca: Option<PathBuf>,
}

/// What first start created, to tell the operator.
#[derive(Debug, Default)]
pub struct Bootstrap {
    pub created_ca: bool,
    pub created_token: bool,
}

fn year_now() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

/// Writes a file readable by its owner only, atomically (temp + rename).
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<()> {
    write_file(path, contents, 0o600)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Replaces the server certificate in `dir` with a new one for `names`,
/// signed by the existing local CA: clients keep trusting the same CA file,
/// so no puppet needs anything. Takes effect at the next start.
pub fn renew_server_cert(dir: &Path, names: &[String]) -> Result<TlsFiles> {
    if !dir.join("ca.pem").exists() || !dir.join("ca.key").exists() {
        bail!(
            "no local CA in {}: renewal needs the CA the puppeteer generated at its first start",
            dir.display()
        );
    }
    for file in ["server.pem", "server.key"] {
        let path = dir.join(file);
        if path.exists() {
            std::fs::rename(&path, dir.join(format!("{file}.old")))?;
        }
    }
    Ok(ensure_local_tls(dir, names)?.0)
}

/// Creates the local CA and a server certificate in `dir` if absent.
/// [`ensure_local_tls`] for a node of a cluster: the first node's CA and
/// certificate are kept in the shared store and every node writes the same
/// files into its `dir`, so puppets trust whichever node they reach.
/// `names` must therefore name the cluster (its balancer's name, every
/// node's): the first node's names are the ones in the certificate.
pub fn ensure_cluster_tls(dir: &Path, names: &[String], store: &Store) -> Result<(TlsFiles, bool)> {
    let (files, created) = ensure_local_tls(dir, names)?;
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let ours = crate::store::SharedTls {
        ca_cert: read(&ca_pem)?,
        ca_key: if ca_key.exists() {
            read(&ca_key)?
        } else {
            String::new()
        },
        cert: read(&files.cert)?,
        key: read(&files.key)?,
    };
    let kept = store
        .share_tls(&ours)
        .context("cannot share the TLS files through the database")?;
    if kept == ours {
        return Ok((files, created));
    }
    tracing::info!(dir = %dir.display(), "using the cluster's CA and certificate, kept in the database");
    write_file(&ca_pem, kept.ca_cert.as_bytes(), 0o644)?;
    if !kept.ca_key.is_empty() {
        write_secret(&ca_key, kept.ca_key.as_bytes())?;
    }
    write_file(&files.cert, kept.cert.as_bytes(), 0o644)?;
    write_secret(&files.key, kept.key.as_bytes())?;
    Ok((files, false))
}

pub fn ensure_local_tls(dir: &Path, names: &[String]) -> Result<(TlsFiles, bool)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: Some(dir.join("ca.pem")),
    };
    let ca_pem = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    if files.cert.exists() && files.key.exists() && ca_pem.exists() {
        return Ok((files, false));
    }
    if names.is_empty() {
        bail!("no server name to put in the certificate: give at least one with --server-name");
    }
    let year = year_now();
    let issuer = if ca_pem.exists() && ca_key.exists() {
        let key = KeyPair::from_pem(&std::fs::read_to_string(&ca_key)?)
            .context("cannot read the CA key")?;
        Issuer::from_ca_cert_pem(&std::fs::read_to_string(&ca_pem)?, key)
            .context("cannot read the CA certificate")?
    } else {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Geppetto local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
        let cert = params.self_signed(&key)?;
        write_secret(&ca_key, key.serialize_pem().as_bytes())?;
        write_file(&ca_pem, cert.pem().as_bytes(), 0o644)?;
        Issuer::new(params, key)
    };
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())
        .context("invalid server name for the certificate")?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].clone());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    write_secret(&files.key, key.serialize_pem().as_bytes())?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    Ok((files, true))
}

/// Loads a certificate chain and key into a rustls server config that
/// offers both `h2` and `http/1.1`.
pub fn server_tls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("cannot read certificate {}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid certificate {}", files.cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("cannot read private key {}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Creates the first admin (user `admin`, role admin) and an ordinary API
/// token of theirs if the data dir has none.
/// Returns the token when it was created now.
pub fn ensure_admin_token(data_dir: &Path, store: &Store) -> Result<Option<String>> {
    let path = data_dir.join("admin-token");
    if path.exists() {
        return Ok(None);
    }
    let token = new_secret("gpa");
    let now = Millis::now();
    match store.add_user(&User {
        name: "admin".into(),
        role: Role::Admin,
        created_at: now,
    }) {
        Ok(()) | Err(crate::store::StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    store.create_api_token(&ApiToken {
        id: new_id("tok"),
        user: "admin".into(),
        name: "first admin token".into(),
        created_at: now,
        expires_at: None,
        revoked: false,
        secret_hash: hash_secret(&token),
    })?;
    write_secret(&path, format!("{token}\n").as_bytes())?;
    Ok(Some(token))
}
