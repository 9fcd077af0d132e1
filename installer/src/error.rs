//! The installer's errors.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: not valid TOML: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml_edit::TomlError,
    },
    #[error(
        "{path}: no `version` key: a version 1 config (containerd < 1.5 format) is not supported; \
         convert it with `containerd config migrate` first"
    )]
    NoVersion { path: PathBuf },
    #[error("{path}: config version {version} is not supported (2: containerd 1.6/1.7, 3: containerd 2.x)")]
    UnsupportedVersion { path: PathBuf, version: i64 },
    #[error("{path}: `{key}` is not a table (an inline table or a value); edit it by hand")]
    NotATable { path: PathBuf, key: String },
    #[error("{path}: cannot tell the config version of a k3s template from its name (want config.toml.tmpl or config-v3.toml.tmpl)")]
    TemplateVersion { path: PathBuf },
    #[error("{path}: the ums block is opened but not closed (`{marker}` missing); fix it by hand")]
    BrokenBlock { path: PathBuf, marker: &'static str },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path} exists and is not ours (not a link into {ours}); left as it is")]
    Foreign { path: PathBuf, ours: PathBuf },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
