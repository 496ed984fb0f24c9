//! One error type for every API: it maps to an HTTP status with a `{code, message}` body, to
//! Binance's `{code, msg}` under `/api/v3/`, and to a gRPC status.

use std::time::Duration;

/// What went wrong with a request, and what the client can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A parameter is malformed or out of range; `param` names it.
    #[error("{message}")]
    InvalidParameter { param: &'static str, message: String },
    /// A required parameter is missing.
    #[error("missing required parameter '{0}'")]
    MissingParameter(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("too many requests: retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    /// A dependency cannot answer and no cache holds the answer.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidParameter { param, message: message.into() }
    }

    /// The stable machine-readable code of the `{code, message}` body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidParameter { .. } => "invalid_parameter",
            ApiError::MissingParameter(_) => "missing_parameter",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::InvalidParameter { .. } | ApiError::MissingParameter(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::NotFound(_) => 404,
            ApiError::RateLimited { .. } => 429,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// Binance's negative error code for the same failure (its public error list).
    pub fn binance_code(&self) -> i32 {
        match self {
            ApiError::InvalidParameter { param: "symbol", .. } => -1121,
            ApiError::InvalidParameter { param: "interval", .. } => -1120,
            ApiError::InvalidParameter { .. } => -1100,
            ApiError::MissingParameter(_) => -1102,
            ApiError::NotFound(_) => -1121,
            ApiError::Unauthorized(_) => -2015,
            ApiError::RateLimited { .. } => -1003,
            ApiError::Unavailable(_) => -1001,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn to_grpc(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            ApiError::InvalidParameter { .. } | ApiError::MissingParameter(_) => tonic::Status::invalid_argument(message),
            ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::Unauthorized(_) => tonic::Status::unauthenticated(message),
            ApiError::RateLimited { .. } => tonic::Status::resource_exhausted(message),
            ApiError::Unavailable(_) => tonic::Status::unavailable(message),
        }
    }

    /// The JSON body: `{code, message}`, or Binance's `{code, msg}`.
    pub fn body(&self, binance: bool) -> serde_json::Value {
        if binance {
            serde_json::json!({ "code": self.binance_code(), "msg": self.to_string() })
        } else {
            serde_json::json!({ "code": self.code(), "message": self.to_string() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_client_or_availability_status() {
        let errors = [
            ApiError::invalid("symbol", "Invalid symbol."),
            ApiError::invalid("interval", "Invalid interval."),
            ApiError::MissingParameter("symbol"),
            ApiError::NotFound("no such route".into()),
            ApiError::Unauthorized("bad key".into()),
            ApiError::RateLimited { retry_after: Duration::from_millis(300) },
            ApiError::Unavailable("database down".into()),
        ];
        let statuses: Vec<u16> = errors.iter().map(ApiError::http_status).collect();
        assert_eq!(statuses, [400, 400, 400, 404, 401, 429, 503]);
        assert_eq!(errors[0].body(true), serde_json::json!({"code": -1121, "msg": "Invalid symbol."}));
        assert_eq!(errors[2].body(false)["code"], "missing_parameter");
        assert_eq!(errors[5].to_string(), "too many requests: retry after 1 s");
        assert_eq!(errors[6].to_grpc().code(), tonic::Code::Unavailable);
    }
}
