//! The HTTP JSON API: routing, request parsing and validation, and the error → response mapping.
//!
//! Every response is JSON (except the page at `/`) and carries `X-Served-By`. Errors look like
//! `{"error": "code", "message": "…", "fields": {"username": "…"}}` (`fields` only for `400`s
//! about specific fields).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::auth::{Passwords, SecretError, Token, token_digest};
use super::db::{self, DbError, Store, User};

/// The page, compiled into the binary.
const INDEX_HTML: &str = include_str!("../static/index.html");
/// Largest accepted request body.
const MAX_BODY: usize = 16 * 1024;

/// Response body type of every route.
pub type ResBody = Full<Bytes>;

/// One running instance's handler state.
pub struct Api {
    /// This instance's name, sent as `X-Served-By`.
    pub name: HeaderValue,
    /// The shared database.
    pub store: Arc<Store>,
    /// Password hashing, shared with blocking tasks.
    pub passwords: Arc<Passwords>,
    /// How long a session lasts after sign-in.
    pub session_ttl: Duration,
}

/// Everything a request can fail with; [`ApiError::into_response`] is the one mapping to HTTP.
#[derive(Debug)]
enum ApiError {
    /// The body is not JSON, or not a JSON object.
    MalformedJson(String),
    /// Specific fields are missing or invalid: field → message.
    InvalidFields(BTreeMap<&'static str, String>),
    /// `POST`/`PATCH` without `Content-Type: application/json` (also keeps plain HTML forms on
    /// other sites from posting here without a CORS preflight).
    UnsupportedMediaType,
    /// Body larger than [`MAX_BODY`].
    TooLarge,
    /// The request body could not be read.
    BodyRead,
    /// No `Authorization: Bearer` token, or an unknown or expired one.
    Unauthenticated,
    /// Wrong username or password (deliberately not saying which).
    BadCredentials,
    /// The username is taken.
    UsernameTaken,
    /// No such route.
    NotFound,
    /// The route exists with other methods.
    MethodNotAllowed(&'static str),
    /// A server-side failure, already logged where it happened.
    Internal,
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        tracing::error!(error = %err, "database error");
        ApiError::Internal
    }
}

impl From<SecretError> for ApiError {
    fn from(err: SecretError) -> Self {
        tracing::error!(error = %err, "password or token error");
        ApiError::Internal
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        tracing::error!(error = %err, "blocking task failed");
        ApiError::Internal
    }
}

impl ApiError {
    fn into_response(self) -> Response<ResBody> {
        let (status, code, message) = match &self {
            ApiError::MalformedJson(detail) => (
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("request body is not a JSON object: {detail}"),
            ),
            ApiError::InvalidFields(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_fields",
                "some fields are missing or invalid".to_owned(),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json".to_owned(),
            ),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body is larger than {MAX_BODY} bytes"),
            ),
            ApiError::BodyRead => (
                StatusCode::BAD_REQUEST,
                "body_read",
                "the request body could not be read".to_owned(),
            ),
            ApiError::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "sign in and send Authorization: Bearer TOKEN".to_owned(),
            ),
            ApiError::BadCredentials => (
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong username or password".to_owned(),
            ),
            ApiError::UsernameTaken => (
                StatusCode::CONFLICT,
                "username_taken",
                "this username is already taken".to_owned(),
            ),
            ApiError::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such resource".to_owned(),
            ),
            ApiError::MethodNotAllowed(allow) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("allowed: {allow}"),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log".to_owned(),
            ),
        };
        let mut body = json!({ "error": code, "message": message });
        if let ApiError::InvalidFields(fields) = &self {
            body["fields"] = json!(fields);
        }
        let mut res = json_response(status, &body);
        match self {
            ApiError::Unauthenticated => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        res
    }
}

impl Api {
    /// Answers one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ResBody>, Infallible> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let mut res = self
            .route(req)
            .await
            .unwrap_or_else(ApiError::into_response);
        let headers = res.headers_mut();
        headers.insert("x-served-by", self.name.clone());
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        tracing::debug!(method = %method, path = %path, status = res.status().as_u16(), "request");
        Ok(res)
    }

    async fn route(&self, req: Request<Incoming>) -> Result<Response<ResBody>, ApiError> {
        let method = req.method().clone();
        match (req.uri().path(), &method) {
            ("/" | "/index.html", &Method::GET) => Ok(html(INDEX_HTML)),
            ("/" | "/index.html", _) => Err(ApiError::MethodNotAllowed("GET")),
            ("/health", &Method::GET) => self.health().await,
            ("/health", _) => Err(ApiError::MethodNotAllowed("GET")),
            ("/api/users", &Method::POST) => self.sign_up(json_body(req).await?).await,
            ("/api/users", _) => Err(ApiError::MethodNotAllowed("POST")),
            ("/api/sessions", &Method::POST) => self.sign_in(json_body(req).await?).await,
            ("/api/sessions", _) => Err(ApiError::MethodNotAllowed("POST")),
            ("/api/me", &Method::GET) => {
                let user = self.authenticate(&req).await?;
                Ok(json_response(StatusCode::OK, &user))
            }
            ("/api/me", &Method::PATCH) => {
                let user = self.authenticate(&req).await?;
                self.update_me(user, json_body(req).await?).await
            }
            ("/api/me", _) => Err(ApiError::MethodNotAllowed("GET, PATCH")),
            _ => Err(ApiError::NotFound),
        }
    }

    /// `200` when the database answers, `503` otherwise.
    async fn health(&self) -> Result<Response<ResBody>, ApiError> {
        match self.store.call(|conn| db::ping(conn)).await {
            Ok(()) => Ok(json_response(
                StatusCode::OK,
                &json!({ "status": "ok", "instance": self.name.to_str().unwrap_or("") }),
            )),
            Err(err) => {
                tracing::error!(error = %err, "health check: database unavailable");
                Ok(json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({ "status": "database unavailable" }),
                ))
            }
        }
    }

    /// `POST /api/users`.
    async fn sign_up(&self, body: Map<String, Value>) -> Result<Response<ResBody>, ApiError> {
        let mut fields = Fields::new(&body);
        let username = fields.string("username", validate_username);
        let password = fields.string("password", validate_password);
        let display_name = fields.string("display_name", validate_display_name);
        fields.finish()?;
        let (Some(username), Some(password), Some(display_name)) =
            (username, password, display_name)
        else {
            return Err(ApiError::Internal);
        };

        let passwords = Arc::clone(&self.passwords);
        let hash = tokio::task::spawn_blocking(move || passwords.hash(&password)).await??;
        let now = unix_now();
        let name_for_log = username.clone();
        let created = self
            .store
            .call(move |conn| db::insert_user(conn, &username, &hash, &display_name, now))
            .await?;
        match created {
            Some(user) => {
                tracing::info!(user_id = user.id, username = %user.username, "user created");
                Ok(json_response(StatusCode::CREATED, &user))
            }
            None => {
                tracing::info!(username = %name_for_log, "sign-up refused: username taken");
                Err(ApiError::UsernameTaken)
            }
        }
    }

    /// `POST /api/sessions`.
    async fn sign_in(&self, body: Map<String, Value>) -> Result<Response<ResBody>, ApiError> {
        let mut fields = Fields::new(&body);
        let username = fields.string("username", |_| Ok(()));
        let password = fields.string("password", |_| Ok(()));
        fields.finish()?;
        let (Some(username), Some(password)) = (username, password) else {
            return Err(ApiError::Internal);
        };

        let found = self
            .store
            .call(move |conn| db::user_with_hash(conn, &username))
            .await?;
        let passwords = Arc::clone(&self.passwords);
        let (user, ok) = tokio::task::spawn_blocking(move || match found {
            Some((user, hash)) => passwords
                .verify(&password, &hash)
                .map(|ok| (Some(user), ok)),
            None => passwords.verify_decoy(&password).map(|ok| (None, ok)),
        })
        .await??;
        let Some(user) = user.filter(|_| ok) else {
            return Err(ApiError::BadCredentials);
        };

        let token = Token::generate()?;
        let digest = token_digest(&token.0);
        let now = unix_now();
        let expires_at =
            now.saturating_add(i64::try_from(self.session_ttl.as_secs()).unwrap_or(i64::MAX));
        let user_id = user.id;
        self.store
            .call(move |conn| db::insert_session(conn, &digest, user_id, now, expires_at))
            .await?;
        tracing::info!(user_id, "signed in");
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "token": token.0,
                "token_type": "Bearer",
                "expires_at": expires_at,
                "user": user,
            }),
        ))
    }

    /// `PATCH /api/me`.
    async fn update_me(
        &self,
        user: User,
        body: Map<String, Value>,
    ) -> Result<Response<ResBody>, ApiError> {
        let mut fields = Fields::new(&body);
        let display_name = fields.string("display_name", validate_display_name);
        fields.finish()?;
        let Some(display_name) = display_name else {
            return Err(ApiError::Internal);
        };
        let user_id = user.id;
        let now = unix_now();
        let updated = self
            .store
            .call(move |conn| db::update_display_name(conn, user_id, &display_name, now))
            .await?;
        // The user was deleted between authentication and update.
        let user = updated.ok_or(ApiError::Unauthenticated)?;
        Ok(json_response(StatusCode::OK, &user))
    }

    /// The user behind the request's bearer token.
    async fn authenticate<B>(&self, req: &Request<B>) -> Result<User, ApiError> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or(ApiError::Unauthenticated)?;
        let digest = token_digest(&token.to_ascii_lowercase());
        let now = unix_now();
        self.store
            .call(move |conn| db::session_user(conn, &digest, now))
            .await?
            .ok_or(ApiError::Unauthenticated)
    }
}

/// Reads a bounded body and parses it as a JSON object.
async fn json_body(req: Request<Incoming>) -> Result<Map<String, Value>, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => return Err(ApiError::TooLarge),
        Err(_) => return Err(ApiError::BodyRead),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::MalformedJson("expected an object".to_owned())),
        Err(err) => Err(ApiError::MalformedJson(err.to_string())),
    }
}

/// Collects field-level errors so a response can name every bad field at once.
struct Fields<'a> {
    body: &'a Map<String, Value>,
    errors: BTreeMap<&'static str, String>,
}

impl<'a> Fields<'a> {
    fn new(body: &'a Map<String, Value>) -> Self {
        Self {
            body,
            errors: BTreeMap::new(),
        }
    }

    /// The string field `name`, if present, a string, and accepted by `check`.
    fn string(
        &mut self,
        name: &'static str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let outcome = match self.body.get(name) {
            None | Some(Value::Null) => Err("is required".to_owned()),
            Some(Value::String(value)) => check(value).map(|()| value.clone()),
            Some(_) => Err("must be a string".to_owned()),
        };
        outcome
            .map_err(|message| self.errors.insert(name, message))
            .ok()
    }

    fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidFields(self.errors))
        }
    }
}

fn validate_username(value: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if (3..=32).contains(&value.len()) && value.chars().all(allowed) {
        Ok(())
    } else {
        Err("must be 3 to 32 characters: letters, digits, '_', '-' or '.'".to_owned())
    }
}

fn validate_password(value: &str) -> Result<(), String> {
    if (8..=128).contains(&value.chars().count()) {
        Ok(())
    } else {
        Err("must be 8 to 128 characters".to_owned())
    }
}

fn validate_display_name(value: &str) -> Result<(), String> {
    let length = value.chars().count();
    if value.trim() != value {
        Err("must not start or end with spaces".to_owned())
    } else if !(1..=64).contains(&length) {
        Err("must be 1 to 64 characters".to_owned())
    } else if value.chars().any(char::is_control) {
        Err("must not contain control characters".to_owned())
    } else {
        Ok(())
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<ResBody> {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut res = Response::new(Full::new(Bytes::from(bytes)));
            *res.status_mut() = status;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            res
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot serialise response");
            let mut res = Response::new(Full::new(Bytes::from_static(b"{\"error\":\"internal\"}")));
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            res
        }
    }
}

fn html(page: &'static str) -> Response<ResBody> {
    let mut res = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res
}
