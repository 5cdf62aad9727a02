//! The page in headless Chromium, driven over the DevTools protocol (skipped when Chromium is
//! not installed; a failure under `CI=true`).

use super::*;

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
    let Some(chromium) = common::tools::require_tool("chromium") else {
        return;
    };
    bounded_for(Duration::from_secs(120), async {
        let site = Site::start(3).await;
        let profile = TempDir::new("chromium");
        let mut browser = tokio::process::Command::new(&chromium)
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
