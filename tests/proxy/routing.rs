//! Routing: one listener, several services, through a real fulcrum server and real backends.

use super::*;

use std::net::SocketAddr;

/// `GET path` with `Host: host`, through a fresh client of `balancer`.
async fn get_from(client: &mut TestClient, host: &str, path: &str) -> common::client::TestResponse {
    let mut request = get(path);
    request.headers_mut().insert(
        http::header::HOST,
        http::HeaderValue::from_str(host).expect("host"),
    );
    client.fetch(request).await.expect("response")
}

/// The backends `app`, `api`, `shop` and `next` that [`routed`] sends requests to.
async fn services() -> (TestBackend, TestBackend, TestBackend, TestBackend) {
    (
        TestBackend::spawn("app").await,
        TestBackend::spawn("api").await,
        TestBackend::spawn("shop").await,
        TestBackend::spawn("next").await,
    )
}

/// A listener routing to `api`, `shop` and `next` backends, with `app` as the fallback.
async fn routed(
    app: &TestBackend,
    api: &TestBackend,
    shop: &TestBackend,
    next: &TestBackend,
    fallback: bool,
) -> TestBalancer {
    let pool = if fallback { "pool = \"app\"\n" } else { "" };
    let config = format!(
        r#"[[listeners]]
name = "web"
listen = "127.0.0.1:0"
{pool}
[[listeners.routes]]
name = "api"
host = ["api.example.com", "*.api.example.com"]
path_prefix = "/v1/"
strip_prefix = true
set_request_headers = {{ "x-route" = "api" }}
pool = "api"

[[listeners.routes]]
name = "admin-only-post"
path = "/submit"
methods = ["POST"]
pool = "api"

[[listeners.routes]]
name = "canary"
headers = {{ "x-canary" = "1" }}
pool = "next"

[[listeners.routes]]
name = "shop"
path_prefix = "/shop"
split = [{{ pool = "shop", weight = 90 }}, {{ pool = "next", weight = 10 }}]

[[listeners.routes]]
path_prefix = "/old/"
strip_prefix = true
redirect = {{ to = "https://{{host}}/new{{path}}{{query}}", status = 308 }}

[[listeners.routes]]
path_prefix = "/internal"
respond = {{ status = 403, body = "not here\n" }}

[pools.app]
backends = ["{app}"]

[pools.api]
backends = ["{api}"]

[pools.shop]
backends = ["{shop}"]

[pools.next]
backends = ["{next}"]
"#,
        app = app.addr(),
        api = api.addr(),
        shop = shop.addr(),
        next = next.addr(),
    );
    TestBalancer::from_config("routing.toml", &config, "web").await
}

#[tokio::test]
async fn routes_send_each_service_to_its_pool_and_rewrite_as_configured() {
    bounded(async {
        let (app, api, shop, next) = services().await;
        let mut balancer = routed(&app, &api, &shop, &next, true).await;
        let mut client = balancer.client().await;

        let response = get_from(&mut client, "api.example.com", "/v1/users?id=7").await;
        assert_eq!(response.served_by(), Some("api"));
        let seen = api.last_request().expect("api saw the request");
        assert_eq!(seen.path, "/users", "strip_prefix");
        assert_eq!(seen.headers["x-route"], "api", "set_request_headers");

        let response = get_from(&mut client, "eu.api.example.com:8080", "/v1/x").await;
        assert_eq!(
            response.served_by(),
            Some("api"),
            "wildcard host, port ignored"
        );
        let response = get_from(&mut client, "other.example", "/v1/x").await;
        assert_eq!(
            response.served_by(),
            Some("app"),
            "no host match: the fallback"
        );

        let post = Request::post("/submit")
            .header("host", "x")
            .body(common::empty())
            .expect("request");
        assert_eq!(
            client.fetch(post).await.expect("post").served_by(),
            Some("api")
        );
        let response = get_from(&mut client, "x", "/submit").await;
        assert_eq!(
            response.served_by(),
            Some("app"),
            "GET is not a routed method"
        );

        let mut canary = get("/anything");
        canary
            .headers_mut()
            .insert("x-canary", http::HeaderValue::from_static("1"));
        assert_eq!(
            client.fetch(canary).await.expect("canary").served_by(),
            Some("next")
        );

        let response = get_from(&mut client, "shop.example", "/old/a/b?q=1").await;
        assert_eq!(response.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers["location"],
            "https://shop.example/new/a/b?q=1"
        );

        let response = get_from(&mut client, "x", "/internal/secrets").await;
        assert_eq!(response.status, StatusCode::FORBIDDEN);
        assert_eq!(response.text(), "not here\n");
        assert_eq!(
            app.request_count() + api.request_count() + shop.request_count() + next.request_count(),
            6,
            "the six forwarded requests only: redirects and fixed responses reach no backend"
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_split_sends_its_share_to_each_pool() {
    bounded(async {
        let (app, api, shop, next) = services().await;
        let mut balancer = routed(&app, &api, &shop, &next, true).await;
        let mut client = balancer.client().await;
        let total = 2000;
        let mut canary = 0;
        for _ in 0..total {
            let response = get_from(&mut client, "x", "/shop/cart").await;
            match response.served_by() {
                Some("next") => canary += 1,
                Some("shop") => {}
                other => panic!("split answered by {other:?}"),
            }
        }
        let share = f64::from(canary) * 100.0 / f64::from(total);
        assert!(
            (7.0..=13.0).contains(&share),
            "canary share {share:.1} % of 10 %"
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn no_route_and_no_fallback_is_404_and_reaches_no_backend() {
    bounded(async {
        let (app, api, shop, next) = services().await;
        let mut balancer = routed(&app, &api, &shop, &next, false).await;
        let mut client = balancer.client().await;
        let response = get_from(&mut client, "x", "/nowhere").await;
        assert_eq!(response.status, StatusCode::NOT_FOUND);
        assert_eq!(app.request_count(), 0);
        let response = get_from(&mut client, "api.example.com", "/v1/ok").await;
        assert_eq!(
            response.served_by(),
            Some("api"),
            "the connection still serves"
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn routes_are_counted_in_metrics_and_shown_in_status() {
    bounded(async {
        let api = TestBackend::spawn("api").await;
        let config = format!(
            r#"[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "metered"
listen = "127.0.0.1:0"

[[listeners.routes]]
name = "api"
path_prefix = "/api"
pool = "api"

[[listeners.routes]]
name = "gone"
path = "/gone"
respond = {{ status = 410 }}

[pools.api]
backends = ["{}"]
"#,
            api.addr()
        );
        let mut balancer = TestBalancer::from_config("metered.toml", &config, "metered").await;
        let mut client = balancer.client().await;
        for _ in 0..3 {
            assert_eq!(client.get("/api/x").await.expect("api").served_by(), Some("api"));
        }
        assert_eq!(client.get("/gone").await.expect("gone").status, StatusCode::GONE);
        let metrics = common::balancer::admin_get(balancer.admin_addr(), "/metrics").await.text();
        for line in [
            "fulcrum_route_requests_total{listener=\"metered\",route=\"api\",code_class=\"2xx\"} 3",
            "fulcrum_route_requests_total{listener=\"metered\",route=\"gone\",code_class=\"4xx\"} 1",
            "fulcrum_route_request_duration_seconds_count{listener=\"metered\",route=\"api\"} 3",
        ] {
            assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
        }
        let status = common::balancer::admin_get(balancer.admin_addr(), "/status").await;
        let status: serde_json::Value = serde_json::from_slice(&status.body).expect("json");
        let routes = &status["listeners"][0]["routes"];
        assert_eq!(routes[0]["name"], "api");
        assert_eq!(routes[0]["action"], "pool");
        assert_eq!(routes[0]["pools"][0], "api");
        assert_eq!(routes[0]["last_minute"]["requests"], 3);
        assert_eq!(routes[1]["action"], "respond");
        assert_eq!(status["listeners"][0]["pool"], serde_json::Value::Null);
        balancer.stop().await;
    })
    .await;
}

/// A listener whose only route sends everything to `app` and mirrors it to `shadow`.
async fn mirrored(app: SocketAddr, shadow: SocketAddr, mirror: &str) -> TestBalancer {
    let config = format!(
        r#"[[listeners]]
name = "mirrored"
listen = "127.0.0.1:0"

[[listeners.routes]]
path_prefix = "/"
pool = "app"
mirror = {{ pool = "shadow", {mirror} }}

[pools.app]
backends = ["{app}"]

[pools.shadow]
backends = ["{shadow}"]
request_timeout = "10s"
"#
    );
    TestBalancer::from_config("mirror.toml", &config, "mirrored").await
}

#[tokio::test]
async fn a_mirror_gets_copies_of_requests_and_bodies_and_the_client_only_the_real_answer() {
    bounded(async {
        let app = TestBackend::spawn("app").await;
        let shadow = TestBackend::spawn("shadow").await;
        let mut balancer = mirrored(app.addr(), shadow.addr(), "percent = 50").await;
        let mut client = balancer.client().await;
        for index in 0..9 {
            let response = client.get(&format!("/page/{index}")).await.expect("get");
            assert_eq!(response.served_by(), Some("app"));
        }
        let upload = Request::post("/upload")
            .header("host", "fulcrum.test")
            .body(common::full("copied body"))
            .expect("request");
        let response = client.fetch(upload).await.expect("post");
        assert_eq!(
            response.served_by(),
            Some("app"),
            "the client gets the real answer"
        );
        assert_eq!(
            &app.next_upload_chunk(Duration::from_secs(5)).await[..],
            b"copied body"
        );
        assert_eq!(
            &shadow.next_upload_chunk(Duration::from_secs(5)).await[..],
            b"copied body",
            "the mirror gets the body too"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let copies = shadow.requests();
        assert_eq!(copies.len(), 5, "every other request of 10: {copies:?}");
        assert_eq!(app.request_count(), 10);
        assert!(
            copies
                .iter()
                .all(|copy| copy.headers.contains_key("x-forwarded-for"))
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_or_dead_mirror_changes_nothing_for_clients() {
    bounded(async {
        let app = TestBackend::spawn("app").await;
        let slow = TestBackend::with_behaviour("slow", Behaviour::Hang).await;
        let mut balancer = mirrored(app.addr(), slow.addr(), "max_in_flight = 2").await;
        let mut client = balancer.client().await;
        let started = Instant::now();
        for _ in 0..20 {
            assert_eq!(client.get("/").await.expect("get").served_by(), Some("app"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            slow.request_count(),
            2,
            "at most max_in_flight copies out at once"
        );
        balancer.stop().await;

        let dead = common::tcp::closed_port().await;
        let mut balancer = mirrored(app.addr(), dead, "percent = 100").await;
        let mut client = balancer.client().await;
        for _ in 0..20 {
            let response = client.get("/").await.expect("get");
            assert_eq!(response.status, StatusCode::OK);
        }
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_route_has_its_own_request_timeout_and_retries() {
    bounded(async {
        let app = TestBackend::spawn("app").await;
        let dead = common::tcp::closed_port().await;
        let config = format!(
            r#"[[listeners]]
name = "budget"
listen = "127.0.0.1:0"
pool = "app"

[[listeners.routes]]
path_prefix = "/impatient"
strip_prefix = true
pool = "app"
request_timeout = "100ms"

[[listeners.routes]]
path_prefix = "/once"
pool = "mixed"
retries = 0

[pools.app]
backends = ["{app}"]
request_timeout = "5s"

[pools.mixed]
backends = ["{dead}", "{app}"]
retries = 1
"#,
            app = app.addr()
        );
        let mut balancer = TestBalancer::from_config("budget.toml", &config, "budget").await;
        let mut client = balancer.client().await;
        let response = client.get("/impatient/slow/400").await.expect("impatient");
        assert_eq!(
            response.status,
            StatusCode::GATEWAY_TIMEOUT,
            "the route's 100 ms"
        );
        let response = client.get("/slow/400").await.expect("fallback");
        assert_eq!(response.status, StatusCode::OK, "the pool's 5 s");
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let response = client.get("/once/x").await.expect("once");
            statuses.push(response.status.as_u16());
        }
        assert!(
            statuses.contains(&503) && statuses.contains(&200),
            "without retries the refusing backend's turns fail: {statuses:?}"
        );
        balancer.stop().await;
    })
    .await;
}
