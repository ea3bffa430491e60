//! The operator's one error type.

use std::time::Duration;

/// Everything that can go wrong while building or applying a ChatGateway's children.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is well-formed for the schema but does not make sense (reported, not retried fast).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A referenced Secret or key does not exist.
    #[error("secret {name:?} has no key {key:?} (or does not exist) in namespace {namespace:?}")]
    SecretRef {
        /// Namespace looked in.
        namespace: String,
        /// Secret name.
        name: String,
        /// Key expected in it.
        key: String,
    },
    /// A referenced Secret key holds a value the gateway would refuse.
    #[error("secret {name:?} key {key:?} in namespace {namespace:?}: {problem}")]
    SecretValue {
        /// Namespace of the Secret.
        namespace: String,
        /// Secret name.
        name: String,
        /// The key.
        key: String,
        /// What is wrong with the value (never the value).
        problem: String,
    },
    /// A child's name is taken by an object this ChatGateway does not own; the operator
    /// never adopts or overwrites it.
    #[error("{kind} {namespace}/{name} exists and is not owned by this ChatGateway ({owner}); the operator does not take it over: delete or rename it")]
    NotOwned {
        /// Kind of the object.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Who owns it instead, as far as its metadata says.
        owner: String,
    },
    /// The resource lacks a field the API server always sets (name, namespace, uid).
    #[error("object has no {0}")]
    MissingObjectKey(&'static str),
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Serialising a child failed.
    #[error("serialising: {0}")]
    Serialize(String),
    /// An API call did not answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// Short CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::SecretRef { .. } => "SecretNotFound",
            Error::SecretValue { .. } => "InvalidSecret",
            Error::NotOwned { .. } => "NotOwned",
            Error::MissingObjectKey(_) => "InvalidObject",
            Error::Kube(_) => "ApiError",
            Error::Serialize(_) => "InternalError",
            Error::Timeout(_) => "Timeout",
        }
    }

    /// First retry delay, doubled per consecutive failure: API errors are often
    /// transient; a fixed spec triggers a reconcile by itself, so spec errors wait longer.
    pub fn retry_after(&self) -> Duration {
        match self {
            Error::Kube(_) | Error::Timeout(_) => Duration::from_secs(2),
            Error::SecretRef { .. } | Error::SecretValue { .. } | Error::NotOwned { .. } => {
                Duration::from_secs(10)
            }
            _ => Duration::from_secs(60),
        }
    }
}

/// Result with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
