//! The one error shape of the API, `{"error": {"code", "message"}}`, and the status each
//! engine error maps to (`docs/api.md` lists them).

use axum::Json;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use omendb_core::error::{Error, ErrorKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong: a stable code for programs and a sentence for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`bad_input`, `unknown_table`, `not_found`,
    /// `method_not_allowed`, `table_exists`, `too_large`, `unsupported_media_type`, `overloaded`,
    /// `conflict`, `corrupt`, `internal`, `not_ready`, `timeout`, `unavailable`; on the admin listener,
    /// `profiling` while a profile is being taken).
    pub code: String,
    /// A description for people; never a stack trace.
    pub message: String,
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable code.
    pub code: &'static str,
    /// The description.
    pub message: String,
}

impl ApiError {
    /// An error of `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is wrong.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_input", message)
    }

    /// 404: no such key (or route).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413: the request is larger than a limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 429: a limit on concurrent work is reached; retry later.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", message)
    }

    /// 503: the database is not open yet, or the server is shutting down.
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message)
    }

    /// 503: the request ran longer than the configured timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", message)
    }

    /// 500: a bug; the message says so without internals.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let (status, code) = match &err {
            Error::UnknownTable(_) => (StatusCode::NOT_FOUND, "unknown_table"),
            Error::TableExists(_) => (StatusCode::CONFLICT, "table_exists"),
            Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            Error::Poisoned(_) | Error::Closed => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => match err.kind() {
                ErrorKind::BadInput => (StatusCode::BAD_REQUEST, "bad_input"),
                ErrorKind::Corrupt => (StatusCode::INTERNAL_SERVER_ERROR, "corrupt"),
                // A transient store failure or a component that must be reopened: the client
                // may retry, perhaps against another replica.
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            },
        };
        if status.is_server_error() {
            tracing::warn!(%status, code, error = %message, "request failed");
        }
        Self::new(status, code, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::too_large(rejection.body_text());
        }
        if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
            return Self::new(status, "unsupported_media_type", rejection.body_text());
        }
        Self::bad_input(rejection.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::too_large(rejection.body_text());
        }
        Self::bad_input(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_input(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_input(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
