//! The example user service behind fulcrum: three instances (tasks on this runtime) on one
//! temporary SQLite file, fulcrum in front, real sockets on 127.0.0.1 and a real hyper client.
//! The last test drives the page in headless Chromium when `/usr/bin/chromium` exists.

#[path = "../examples/user_service/mod.rs"]
mod user_service;

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::TempDir;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use user_service::auth::HashCost;
use user_service::{Instance, Options};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upper bound for one request, so a hang fails instead of blocking the suite.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

/// Runs `future`, failing the test after `limit`.
async fn bounded<T>(limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Three (or `n`) user-service instances on one database, and fulcrum in front of them.
struct Site {
    /// fulcrum's `web` listener.
    addr: SocketAddr,
    /// `None` once killed.
    instances: Vec<Option<Instance>>,
    db: PathBuf,
    stop_balancer: Option<oneshot::Sender<()>>,
    balancer: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Site {
    async fn start(n: usize) -> Site {
        let dir = TempDir::new("users");
        let db = dir.join("users.db");
        let mut instances = Vec::new();
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let mut options = Options::new(format!("us-{}", i + 1), &db);
            options.hash_cost = HashCost::Fast;
            let instance = Instance::start(listener, &options)
                .await
                .expect("start user service");
            instances.push(Some(instance));
        }
        let backends: Vec<String> = instances
            .iter()
            .flatten()
            .map(|instance| format!("\"{}\"", instance.addr))
            .collect();
        let toml = format!(
            r#"
[runtime]
shutdown_timeout = "2s"

[[listeners]]
name = "web"
listen = "127.0.0.1:0"
pool = "app"

[pools.app]
algorithm = "round_robin"
backends = [{}]
connect_timeout = "500ms"
request_timeout = "10s"
retries = 2
"#,
            backends.join(", ")
        );
        let config = fulcrum::Config::parse("test.toml", &toml).expect("valid config");
        let server = fulcrum::Server::bind(config).await.expect("bind fulcrum");
        let addr = server.local_addr("web").expect("web listener");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let balancer = tokio::spawn(server.run(async move {
            // Either a send or a dropped sender means stop.
            let _ = stop_rx.await;
        }));
        Site {
            addr,
            instances,
            db,
            stop_balancer: Some(stop_tx),
            balancer: Some(balancer),
            _dir: dir,
        }
    }

    /// Closes instance `i`'s listener and drops its connections.
    async fn kill(&mut self, i: usize) {
        if let Some(instance) = self.instances[i].take() {
            instance.stop().await;
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop_balancer.take() {
            let _ = stop.send(());
        }
        if let Some(balancer) = self.balancer.take() {
            bounded(Duration::from_secs(10), balancer)
                .await
                .expect("fulcrum task");
        }
        for instance in self.instances.iter_mut().filter_map(Option::take) {
            instance.stop().await;
        }
    }
}

/// One answer, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    served_by: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "{} body is not JSON ({err}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one request on a fresh HTTP/1.1 connection to `addr`.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> Result<Reply, BoxError> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, body)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))?,
            None => request.body(Full::new(Bytes::new()))?,
        };
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        let served_by = parts
            .headers
            .get("x-served-by")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok::<_, BoxError>(Reply {
            status: parts.status,
            headers: parts.headers,
            served_by,
            body,
        })
    };
    tokio::time::timeout(REQUEST_LIMIT, exchange).await?
}

async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    send(addr, Method::GET, path, token, None)
        .await
        .expect("GET")
}

async fn with_json(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Reply, BoxError> {
    let body = Some(("application/json", body.to_string()));
    send(addr, method, path, token, body).await
}

async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    with_json(addr, Method::POST, path, None, body)
        .await
        .expect("POST")
}

async fn sign_up(addr: SocketAddr, username: &str) -> Reply {
    let body =
        json!({ "username": username, "password": "correct horse", "display_name": username });
    post(addr, "/api/users", &body).await
}

// ---------------------------------------------------------------------------------------------
// API through fulcrum
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn account_flow_through_fulcrum_uses_every_instance() {
    bounded(Duration::from_secs(60), async {
        let site = Site::start(3).await;
        let addr = site.addr;
        let mut served = Vec::new();

        let created = post(
            addr,
            "/api/users",
            &json!({ "username": "alice", "password": "rabbit hole", "display_name": "Alice" }),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
        let user = created.json();
        assert_eq!(user["username"], "alice");
        assert_eq!(user["display_name"], "Alice");
        assert!(user.get("password").is_none() && user.get("password_hash").is_none());
        served.push(created.served_by.clone());

        let session = post(
            addr,
            "/api/sessions",
            &json!({ "username": "alice", "password": "rabbit hole" }),
        )
        .await;
        assert_eq!(session.status, StatusCode::OK, "{session:?}");
        let token = session.json()["token"]
            .as_str()
            .expect("token string")
            .to_owned();
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        served.push(session.served_by.clone());

        let me = get(addr, "/api/me", Some(&token)).await;
        assert_eq!(me.status, StatusCode::OK, "{me:?}");
        assert_eq!(me.json()["display_name"], "Alice");
        served.push(me.served_by.clone());

        let patched = with_json(
            addr,
            Method::PATCH,
            "/api/me",
            Some(&token),
            &json!({ "display_name": "Alice Liddell" }),
        )
        .await
        .expect("PATCH");
        assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
        assert_eq!(patched.json()["display_name"], "Alice Liddell");
        served.push(patched.served_by.clone());

        let again = get(addr, "/api/me", Some(&token)).await;
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(again.json()["display_name"], "Alice Liddell");
        served.push(again.served_by.clone());

        // The session made on one instance is honoured by the others: it is in the database.
        assert!(
            served[2..].iter().any(|name| *name != session.served_by),
            "every call landed on {}: {served:?}",
            session.served_by
        );
        let distinct: BTreeSet<&str> = served.iter().map(String::as_str).collect();
        assert_eq!(
            distinct,
            BTreeSet::from(["us-1", "us-2", "us-3"]),
            "round-robin over three instances: {served:?}"
        );

        let page = get(addr, "/", None).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(
            page.headers[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(!page.served_by.is_empty());
        assert!(String::from_utf8_lossy(&page.body).contains("id=\"signup-form\""));
        let health = get(addr, "/health", None).await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(health.json()["instance"], health.served_by.as_str());
        site.stop().await;
    })
    .await;
}

#[tokio::test]
async fn errors_have_the_documented_statuses() {
    bounded(Duration::from_secs(60), async {
        let site = Site::start(3).await;
        let addr = site.addr;
        let error_code = |reply: &Reply| reply.json()["error"].as_str().unwrap_or("").to_owned();

        assert_eq!(sign_up(addr, "bob").await.status, StatusCode::CREATED);
        for name in ["bob", "BOB"] {
            let duplicate = sign_up(addr, name).await;
            assert_eq!(
                duplicate.status,
                StatusCode::CONFLICT,
                "{name}: {duplicate:?}"
            );
            assert_eq!(error_code(&duplicate), "username_taken");
        }

        for (username, password) in [("bob", "wrong password"), ("nobody", "correct horse")] {
            let body = json!({ "username": username, "password": password });
            let denied = post(addr, "/api/sessions", &body).await;
            assert_eq!(denied.status, StatusCode::UNAUTHORIZED, "{username}");
            assert_eq!(error_code(&denied), "bad_credentials");
        }

        for raw in ["{\"username\": ", "not json", "[1, 2]"] {
            let body = Some(("application/json", raw.to_owned()));
            let malformed = send(addr, Method::POST, "/api/users", None, body)
                .await
                .expect("POST");
            assert_eq!(malformed.status, StatusCode::BAD_REQUEST, "{raw}");
            assert_eq!(error_code(&malformed), "malformed_json");
        }

        let missing = post(addr, "/api/users", &json!({})).await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        let fields = missing.json()["fields"].clone();
        for field in ["username", "password", "display_name"] {
            assert_eq!(fields[field], "is required", "{fields}");
        }
        let invalid = post(
            addr,
            "/api/users",
            &json!({ "username": "a b", "password": 12345678, "display_name": "ok" }),
        )
        .await;
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
        let fields = invalid.json()["fields"].clone();
        assert!(
            fields["username"]
                .as_str()
                .is_some_and(|m| m.contains("3 to 32"))
        );
        assert_eq!(fields["password"], "must be a string");
        assert!(fields.get("display_name").is_none(), "{fields}");

        let form = Some(("application/x-www-form-urlencoded", "username=x".to_owned()));
        let not_json = send(addr, Method::POST, "/api/users", None, form)
            .await
            .expect("POST");
        assert_eq!(not_json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let anonymous = get(addr, "/api/me", None).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert_eq!(anonymous.headers[header::WWW_AUTHENTICATE], "Bearer");
        let forged = get(addr, "/api/me", Some(&"ab".repeat(32))).await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
        let body = json!({ "display_name": "x" });
        let patch = with_json(addr, Method::PATCH, "/api/me", None, &body)
            .await
            .expect("PATCH");
        assert_eq!(patch.status, StatusCode::UNAUTHORIZED);

        let session = post(
            addr,
            "/api/sessions",
            &json!({ "username": "BoB", "password": "correct horse" }),
        )
        .await;
        assert_eq!(
            session.status,
            StatusCode::OK,
            "usernames are case-insensitive"
        );
        let token = session.json()["token"].as_str().unwrap_or("").to_owned();
        let body = json!({ "display_name": " padded " });
        let bad_name = with_json(addr, Method::PATCH, "/api/me", Some(&token), &body)
            .await
            .expect("PATCH");
        assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
        assert!(bad_name.json()["fields"]["display_name"].is_string());

        assert_eq!(
            get(addr, "/api/nope", None).await.status,
            StatusCode::NOT_FOUND
        );
        let delete = send(addr, Method::DELETE, "/api/users", None, None)
            .await
            .expect("DELETE");
        assert_eq!(delete.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(delete.headers[header::ALLOW], "POST");
        for reply in [&anonymous, &forged, &delete] {
            assert!(reply.served_by.starts_with("us-"), "{reply:?}");
        }
        site.stop().await;
    })
    .await;
}

#[tokio::test]
async fn concurrent_sign_ups_lose_nothing_and_duplicate_nothing() {
    bounded(Duration::from_secs(90), async {
        let site = Site::start(3).await;
        let addr = site.addr;
        // 30 names tried once, 5 names tried 4 times each: 50 clients at once.
        let names: Vec<String> = (0..50)
            .map(|i| {
                if i < 30 {
                    format!("solo{i}")
                } else {
                    format!("dup{}", i % 5)
                }
            })
            .collect();
        let tasks: Vec<_> = names
            .iter()
            .map(|name| {
                let name = name.clone();
                tokio::spawn(async move { (name.clone(), sign_up(addr, &name).await) })
            })
            .collect();
        let mut created: BTreeMap<String, usize> = BTreeMap::new();
        let mut conflicts = 0;
        let mut servers = BTreeSet::new();
        for task in tasks {
            let (name, reply) = task.await.expect("client task");
            servers.insert(reply.served_by.clone());
            match reply.status {
                StatusCode::CREATED => *created.entry(name).or_default() += 1,
                StatusCode::CONFLICT => conflicts += 1,
                other => panic!("{name}: unexpected {other}: {reply:?}"),
            }
        }
        let expected: BTreeSet<String> = names.iter().cloned().collect();
        assert_eq!(
            created.len(),
            35,
            "every distinct name created once: {created:?}"
        );
        assert!(created.values().all(|&n| n == 1), "{created:?}");
        assert_eq!(conflicts, 15);
        assert!(
            servers.len() >= 2,
            "sign-ups spread over instances: {servers:?}"
        );

        // And the database agrees.
        let conn = rusqlite::Connection::open(&site.db).expect("open db");
        let stored: BTreeSet<String> = conn
            .prepare("SELECT username FROM users")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<Result<_, _>>()
            })
            .expect("query users");
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM users", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 35);
        assert_eq!(stored, expected);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
        drop(conn);
        site.stop().await;
    })
    .await;
}

#[tokio::test]
async fn killing_an_instance_mid_stream_causes_no_client_error() {
    bounded(Duration::from_secs(120), async {
        let mut site = Site::start(3).await;
        let addr = site.addr;
        assert_eq!(sign_up(addr, "runner").await.status, StatusCode::CREATED);

        const CLIENTS: usize = 4;
        const PER_CLIENT: usize = 25;
        const KILL_AFTER: usize = 30;
        // Clients hold this for reading while a request is in flight; the kill takes it for
        // writing, so it happens between requests while fulcrum still holds pooled keep-alive
        // connections to the instance (a request cut off mid-flight is lost by any proxy).
        let gate = Arc::new(RwLock::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (kill_tx, mut kill_rx) = tokio::sync::mpsc::channel::<()>(1);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (gate, done, kill_tx) = (Arc::clone(&gate), Arc::clone(&done), kill_tx.clone());
                tokio::spawn(async move {
                    let mut replies = Vec::new();
                    for _ in 0..PER_CLIENT {
                        let guard = gate.read().await;
                        let killed = *guard;
                        let body = json!({ "username": "runner", "password": "correct horse" });
                        let reply =
                            with_json(addr, Method::POST, "/api/sessions", None, &body).await;
                        drop(guard);
                        if done.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                            // Capacity 1 and a single send: never full.
                            let _ = kill_tx.try_send(());
                        }
                        replies.push((killed, reply));
                    }
                    replies
                })
            })
            .collect();
        drop(kill_tx);

        kill_rx.recv().await.expect("kill signal");
        {
            let mut killed = gate.write().await;
            site.kill(1).await;
            *killed = true;
        }

        let mut before = BTreeMap::<String, usize>::new();
        let mut after = BTreeMap::<String, usize>::new();
        let mut errors = Vec::new();
        for client in clients {
            for (killed, reply) in client.await.expect("client task") {
                match reply {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        let map = if killed { &mut after } else { &mut before };
                        *map.entry(reply.served_by).or_default() += 1;
                    }
                    Ok(reply) => errors.push(format!(
                        "{} from {:?}: {}",
                        reply.status,
                        reply.served_by,
                        String::from_utf8_lossy(&reply.body)
                    )),
                    Err(err) => errors.push(format!("client error: {err}")),
                }
            }
        }
        assert!(
            errors.is_empty(),
            "{} failed requests: {errors:#?}",
            errors.len()
        );
        assert!(
            before.contains_key("us-2"),
            "us-2 served before the kill: {before:?}"
        );
        assert!(
            !after.contains_key("us-2"),
            "us-2 served after the kill: {after:?}"
        );
        let total: usize = before.values().chain(after.values()).sum();
        assert_eq!(total, CLIENTS * PER_CLIENT);
        assert!(
            after.values().sum::<usize>() > 0,
            "requests ran after the kill"
        );
        site.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The page in headless Chromium
// ---------------------------------------------------------------------------------------------

/// A DevTools-protocol connection to a browser.
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    /// Sends one command (to a page when `session` is given) and returns its `result`.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send to chromium");
        loop {
            let frame = self
                .ws
                .next()
                .await
                .expect("chromium closed the DevTools connection")
                .expect("DevTools frame");
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if reply["id"] != json!(id) {
                continue; // an event
            }
            if let Some(error) = reply.get("error") {
                panic!("{method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let params =
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
        let result = self.call(Some(session), "Runtime.evaluate", params).await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("page script failed: {exception}");
        }
        result["result"]["value"].clone()
    }
}

/// Fills the three forms like a person would and waits for each outcome in the DOM.
const PAGE_FLOW: &str = r##"
(async () => {
  const $ = (id) => document.getElementById(id);
  const until = async (what, predicate) => {
    for (let i = 0; i < 300; i++) {
      if (predicate()) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error("timed out waiting for " + what + "; status: " + $("status").textContent);
  };
  const type = (id, value) => {
    $(id).value = value;
    $(id).dispatchEvent(new Event("input", { bubbles: true }));
  };
  type("signup-username", "chromium_user");
  type("signup-password", "headless horse");
  type("signup-display", "First Name");
  document.querySelector("#signup-form button[type=submit]").click();
  await until("the account", () => $("status").textContent.startsWith("Account created"));
  type("login-password", "headless horse");
  document.querySelector("#login-form button[type=submit]").click();
  await until("the sign-in", () => $("current-name").dataset.displayName === "First Name");
  type("profile-display", "Renamed In Chromium");
  $("profile-save").click();
  await until("the new name", () => $("current-name").dataset.displayName === "Renamed In Chromium");
  const rows = [...document.querySelectorAll("#log tr")].map((tr) =>
    [...tr.children].map((td) => td.textContent));
  return { shown: $("current-name").textContent, status: $("status").textContent, rows };
})()
"##;

#[tokio::test]
async fn the_page_works_in_headless_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        eprintln!("skipping: chromium not installed (apt-get install -y chromium)");
        return;
    }
    bounded(Duration::from_secs(120), async {
        let site = Site::start(3).await;
        let profile = TempDir::new("chromium");
        let mut browser = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=1100,900",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");

        // Chromium prints the DevTools address on stderr; keep draining it afterwards so it
        // never blocks on a full pipe.
        let stderr = browser.stderr.take().expect("piped stderr");
        let (url_tx, url_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut url_tx = Some(url_tx);
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = url_tx.take() {
                        let _ = tx.send(Ok(url.trim().to_owned()));
                    }
                } else if url_tx.is_some() {
                    seen.push(line);
                }
            }
            if let Some(tx) = url_tx.take() {
                let _ = tx.send(Err(seen.join("\n")));
            }
        });
        let ws_url = match tokio::time::timeout(Duration::from_secs(30), url_rx).await {
            Ok(Ok(Ok(url))) => url,
            Ok(Ok(Err(stderr))) => panic!("chromium exited before DevTools was up:\n{stderr}"),
            other => panic!("no DevTools address from chromium: {other:?}"),
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("connect to DevTools");
        let mut cdp = Cdp { ws, next_id: 0 };

        let page_url = format!("http://{}/", site.addr);
        let target = cdp
            .call(None, "Target.createTarget", json!({ "url": page_url }))
            .await;
        let attached = cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        let mut loaded = false;
        for _ in 0..200 {
            let ready = cdp
                .eval(
                    &session,
                    "document.readyState === 'complete' && !!document.getElementById('signup-form')",
                )
                .await;
            if ready == json!(true) {
                loaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(loaded, "the page did not load from {page_url}");

        let outcome = cdp.eval(&session, PAGE_FLOW).await;
        let screenshot = cdp
            .call(
                Some(&session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let png = base64_decode(screenshot["data"].as_str().unwrap_or(""));
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("user_service_page.png");
        std::fs::write(&shot, png).expect("write screenshot");
        eprintln!("screenshot: {}", shot.display());

        assert!(
            outcome["shown"]
                .as_str()
                .is_some_and(|shown| shown.starts_with("Renamed In Chromium")),
            "{outcome:#}"
        );
        // POST users, POST sessions, PATCH me, GET me: each row names the instance.
        let rows = outcome["rows"].as_array().cloned().unwrap_or_default();
        assert_eq!(rows.len(), 4, "{outcome:#}");
        let servers: BTreeSet<String> = rows
            .iter()
            .filter_map(|row| row[3].as_str().map(str::to_owned))
            .collect();
        assert!(
            servers.len() >= 2 && servers.iter().all(|s| s.starts_with("us-")),
            "{outcome:#}"
        );

        // The server agrees with what the page shows.
        let session = post(
            site.addr,
            "/api/sessions",
            &json!({ "username": "chromium_user", "password": "headless horse" }),
        )
        .await;
        let token = session.json()["token"].as_str().unwrap_or("").to_owned();
        let me = get(site.addr, "/api/me", Some(&token)).await;
        assert_eq!(me.json()["display_name"], "Renamed In Chromium");

        drop(cdp);
        // kill_on_drop would do it too; this waits for the process to be gone.
        let _ = browser.kill().await;
        site.stop().await;
    })
    .await;
}

/// Standard base64 (with padding), as DevTools sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for sextet in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
