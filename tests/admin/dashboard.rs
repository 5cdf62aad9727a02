//! The dashboard rendered by a real headless Chromium (skipped when none is installed; a
//! failure under `CI=true`).

use super::*;

/// The cargo target directory (screenshots go there).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
        .to_path_buf()
}

/// Runs headless Chromium on `url` with `args`, letting the page run for 5 s of virtual time;
/// returns its stdout. Killed if it takes longer than a minute (or when the test fails).
pub(super) async fn chromium(chromium: &Path, url: &str, args: &[&str]) -> String {
    let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "chromium-profile-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&profile).expect("create a chromium profile dir");
    let child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chromium finished within a minute")
        .expect("chromium ran");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A number unique in this process, so concurrent Chromium runs get their own profile dir.
fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The attributes of the start tag that contains `needle` in `html`.
fn tag_attributes(html: &str, needle: &str) -> Option<HashMap<String, String>> {
    let at = html.find(needle)?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    let tag = &html[start + 1..end];
    let mut attributes = HashMap::new();
    let mut rest = tag
        .split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest);
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let close = after.find('"')?;
        attributes.insert(key, after[..close].replace("&amp;", "&"));
        rest = &after[close + 1..];
    }
    Some(attributes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_every_backend_in_chromium() {
    let Some(browser) = common::tools::require_tool("chromium") else {
        return;
    };
    let a = TestBackend::spawn("a").await;
    let b = TestBackend::with_behaviour("b", Behaviour::Delay(Duration::from_millis(3))).await;
    // Answers 500 to traffic but passes its health checks.
    let c = ControlledBackend::with_mode("c", common::controlled::Mode::Status(500)).await;
    let closed = closed_port().await;
    let (mut balancer, admin) = TestBalancer::builder()
        .backend(a.addr())
        .weighted(b.addr(), 2)
        .backend(c.addr())
        .backend(closed)
        .pool("health_check", FAST_CHECKS)
        .start_with_admin()
        .await;
    let expected = [
        (a.addr(), "healthy"),
        (b.addr(), "healthy"),
        (c.addr(), "healthy"),
        (closed, "unhealthy"),
    ];
    status_until(admin, "first health checks", |status| {
        expected
            .iter()
            .all(|(address, state)| backend(status, *address)["state"] == *state)
    })
    .await;

    // Background traffic so the page has rates, latencies and errors to show.
    let traffic = {
        let address = balancer.addr();
        tokio::spawn(async move {
            let mut client = common::client::TestClient::connect(address).await;
            loop {
                if client.get("/").await.is_err() {
                    client = common::client::TestClient::connect(address).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let url = format!("http://{admin}/");
    let dom = chromium(&browser, &url, &["--dump-dom"]).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page rendered /status:\n{dom}"
    );
    let banner = tag_attributes(&dom, "id=\"connection-lost\"").expect("the banner exists");
    assert!(banner.contains_key("hidden"), "connected: banner hidden");
    let reload = tag_attributes(&dom, "id=\"last-reload\"").expect("#last-reload exists");
    assert_eq!(reload.get("data-result").map(String::as_str), Some("none"));
    assert!(dom.contains(env!("CARGO_PKG_VERSION")), "version shown");
    for (address, state) in expected {
        let needle = format!("data-backend=\"{address}\"");
        let attributes = tag_attributes(&dom, &needle)
            .unwrap_or_else(|| panic!("backend {address} not on the page:\n{dom}"));
        assert_eq!(
            attributes.get("data-state").map(String::as_str),
            Some(state),
            "{address}: {attributes:?}"
        );
        assert_eq!(dom.matches(&needle).count(), 1, "{address} shown once");
    }
    // The state is also written out, not only coloured.
    assert!(dom.contains(">unhealthy</span>"), "state as text");
    assert!(dom.contains("data-listener=\"web\""), "listener row");
    assert!(
        dom.contains(&balancer.addr().to_string()),
        "listener address"
    );

    let target = target_dir();
    for (width, height) in [(390, 844), (1280, 800)] {
        let path = target.join(format!("dashboard-{width}.png"));
        let _ = std::fs::remove_file(&path);
        chromium(
            &browser,
            &url,
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={width},{height}"),
            ],
        )
        .await;
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|err| panic!("screenshot {}: {err}", path.display()))
            .len();
        assert!(size > 10_000, "{} is {size} bytes", path.display());
        println!("screenshot: {}", path.display());
    }
    traffic.abort();
    balancer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_hash_shares_and_the_sticky_cookie_in_chromium() {
    let Some(browser) = common::tools::require_tool("chromium") else {
        return;
    };
    let a = TestBackend::spawn("a").await;
    let b = TestBackend::spawn("b").await;
    let (mut balancer, admin) = TestBalancer::builder()
        .algorithm("consistent_hash")
        .backend(a.addr())
        .weighted(b.addr(), 3)
        .pool("hash_key", "\"header:x-user-id\"")
        .pool("sticky", "{ cookie = \"srv\" }")
        .start_with_admin()
        .await;
    let document = status(admin).await;
    let dom = chromium(&browser, &format!("http://{admin}/"), &["--dump-dom"]).await;
    assert!(dom.contains("data-loaded=\"true\""), "rendered:\n{dom}");
    assert!(
        dom.contains(">sticky cookie srv</span>"),
        "sticky tag:\n{dom}"
    );
    for address in [a.addr(), b.addr()] {
        let share = backend(&document, address)["table_share"]
            .as_f64()
            .expect("a table_share");
        let shown = format!(
            "<div><dt>hash share</dt><dd data-field=\"table_share\">{} %</dd></div>",
            (share * 10.0).round() / 10.0
        );
        assert!(dom.contains(&shown), "{shown} not on the page:\n{dom}");
    }
    balancer.stop().await;
}
