//! WebSocket/Upgrade proxying: echo and close from either side, in-flight counting, listener
//! caps, refused upgrades, idle timeout, TLS, and the drain on shutdown.

use super::*;

use std::convert::Infallible;

use bytes::Bytes;
use common::client::TestClient;
use common::full;
use common::tcp::{backlogged_request, backlogged_response};
use futures_util::{SinkExt, StreamExt};
use http::Response;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A raw WebSocket echo server (tokio-tungstenite `accept_async`): greets with `welcome`,
/// echoes text and binary, closes itself (code 1000, reason `backend done`) on text `bye`.
async fn ws_echo_backend() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(ws_echo(stream));
        }
    });
    (address, task)
}

/// Accepts a WebSocket handshake on `stream` and runs [`echo_loop`] on it.
async fn ws_echo<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    echo_loop(ws).await;
}

/// Greets with `welcome`, echoes text and binary, and closes on `bye`.
async fn echo_loop<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if ws.send(Message::text("welcome")).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) if text.as_str() == "bye" => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "backend done".into(),
                };
                let _ = ws.close(Some(frame)).await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let echoed = ws.send(message).await;
                if echoed.is_err() {
                    return;
                }
            }
            // Close replies are queued by tungstenite and flushed by the next poll.
            _ => {}
        }
    }
}

type ClientWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens `ws://address/ws` through fulcrum (bounded) and reads the backend's greeting
/// (`welcome`); returns the stream and the 101.
async fn open_websocket(
    address: SocketAddr,
) -> (
    ClientWs,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let (mut ws, response) = within(
        Duration::from_secs(5),
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{address}/ws")),
    )
    .await
    .expect("WebSocket handshake through fulcrum");
    assert_eq!(
        next_message(&mut ws, "the greeting").await,
        Message::text("welcome")
    );
    (ws, response)
}

/// The next message, bounded; a stream end or error while waiting fails the test.
async fn next_message<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, what: &str) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(Duration::from_secs(5), what, ws.next())
        .await
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
        .unwrap_or_else(|err| panic!("error while waiting for {what}: {err}"))
}

/// Greeting, then text, binary and a large binary message echoed back.
async fn exchange<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(
        next_message(ws, "the greeting").await,
        Message::text("welcome")
    );
    ws.send(Message::text("hello through fulcrum"))
        .await
        .expect("send text");
    assert_eq!(
        next_message(ws, "the text echo").await,
        Message::text("hello through fulcrum")
    );
    let binary = Bytes::from_static(&[0, 1, 2, 0xfe, 0xff]);
    ws.send(Message::Binary(binary.clone()))
        .await
        .expect("send binary");
    assert_eq!(
        next_message(ws, "the binary echo").await,
        Message::Binary(binary)
    );
    let large: Bytes = (0..300_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    ws.send(Message::Binary(large.clone()))
        .await
        .expect("send large");
    assert_eq!(
        next_message(ws, "the large echo").await,
        Message::Binary(large)
    );
}

/// Reads until the stream ends, expecting nothing but a Close frame first.
async fn expect_end<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<CloseFrame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut close = None;
    within(
        Duration::from_secs(5),
        "the WebSocket stream to end",
        async {
            while let Some(message) = ws.next().await {
                match message {
                    Ok(Message::Close(frame)) => close = Some(frame),
                    Ok(other) => panic!("unexpected message before the end: {other:?}"),
                    Err(err) => panic!("stream ended with an error: {err}"),
                }
            }
        },
    )
    .await;
    close.expect("a Close frame before the end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_and_close_from_either_side() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let dir = TempDir::new("ws");
        let text = config_text(None, &[backend], "round_robin");
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let url = format!("ws://{}/ws", lb.addr());

        // The client closes.
        let (mut ws, response): (ClientWs, _) = within(
            Duration::from_secs(5),
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .expect("WebSocket handshake through fulcrum");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        exchange(&mut ws).await;
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        drop(ws);

        // The backend closes.
        let (mut ws, _) = within(
            Duration::from_secs(5),
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .expect("second WebSocket handshake");
        exchange(&mut ws).await;
        ws.send(Message::text("bye")).await.expect("send bye");
        let frame = expect_end(&mut ws)
            .await
            .expect("a close frame with a code");
        assert_eq!(frame.code, CloseCode::Normal);
        assert_eq!(frame.reason.as_str(), "backend done");
        lb.stop().await;
    })
    .await;
}

/// An HTTP/1.1 backend (hyper, with upgrades) that answers plain requests with its name and
/// upgrades `/ws` requests to an echoing WebSocket, answering 101 with `x-served-by` too.
async fn dual_backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |request| dual_handle(name, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (address, task)
}

/// Upgrades `/ws` requests with a WebSocket key; answers everything else with the name.
async fn dual_handle(
    name: &'static str,
    mut request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let key = request.headers().get("sec-websocket-key").cloned();
    let response = match key {
        Some(key) if request.uri().path() == "/ws" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    echo_loop(ws).await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .header("x-served-by", name)
                .body(empty())
        }
        _ => Response::builder()
            .header("x-served-by", name)
            .body(full(name)),
    };
    Ok(response.expect("a valid response"))
}

/// A plain GET on a fresh connection; the backend name that answered.
async fn served_by(address: SocketAddr) -> String {
    let mut client = TestClient::connect(address).await;
    let response = client.get("/plain").await.expect("plain request");
    assert_eq!(response.status, StatusCode::OK);
    response.served_by().expect("x-served-by").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websocket_counts_as_in_flight_for_least_connections() {
    bounded(async {
        let (a, _a_task) = dual_backend("a").await;
        let (b, _b_task) = dual_backend("b").await;
        let dir = TempDir::new("ws-lc");
        let text = config_text(None, &[a, b], "least_connections");
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;

        let (mut ws, response) = open_websocket(lb.addr()).await;
        let holder = response
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .expect("the 101 names its backend")
            .to_owned();
        let other = if holder == "a" { "b" } else { "a" };

        // While the tunnel is open, every plain request goes to the other backend.
        for i in 0..8 {
            let name = served_by(lb.addr()).await;
            assert_eq!(
                name, other,
                "request {i} while the WebSocket to {holder} is open"
            );
            // Let the finished request's in-flight count drop before the next pick.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The tunnel still works.
        ws.send(Message::text("still here")).await.expect("send");
        assert_eq!(
            next_message(&mut ws, "the echo").await,
            Message::text("still here")
        );

        // Once it closes, the holder takes requests again.
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        drop(ws);
        let started = Instant::now();
        loop {
            if served_by(lb.addr()).await == holder {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{holder} got no request after its WebSocket closed: its in-flight count leaked"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_counts_against_the_listeners_max_connections() {
    bounded(async {
        let (backend, _task) = dual_backend("a").await;
        let dir = TempDir::new("ws-cap");
        let text = config_text_with("max_connections = 1", None, &[backend], "round_robin");
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let (mut ws, _) = open_websocket(lb.addr()).await;

        // The tunnel is the listener's one connection: the next client waits in the backlog.
        let waiting = backlogged_request(lb.addr(), "/plain").await;
        ws.send(Message::text("still here")).await.expect("send");
        assert_eq!(
            next_message(&mut ws, "the echo").await,
            Message::text("still here")
        );

        // The tunnel closes: the waiting client is accepted and answered.
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        drop(ws);
        let response = backlogged_response(waiting).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_the_tls_listener() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let ca = Ca::new();
        let dir = TempDir::new("wss");
        single_site(&ca, &dir);
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let stream = tls_connect(
            lb.addr(),
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("TLS handshake");
        let (mut ws, response) = within(
            Duration::from_secs(5),
            "the WebSocket handshake over TLS",
            tokio_tungstenite::client_async("wss://example.test/ws", stream),
        )
        .await
        .expect("WebSocket handshake over TLS");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        exchange(&mut ws).await;
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_is_an_ordinary_response() {
    bounded(async {
        let backend = TestBackend::spawn("plain").await;
        let dir = TempDir::new("ws-refused");
        let text = config_text(None, &[backend.addr()], "round_robin");
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let result = within(
            Duration::from_secs(5),
            "the refused WebSocket handshake",
            tokio_tungstenite::connect_async(format!("ws://{}/ws", lb.addr())),
        )
        .await;
        match result {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.body().as_deref(), Some(&b"plain"[..]));
            }
            Err(other) => panic!("expected the backend's 200, got error {other}"),
            Ok(_) => panic!("a backend without WebSocket support cannot upgrade"),
        }
        let seen = backend
            .last_request()
            .expect("the backend got the upgrade request");
        assert_eq!(seen.headers["upgrade"], "websocket");
        assert_eq!(seen.headers["connection"], "upgrade");
        assert!(seen.headers.contains_key("sec-websocket-key"));
        // The proxy keeps working (and reusing the backend connection) afterwards.
        for _ in 0..3 {
            assert_eq!(served_by(lb.addr()).await, "plain");
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_tunnel_is_closed_after_the_idle_timeout() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let dir = TempDir::new("ws-idle");
        let text = config_text_with("idle_timeout = \"600ms\"", None, &[backend], "round_robin");
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let (mut ws, _) = open_websocket(lb.addr()).await;

        // Traffic keeps the tunnel open well past the idle timeout.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let text = format!("ping {i}");
            ws.send(Message::text(text.clone())).await.expect("send");
            assert_eq!(next_message(&mut ws, "an echo").await, Message::text(text));
        }

        // Silence closes it.
        let started = Instant::now();
        let ended = within(Duration::from_secs(3), "the idle tunnel to close", async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(Message::Close(_))) => {}
                    Some(Ok(other)) => panic!("unexpected message: {other:?}"),
                }
            }
        });
        ended.await;
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "closed after {:?}, before the idle timeout",
            started.elapsed()
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_is_drained_then_closed_on_shutdown() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let dir = TempDir::new("ws-shutdown");
        // config_text sets shutdown_timeout = "2s".
        let text = config_text(None, &[backend], "round_robin");
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let (mut ws, _) = open_websocket(lb.addr()).await;

        let started = Instant::now();
        let stopping = tokio::spawn(async move {
            lb.stop().await;
            Instant::now()
        });
        // README (Shutdown): open connections are drained until they end or shutdown_timeout.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !stopping.is_finished(),
            "Server::run returned after {:?} while a WebSocket tunnel was still open \
             (shutdown_timeout is 2s)",
            started.elapsed()
        );
        ws.send(Message::text("during drain")).await.expect("send");
        assert_eq!(
            next_message(&mut ws, "an echo while draining").await,
            Message::text("during drain")
        );
        let stopped = within(Duration::from_secs(5), "the balancer to stop", stopping)
            .await
            .expect("stop task");
        assert!(
            stopped - started >= Duration::from_millis(1500),
            "stopped after {:?}, before shutdown_timeout",
            stopped - started
        );
        // Once Server::run has returned, nothing may be forwarded any more.
        let _ = ws.send(Message::text("after shutdown")).await;
        let next = within(Duration::from_secs(3), "the tunnel to be closed", ws.next()).await;
        assert!(
            !matches!(next, Some(Ok(Message::Text(_)))),
            "the tunnel still forwards after Server::run returned: {next:?}"
        );
    })
    .await;
}
