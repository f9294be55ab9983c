//! Where the connection settings come from: flags win over the environment,
//! which wins over the config file, which wins over the defaults.
//!
//! The environment is passed in as a lookup function rather than read here,
//! so precedence is tested without touching the process environment.

use std::path::{Path, PathBuf};

use geppetto_proto::client::Transport;
use secrecy::SecretString;
use serde::Deserialize;

use crate::cli::{GlobalArgs, TransportArg};
use crate::error::Error;

pub const DEFAULT_SERVER: &str = "https://localhost:7443";

/// The config file. Relative paths in it are relative to its folder. The
/// token, like every token here, is a `SecretString`: `Debug` redacts it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "optional_secret")]
    pub token: Option<SecretString>,
    pub token_file: Option<PathBuf>,
    pub transport: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let mut config: FileConfig = toml::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "invalid config file {}: {}",
                path.display(),
                e.message()
            ))
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        config.ca = config.ca.map(|p| dir.join(p));
        config.token_file = config.token_file.map(|p| dir.join(p));
        Ok(config)
    }
}

/// Reads a secret from the file as a string: secrecy's own `serde` support
/// is a feature the workspace leaves off.
fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

/// Everything needed to talk to the puppeteer.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: String,
    pub ca: Option<PathBuf>,
    pub token: Option<SecretString>,
    pub transport: Transport,
}

/// Reads the config file the flags or the environment name, or the default
/// one if it exists.
pub fn load_file(
    flags: &GlobalArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<FileConfig>, Error> {
    if let Some(path) = flags
        .config
        .clone()
        .or_else(|| env("GEPPETTO_CONFIG").map(PathBuf::from))
    {
        return FileConfig::load(&path).map(Some);
    }
    match default_config_path(env) {
        Some(path) if path.exists() => FileConfig::load(&path).map(Some),
        _ => Ok(None),
    }
}

fn default_config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("geppetto").join("config.toml"))
}

/// Merges flags, environment and file, in that order of precedence.
pub fn resolve(
    flags: &GlobalArgs,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<FileConfig>,
) -> Result<Settings, Error> {
    let file = file.unwrap_or_default();
    let server = flags
        .server
        .clone()
        .or_else(|| env("GEPPETTO_SERVER"))
        .or(file.server)
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let ca = flags
        .ca
        .clone()
        .or_else(|| env("GEPPETTO_CA").map(PathBuf::from))
        .or(file.ca);

    // A token and a token file from the same level: the flags cannot hold
    // both (clap refuses), elsewhere the token itself wins.
    let token = match (&flags.token, &flags.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(path)) => Some(read_token_file(path)?),
        (None, None) => match (env("GEPPETTO_TOKEN"), env("GEPPETTO_TOKEN_FILE")) {
            (Some(token), _) => Some(SecretString::from(token)),
            (None, Some(path)) => Some(read_token_file(Path::new(&path))?),
            (None, None) => match (file.token, file.token_file) {
                (Some(token), _) => Some(token),
                (None, Some(path)) => Some(read_token_file(&path)?),
                (None, None) => None,
            },
        },
    };

    let transport = match flags.transport {
        Some(TransportArg::Grpc) => Transport::Grpc,
        Some(TransportArg::GrpcWeb) => Transport::GrpcWeb,
        None => match env("GEPPETTO_TRANSPORT").or(file.transport) {
            Some(name) => name.parse().map_err(Error::Config)?,
            None => Transport::Grpc,
        },
    };
    Ok(Settings {
        server,
        ca,
        token,
        transport,
    })
}

fn read_token_file(path: &Path) -> Result<SecretString, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read token file {}: {e}", path.display())))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Config(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(token.into())
}

/// The process environment, with empty variables counted as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn token(s: &Settings) -> Option<&str> {
        s.token.as_ref().map(ExposeSecret::expose_secret)
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn defaults_without_anything() {
        let s = resolve(&GlobalArgs::default(), &env_of(&[]), None).unwrap();
        assert_eq!(s.server, DEFAULT_SERVER);
        assert_eq!(s.ca, None);
        assert_eq!(token(&s), None);
        assert_eq!(s.transport, Transport::Grpc);
    }

    #[test]
    fn flags_win_over_env_which_wins_over_file() {
        let (dir, path) = file_with(
            "server = \"https://file:1\"\nca = \"ca.pem\"\ntoken = \"file-token\"\ntransport = \"grpc-web\"\n",
        );
        let env = env_of(&[
            ("GEPPETTO_SERVER", "https://env:2"),
            ("GEPPETTO_TOKEN", "env-token"),
        ]);
        let file = || Some(FileConfig::load(&path).unwrap());

        // File only where neither flag nor env says anything.
        let s = resolve(&GlobalArgs::default(), &env, file()).unwrap();
        assert_eq!(s.server, "https://env:2");
        assert_eq!(token(&s), Some("env-token"));
        assert_eq!(s.ca, Some(dir.path().join("ca.pem")));
        assert_eq!(s.transport, Transport::GrpcWeb);

        // Flags over both.
        let flags = GlobalArgs {
            server: Some("https://flag:3".into()),
            token: Some("flag-token".into()),
            ca: Some("/flag/ca.pem".into()),
            transport: Some(TransportArg::Grpc),
            ..GlobalArgs::default()
        };
        let s = resolve(&flags, &env, file()).unwrap();
        assert_eq!(s.server, "https://flag:3");
        assert_eq!(token(&s), Some("flag-token"));
        assert_eq!(s.ca, Some(PathBuf::from("/flag/ca.pem")));
        assert_eq!(s.transport, Transport::Grpc);

        // File over defaults.
        let s = resolve(&GlobalArgs::default(), &env_of(&[]), file()).unwrap();
        assert_eq!(s.server, "https://file:1");
        assert_eq!(token(&s), Some("file-token"));
    }

    #[test]
    fn token_files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let flags = GlobalArgs {
            token_file: Some(path.clone()),
            ..GlobalArgs::default()
        };
        let env = env_of(&[("GEPPETTO_TOKEN", "env-token")]);
        let s = resolve(&flags, &env, None).unwrap();
        assert_eq!(token(&s), Some("s3cret"));

        let env = env_of(&[("GEPPETTO_TOKEN_FILE", path.to_str().unwrap())]);
        let s = resolve(&GlobalArgs::default(), &env, None).unwrap();
        assert_eq!(token(&s), Some("s3cret"));

        let missing = GlobalArgs {
            token_file: Some(dir.path().join("nope")),
            ..GlobalArgs::default()
        };
        let err = resolve(&missing, &env_of(&[]), None).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read token file"),
            "{err}"
        );
    }

    #[test]
    fn config_file_is_found_and_checked() {
        let (dir, path) = file_with("server = \"https://file:1\"\n");
        let flags = GlobalArgs::default();
        // The default path, under XDG_CONFIG_HOME, is used only if it exists.
        let xdg = dir.path().to_str().unwrap();
        assert!(
            load_file(&flags, &env_of(&[("XDG_CONFIG_HOME", xdg)]))
                .unwrap()
                .is_none()
        );
        std::fs::create_dir(dir.path().join("geppetto")).unwrap();
        std::fs::copy(&path, dir.path().join("geppetto/config.toml")).unwrap();
        let found = load_file(&flags, &env_of(&[("XDG_CONFIG_HOME", xdg)])).unwrap();
        assert_eq!(found.unwrap().server.as_deref(), Some("https://file:1"));

        // A named file must exist; unknown keys are refused.
        let named = GlobalArgs {
            config: Some(dir.path().join("missing.toml")),
            ..GlobalArgs::default()
        };
        assert!(load_file(&named, &env_of(&[])).is_err());
        let (_dir, bad) = file_with("sever = \"x\"\n");
        let err = FileConfig::load(&bad).unwrap_err().to_string();
        assert!(err.contains("unknown field `sever`"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let flags = GlobalArgs {
            token: Some("s3cret".into()),
            ..GlobalArgs::default()
        };
        let s = resolve(&flags, &env_of(&[]), None).unwrap();
        let shown = format!("{flags:?}{s:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("REDACTED"),
            "{shown}"
        );
        let (_dir, path) = file_with("token = \"s3cret-file\"\n");
        let file = FileConfig::load(&path).unwrap();
        assert_eq!(
            file.token.as_ref().map(ExposeSecret::expose_secret),
            Some("s3cret-file")
        );
        assert!(!format!("{file:?}").contains("s3cret"));
    }
}
