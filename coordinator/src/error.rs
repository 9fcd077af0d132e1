//! Typed errors of the coordinator library. Each maps to an HTTP status so that the API answers
//! with a clear JSON error (`{"error": "..."}`) and the right class (4xx: the request or the
//! systems' state; 5xx: a dependency failed).

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    /// Malformed input: bad JSON, a bad container reference, a bad URL.
    #[error("{0}")]
    BadRequest(String),
    /// No bearer token on an endpoint that needs one.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A bearer token that is not the one this coordinator expects.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// An unknown namespace, container or migration.
    #[error("{0}")]
    NotFound(String),
    /// The request collides with the current state: a migration of the same container in
    /// progress, a container that already exists, a task that is not running.
    #[error("{0}")]
    Conflict(String),
    /// A precondition on the other system is not met, e.g. the image is not present there.
    #[error("{0}")]
    Precondition(String),
    /// The container cannot be migrated by the container-level approach (wrong runtime, a pod
    /// sandbox, a container joining another container's namespaces, a terminal).
    #[error("{0}")]
    Unsupported(String),
    /// containerd refused or failed a call.
    #[error("containerd {op}: {message} ({code:?})")]
    Containerd {
        op: String,
        code: containerd_client::tonic::Code,
        message: String,
    },
    /// The shim's migration API failed.
    #[error("shim {op}: {message}")]
    Shim { op: String, message: String },
    /// The peer coordinator failed or answered with an error.
    #[error("peer coordinator {url}: {message}")]
    Peer {
        url: String,
        /// The HTTP status the peer answered with, if it answered.
        status: Option<u16>,
        message: String,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// A migration that ran and failed (as its client learns it).
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::Precondition(_) => 412,
            Error::Unsupported(_) => 422,
            // A peer's 4xx is passed on as is: the caller asked for something the peer refuses.
            // Not its 401/403: those say that this coordinator's token is wrong for the peer.
            Error::Peer {
                status: Some(s), ..
            } if (400..500).contains(s) && *s != 401 && *s != 403 => *s,
            Error::Containerd { code, .. } => match code {
                containerd_client::tonic::Code::NotFound => 404,
                containerd_client::tonic::Code::AlreadyExists => 409,
                containerd_client::tonic::Code::FailedPrecondition => 412,
                containerd_client::tonic::Code::InvalidArgument => 400,
                _ => 502,
            },
            Error::Shim { .. } | Error::Peer { .. } => 502,
            Error::Timeout(_) => 504,
            Error::Io { .. } | Error::Internal(_) | Error::Failed(_) => 500,
        }
    }

    /// A short machine-readable kind, sent alongside the message.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Precondition(_) => "precondition_failed",
            Error::Unsupported(_) => "unsupported",
            Error::Containerd { .. } => "containerd",
            Error::Shim { .. } => "shim",
            Error::Peer { .. } => "peer",
            Error::Timeout(_) => "timeout",
            Error::Io { .. } => "io",
            Error::Internal(_) => "internal",
            Error::Failed(_) => "migration_failed",
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn containerd(op: impl Into<String>, status: containerd_client::tonic::Status) -> Error {
        Error::Containerd {
            op: op.into(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    pub fn shim(op: impl Into<String>, err: ttrpc::Error) -> Error {
        let message = match err {
            ttrpc::Error::RpcStatus(s) => {
                if s.message().is_empty() {
                    format!("{:?}", s.code())
                } else {
                    s.message().to_string()
                }
            }
            other => other.to_string(),
        };
        Error::Shim {
            op: op.into(),
            message,
        }
    }

    /// Whether this is containerd's NotFound.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::NotFound(_)
                | Error::Containerd {
                    code: containerd_client::tonic::Code::NotFound,
                    ..
                }
        )
    }
}

/// The JSON body of an error answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub kind: String,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        ErrorBody {
            error: e.to_string(),
            kind: e.kind().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Error::BadRequest("x".into()).http_status(), 400);
        assert_eq!(Error::NotFound("x".into()).http_status(), 404);
        assert_eq!(Error::Conflict("x".into()).http_status(), 409);
        assert_eq!(Error::Precondition("x".into()).http_status(), 412);
        let peer = Error::Peer {
            url: "http://b".into(),
            status: Some(412),
            message: "image X not present on system b".into(),
        };
        assert_eq!(peer.http_status(), 412);
        let peer = Error::Peer {
            url: "http://b".into(),
            status: Some(401),
            message: "bad token".into(),
        };
        assert_eq!(peer.http_status(), 502);
        assert_eq!(Error::Forbidden("x".into()).http_status(), 403);
        let peer = Error::Peer {
            url: "http://b".into(),
            status: Some(403),
            message: "wrong token".into(),
        };
        assert_eq!(peer.http_status(), 502);
        let nf = Error::Containerd {
            op: "get".into(),
            code: containerd_client::tonic::Code::NotFound,
            message: "nope".into(),
        };
        assert!(nf.is_not_found());
        assert_eq!(nf.http_status(), 404);
    }
}
