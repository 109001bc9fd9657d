//! The installer's errors: `ChainError` (the text-level edits) and
//! `Error` (each one that concerns a file names it), and its `Result`.

use std::io;
use std::path::{Path, PathBuf};

#[cfg(doc)]
use super::{chain, unchain};

/// Errors of the text-level edits ([`chain`], [`unchain`]).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The file is not JSON.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The document is not an object.
    #[error("the top level is not a JSON object")]
    NotAnObject,
    /// A single-plugin configuration.
    #[error("no \"plugins\" array: a single-plugin config (.conf), not a conflist")]
    NoPlugins,
    /// `plugins` is something else than a list.
    #[error("\"plugins\" is not an array")]
    PluginsNotArray,
    /// The entry to insert is not a plugin object.
    #[error("the plugin entry must be a JSON object with a string \"type\"")]
    BadPlugin,
    /// The scanner and the parser disagree, or the spliced text did not
    /// parse back to the expected document. Never expected; reported
    /// rather than writing a file we are not sure of.
    #[error("internal: {0}")]
    Internal(&'static str),
}

/// The installer's errors; each one that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A conflist could not be edited.
    #[error("{path}: {source}")]
    Conflist {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: ChainError,
    },
    /// The primary configuration is a single-plugin `.conf`.
    #[error(
        "{path} is a single-plugin CNI config, not a .conflist: wg-cni can only be chained into a \
         plugin list. Have the primary CNI write a .conflist, or run wg-cni as a secondary network \
         (WG_CNI_MODE=secondary)"
    )]
    SingleConf {
        /// The file.
        path: PathBuf,
    },
    /// The installer's state file is unreadable.
    #[error("state file {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A setting is invalid.
    #[error("{var}: {msg}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The options contradict each other.
    #[error("invalid options: {0}")]
    Options(String),
}

/// The installer's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(super) fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}
