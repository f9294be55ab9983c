//! TLS to the database: with `sslmode=require` the store speaks TLS only,
//! and checks the server's certificate against the CA it is given; a
//! certificate from another CA is refused.
//!
//! A file of its own: it turns TLS on in the test process's PostgreSQL,
//! which the other tests of a file connect to without a CA.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use puppeteer::store::Store;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A CA, and a certificate for `localhost`/`127.0.0.1` it signed (PEM).
fn ca_and_cert() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Writes a file the server (its own user) may read, and only it.
fn server_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    let owner = std::fs::metadata(dir).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path.display().to_string()
}

#[test]
fn the_store_speaks_tls_to_the_database_and_checks_its_certificate() {
    let Some(pg) = geppetto_test_support::postgres::server() else {
        return;
    };
    let (ca, cert, key) = ca_and_cert();
    let dir = pg.directory();
    let cert_file = server_file(dir, "server.crt", &cert);
    let key_file = server_file(dir, "server.key", &key);
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{cert_file}'"),
        format!("ALTER SYSTEM SET ssl_key_file = '{key_file}'"),
        "ALTER SYSTEM SET ssl = on".to_string(),
        "SELECT pg_reload_conf()".to_string(),
    ] {
        pg.psql("postgres", &sql).unwrap();
    }
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let url = format!("{}?sslmode=require", pg.fresh_database());

    // The reload takes effect in a moment.
    let store = geppetto_test_support::block_until(
        "the database speaks TLS",
        std::time::Duration::from_secs(20),
        || Store::open_postgres_with(&url, None, Some(&ca_file)).ok(),
    );
    store
        .touch_puppets(&[], puppeteer::domain::Millis(0))
        .unwrap();
    assert!(store.describe().starts_with("PostgreSQL 127.0.0.1:"));

    // Another CA's certificate: refused, and said so.
    let (other_ca, _, _) = ca_and_cert();
    let other = files.path().join("other.pem");
    std::fs::write(&other, &other_ca).unwrap();
    let refused = Store::open_postgres_with(&url, None, Some(&other)).unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );
}
