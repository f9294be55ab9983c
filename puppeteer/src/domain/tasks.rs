//! Tasks and what they run: the run spec, its program and its bounds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Invalid, Millis, ResourceNeed, shown};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub spec: RunSpec,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default)]
    pub resources: Vec<ResourceNeed>,
    /// New attempts after lost, interrupted or timed out.
    #[serde(default)]
    pub retries: u32,
    /// Selector of the puppets the task is valid for; empty: any.
    #[serde(default)]
    pub requires: String,
}

/// The most attempts a task may ask for.
pub const MAX_RETRIES: u32 = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    Script {
        body: String,
        interpreter: Vec<String>,
    },
    Argv {
        args: Vec<String>,
    },
    /// The puppet replaces itself with `version` (see `releases` and the
    /// puppet's `upgrade` module); the spec's artifacts are the release's
    /// binaries, one per platform.
    Upgrade {
        version: String,
        /// How long the new binary has to prove itself; `None`: [`DEFAULT_UPGRADE_DEADLINE`].
        #[serde(default)]
        deadline_ms: Option<u64>,
    },
}

/// How long a new puppet binary has to prove itself, before and after the swap.
pub const DEFAULT_UPGRADE_DEADLINE: Duration = Duration::from_secs(120);
pub const MIN_UPGRADE_DEADLINE: Duration = Duration::from_secs(5);
pub const MAX_UPGRADE_DEADLINE: Duration = Duration::from_secs(3600);

pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;

/// Bounds on a run spec's parts besides its script (which is at most
/// [`MAX_SCRIPT_BYTES`], as argv is in all): far above what tasks use, and
/// what a stored task (and each of its versions) may cost.
pub struct SpecLimits;

impl SpecLimits {
    pub const ARGS: usize = 4096;
    pub const INTERPRETER_ARGS: usize = 16;
    pub const INTERPRETER_BYTES: usize = 4096;
    pub const ENV_VARS: usize = 256;
    pub const ENV_NAME_BYTES: usize = 256;
    pub const ENV_VALUE_BYTES: usize = 32 * 1024;
    pub const ENV_BYTES: usize = 256 * 1024;
    pub const WORKDIR_BYTES: usize = 4096;
    pub const ARTIFACTS: usize = 64;
}
/// How long after its start a run that expects a reboot may take to come
/// back, unless its task says otherwise (the puppet applies the same default).
pub const DEFAULT_REBOOT_WINDOW: Duration = Duration::from_secs(30 * 60);
pub const MAX_REBOOT_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub program: Program,
    pub timeout_ms: u64,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// Artifacts fetched before the run, pinned by content.
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
    /// The task ends by rebooting the machine (see `Outcome::Rebooted`).
    #[serde(default)]
    pub expect_reboot: bool,
    /// How long after the start the puppet may come back from the reboot.
    #[serde(default)]
    pub reboot_window_ms: Option<u64>,
}

/// An artifact as a task version uses it: pinned by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: u64,
    /// The environment variable holding the cached file's path.
    pub env: String,
}

impl RunSpec {
    /// Checks what the api layer could not check field by field.
    /// The bounds on a spec's parts (see [`SpecLimits`]), before anything
    /// is stored: an error names the part and the limit.
    fn check_sizes(&self) -> Result<(), Invalid> {
        let over = |what: &str, limit: usize, found: usize| {
            Err(Invalid(format!(
                "{what} is at most {limit}, this one has {found}"
            )))
        };
        let total =
            |items: &mut dyn Iterator<Item = &String>| items.map(String::len).sum::<usize>();
        match &self.program {
            Program::Script { interpreter, .. } => {
                if interpreter.len() > SpecLimits::INTERPRETER_ARGS {
                    return over(
                        "the interpreter's argument count",
                        SpecLimits::INTERPRETER_ARGS,
                        interpreter.len(),
                    );
                }
                let bytes = total(&mut interpreter.iter());
                if bytes > SpecLimits::INTERPRETER_BYTES {
                    return over(
                        "the interpreter's size in bytes",
                        SpecLimits::INTERPRETER_BYTES,
                        bytes,
                    );
                }
            }
            Program::Argv { args } => {
                if args.len() > SpecLimits::ARGS {
                    return over("argv's argument count", SpecLimits::ARGS, args.len());
                }
                let bytes = total(&mut args.iter());
                if bytes > MAX_SCRIPT_BYTES {
                    return over("argv's size in bytes", MAX_SCRIPT_BYTES, bytes);
                }
            }
            Program::Upgrade { version, .. } => {
                if version.len() > crate::releases::MAX_VERSION_BYTES {
                    return over(
                        "a version's size in bytes",
                        crate::releases::MAX_VERSION_BYTES,
                        version.len(),
                    );
                }
            }
        }
        if self.env.len() > SpecLimits::ENV_VARS {
            return over(
                "the environment's variable count",
                SpecLimits::ENV_VARS,
                self.env.len(),
            );
        }
        if let Some(k) = self
            .env
            .keys()
            .find(|k| k.len() > SpecLimits::ENV_NAME_BYTES)
        {
            return over(
                "an environment variable's name in bytes",
                SpecLimits::ENV_NAME_BYTES,
                k.len(),
            );
        }
        if let Some((k, v)) = self
            .env
            .iter()
            .find(|(_, v)| v.len() > SpecLimits::ENV_VALUE_BYTES)
        {
            return over(
                &format!("environment variable {}'s value in bytes", shown(k)),
                SpecLimits::ENV_VALUE_BYTES,
                v.len(),
            );
        }
        let bytes = total(&mut self.env.keys().chain(self.env.values()));
        if bytes > SpecLimits::ENV_BYTES {
            return over(
                "the environment's size in bytes",
                SpecLimits::ENV_BYTES,
                bytes,
            );
        }
        if self.workdir.len() > SpecLimits::WORKDIR_BYTES {
            return over(
                "workdir's size in bytes",
                SpecLimits::WORKDIR_BYTES,
                self.workdir.len(),
            );
        }
        if self.artifacts.len() > SpecLimits::ARTIFACTS {
            return over(
                "the count of artifacts",
                SpecLimits::ARTIFACTS,
                self.artifacts.len(),
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        match &self.program {
            Program::Script { body, interpreter } => {
                if body.trim().is_empty() {
                    return Err(Invalid("the script is empty".into()));
                }
                if body.len() > MAX_SCRIPT_BYTES {
                    return Err(Invalid(format!(
                        "the script is {} bytes; at most {MAX_SCRIPT_BYTES} are allowed",
                        body.len()
                    )));
                }
                if interpreter.iter().any(|a| a.is_empty() || a.contains('\0')) {
                    return Err(Invalid(
                        "interpreter arguments must be non-empty and without NUL".into(),
                    ));
                }
            }
            Program::Argv { args } => {
                if args.is_empty() || args[0].is_empty() {
                    return Err(Invalid("argv is empty: give at least a program".into()));
                }
                if args.iter().any(|a| a.contains('\0')) {
                    return Err(Invalid("argv elements must not contain NUL".into()));
                }
            }
            Program::Upgrade {
                version,
                deadline_ms,
            } => {
                // Empty: resolved to the served build's before it is stored.
                if !version.is_empty() {
                    crate::releases::check_version(version)?;
                }
                if let Some(deadline) = deadline_ms.map(Duration::from_millis)
                    && !(MIN_UPGRADE_DEADLINE..=MAX_UPGRADE_DEADLINE).contains(&deadline)
                {
                    return Err(Invalid(format!(
                        "an upgrade's deadline {} is out of range: it must be between 5s and 1h",
                        humantime::format_duration(deadline)
                    )));
                }
                if !self.env.is_empty() || !self.workdir.is_empty() || self.expect_reboot {
                    return Err(Invalid(
                        "an upgrade takes no environment, workdir or reboot: the puppet runs nothing but its new binary"
                            .into(),
                    ));
                }
            }
        }
        let timeout = Duration::from_millis(self.timeout_ms);
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
            return Err(Invalid(format!(
                "timeout {} is out of range: it must be between 1s and 7days",
                humantime::format_duration(timeout)
            )));
        }
        self.check_sizes()?;
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Invalid(format!(
                    "environment variable {}: names must be non-empty without '=' or NUL",
                    shown(k)
                )));
            }
        }
        if self.workdir.contains('\0') {
            return Err(Invalid("workdir must not contain NUL".into()));
        }
        if let Some(window) = self.reboot_window_ms.map(Duration::from_millis) {
            if !self.expect_reboot {
                return Err(Invalid(
                    "a reboot window needs expect_reboot (--expect-reboot): this task does not expect a reboot"
                        .into(),
                ));
            }
            if !(MIN_TIMEOUT..=MAX_REBOOT_WINDOW).contains(&window) {
                return Err(Invalid(format!(
                    "reboot window {} is out of range: it must be between 1s and 1day",
                    humantime::format_duration(window)
                )));
            }
        }
        Ok(())
    }

    /// How long a run of this spec may take to come back from the reboot it
    /// expects; `None` when it expects none.
    pub fn reboot_window(&self) -> Option<Duration> {
        self.expect_reboot.then(|| {
            self.reboot_window_ms
                .map_or(DEFAULT_REBOOT_WINDOW, Duration::from_millis)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        let mut spec = RunSpec {
            program: Program::Script {
                body: "true".into(),
                interpreter: vec![],
            },
            timeout_ms: 1000,
            env: Default::default(),
            workdir: String::new(),
            artifacts: Vec::new(),
            expect_reboot: false,
            reboot_window_ms: None,
        };
        assert!(spec.validate().is_ok());
        spec.timeout_ms = MAX_TIMEOUT.as_millis() as u64 + 1;
        assert!(spec.validate().unwrap_err().0.contains("out of range"));
        spec.timeout_ms = 0;
        assert!(spec.validate().is_err());
    }
}
