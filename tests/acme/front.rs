//! [`Front`]: an HTTPS front for Pebble that gives it what Pebble 2.4 lacks. Every request is
//! passed to the real Pebble with its `Host` kept, so Pebble writes the front's address into
//! every URL it hands out (directory, `Location`, `Link`, order JSON) and checks JWS `url`s
//! against it: the client talks to the front throughout. On top of that the front
//!
//! - adds `renewalInfo` (RFC 9773) to the directory and answers `GET /renewal-info/<id>` with
//!   windows the test sets, recording the identifiers asked for;
//! - can refuse the first newOrder requests with `429`, `Retry-After` and a `rateLimited`
//!   problem;
//! - records each newOrder's arrival and `replaces`, and reflects `replaces` in Pebble's answer
//!   (RFC 9773 §5 requires the server to; Pebble ignores the field).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::common::pebble::Pebble;
use crate::common::tcp::accept_until;
use crate::common::{TempDir, pki};

/// The path the front serves renewal info under.
const RENEWAL_INFO: &str = "/renewal-info";

/// One newOrder request as the front saw it.
#[derive(Debug, Clone)]
pub struct NewOrderSeen {
    /// When it arrived.
    pub at: Instant,
    /// The `replaces` of its payload (an RFC 9773 §4.1 identifier).
    pub replaces: Option<String>,
    /// Whether the front refused it (`429`) instead of passing it on.
    pub refused: bool,
}

/// What the test sets and the front records.
#[derive(Default)]
struct State {
    /// The n-th distinct certificate asked about gets the n-th window (the last for the rest).
    windows: Vec<(SystemTime, SystemTime)>,
    /// Identifiers asked for, in order, repeats included.
    asked: Vec<String>,
    /// The distinct identifiers asked for, in order of first ask.
    certificates: Vec<String>,
    /// newOrder requests still to refuse, and the `Retry-After` seconds to give.
    refusals: usize,
    refusal_retry_after: u64,
    new_orders: Vec<NewOrderSeen>,
    /// Pebble's newOrder path, learnt from its directory.
    new_order_path: Option<String>,
}

/// The front; stops on drop.
pub struct Front {
    /// The directory URL to give fulcrum.
    pub directory: String,
    /// PEM of the CA that signed the front's certificate (fulcrum's `directory_ca`).
    pub directory_ca: PathBuf,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
    _dir: TempDir,
}

/// How the front reaches Pebble.
struct Upstream {
    address: SocketAddr,
    tls: TlsConnector,
}

impl Front {
    /// Starts a front for `pebble` on 127.0.0.1.
    pub async fn start(pebble: &Pebble) -> Front {
        let dir = TempDir::new("acme-front");
        let ca = pki::Ca::new();
        let leaf = ca.leaf(&["localhost", "127.0.0.1"], 1);
        dir.write("front-ca.pem", &ca.cert_pem);
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(pki::BOTH)
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der.clone()],
            PrivateKeyDer::Pkcs8(leaf.key_der.clone().into()),
        )
        .expect("the front's certificate");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&pebble.directory_ca).expect("pebble's CA") {
            roots
                .add(cert.expect("a PEM certificate"))
                .expect("trust pebble's CA");
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(pki::BOTH)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let pebble_address: SocketAddr = pebble
            .directory
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .parse()
            .expect("pebble's address");
        let upstream = Arc::new(Upstream {
            address: pebble_address,
            tls: TlsConnector::from(Arc::new(client)),
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the front");
        let address = listener.local_addr().expect("the front's address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(server)),
            upstream,
            Arc::clone(&state),
            stop.clone(),
        ));
        Front {
            directory: format!("https://{address}/dir"),
            directory_ca: dir.join("front-ca.pem"),
            state,
            stop,
            _dir: dir,
        }
    }

    /// The renewal windows to answer: the n-th distinct certificate asked about gets
    /// `windows[n]`, later ones the last.
    pub fn windows(&self, windows: Vec<(SystemTime, SystemTime)>) {
        lock(&self.state).windows = windows;
    }

    /// Refuses the next `count` newOrder requests with `429` and `Retry-After: seconds`.
    pub fn refuse_new_orders(&self, count: usize, seconds: u64) {
        let mut state = lock(&self.state);
        state.refusals = count;
        state.refusal_retry_after = seconds;
    }

    /// The certificate identifiers renewal info was asked for, in order, repeats included.
    pub fn asked(&self) -> Vec<String> {
        lock(&self.state).asked.clone()
    }

    /// The newOrder requests so far.
    pub fn new_orders(&self) -> Vec<NewOrderSeen> {
        lock(&self.state).new_orders.clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: Arc<Upstream>,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
) {
    while let Some(stream) = accept_until(&listener, &stop).await {
        let (acceptor, upstream, state) =
            (acceptor.clone(), Arc::clone(&upstream), Arc::clone(&state));
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |request| {
                let (upstream, state) = (Arc::clone(&upstream), Arc::clone(&state));
                async move { Ok::<_, Infallible>(handle(request, &upstream, &state).await) }
            });
            // A client that hangs up mid-request is no failure of the front.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    upstream: &Upstream,
    state: &Mutex<State>,
) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if let Some(id) = path.strip_prefix(&format!("{RENEWAL_INFO}/")) {
        return renewal_info(id, state);
    }
    let new_order = parts.method == Method::POST
        && lock(state).new_order_path.as_deref() == Some(path.as_str());
    let mut replaces = None;
    if new_order {
        replaces = jws_payload(&body).and_then(|payload| {
            payload
                .get("replaces")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
        });
        let mut state = lock(state);
        let refused = state.refusals > 0;
        state.new_orders.push(NewOrderSeen {
            at: Instant::now(),
            replaces: replaces.clone(),
            refused,
        });
        if refused {
            state.refusals -= 1;
            return rate_limited(state.refusal_retry_after);
        }
    }
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (mut head, mut body) = upstream.pass(parts, body).await;
    if path == "/dir" {
        body = edit_json(&body, |directory| {
            lock(state).new_order_path = directory["newOrder"]
                .as_str()
                .and_then(|url| url.split_once("://"))
                .and_then(|(_, rest)| rest.find('/').map(|slash| rest[slash..].to_owned()));
            directory["renewalInfo"] =
                serde_json::Value::String(format!("https://{host}{RENEWAL_INFO}"));
        });
    } else if let Some(replaces) = replaces.filter(|_| head.status == StatusCode::CREATED) {
        body = edit_json(&body, |order| {
            order["replaces"] = serde_json::Value::String(replaces);
        });
    }
    head.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(head, Full::new(body))
}

impl Upstream {
    /// Sends the request to Pebble as it came (same method, path, headers, `Host` and body) on a
    /// connection of its own; Pebble's answer, or `502` when it cannot be reached.
    async fn pass(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> (http::response::Parts, Bytes) {
        match self.exchange(parts, body).await {
            Ok(answer) => answer,
            Err(err) => {
                let (head, ()) = Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(())
                    .expect("a response")
                    .into_parts();
                (head, Bytes::from(format!("front: pebble: {err}")))
            }
        }
    }

    async fn exchange(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
    ) -> Result<(http::response::Parts, Bytes), Box<dyn std::error::Error + Send + Sync>> {
        let tcp = TcpStream::connect(self.address).await?;
        let name = ServerName::IpAddress(self.address.ip().into());
        let tls = self.tls.connect(name, tcp).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str())
            .parse()?;
        let response = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (mut parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        parts.headers.remove(header::TRANSFER_ENCODING);
        Ok((parts, body))
    }
}

/// A JSON body edited.
fn edit_json(body: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Bytes {
    let mut json: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|err| panic!("pebble's JSON: {err}"));
    edit(&mut json);
    Bytes::from(json.to_string())
}

/// RFC 9773 §4.2: the window for `id`, `Retry-After` a minute (fulcrum's floor).
fn renewal_info(id: &str, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let mut state = lock(state);
    state.asked.push(id.to_owned());
    if !state.certificates.iter().any(|seen| seen == id) {
        state.certificates.push(id.to_owned());
    }
    let position = state
        .certificates
        .iter()
        .position(|seen| seen == id)
        .unwrap_or_default();
    let Some(&(start, end)) = state.windows.get(position).or_else(|| state.windows.last()) else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()))
            .expect("a response");
    };
    let body = serde_json::json!({
        "suggestedWindow": {
            "start": humantime::format_rfc3339_seconds(start).to_string(),
            "end": humantime::format_rfc3339_seconds(end).to_string(),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::RETRY_AFTER, "60")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a response")
}

/// RFC 8555 §6.6: a rate-limit refusal, with the wait.
fn rate_limited(retry_after: u64) -> Response<Full<Bytes>> {
    let problem = serde_json::json!({
        "type": "urn:ietf:params:acme:error:rateLimited",
        "detail": "too many new orders (test front)",
        "status": 429,
    });
    Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header(header::CONTENT_TYPE, "application/problem+json")
        .header(header::RETRY_AFTER, HeaderValue::from(retry_after))
        .body(Full::new(Bytes::from(problem.to_string())))
        .expect("a response")
}

/// The JSON payload of a flattened JWS (RFC 7515 §7.2.2) request body.
fn jws_payload(body: &[u8]) -> Option<serde_json::Value> {
    let jws: serde_json::Value = serde_json::from_slice(body).ok()?;
    let payload = URL_SAFE_NO_PAD.decode(jws["payload"].as_str()?).ok()?;
    serde_json::from_slice(&payload).ok()
}

/// A certificate's RFC 9773 §4.1 identifier, computed here independently of fulcrum:
/// base64url(authority key identifier's keyIdentifier) "." base64url(DER serial bytes).
pub fn certificate_id(der: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).expect("a certificate");
    let aki = cert
        .iter_extensions()
        .find_map(|extension| match extension.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
        .expect("an authority key identifier");
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(aki),
        URL_SAFE_NO_PAD.encode(cert.tbs_certificate.raw_serial())
    )
}
