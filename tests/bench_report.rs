//! The proxy bench's HTML report (`benches/proxy/html.rs`, included here as it is), rendered from
//! a recorded `cargo bench --bench proxy -- --quick` report (`tests/fixtures/bench-proxy.json`)
//! and opened in headless Chromium (skipped when none is installed; a failure under `CI=true`).

#[path = "../benches/proxy/html.rs"]
mod html;
// Only `require_tool` is used here.
#[allow(dead_code)]
#[path = "common/tools.rs"]
mod tools;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The recorded report.
fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bench-proxy.json");
    let text = std::fs::read_to_string(&path).expect("read the recorded report");
    serde_json::from_str(&text).expect("the recorded report is JSON")
}

/// The charts a scenario's section should carry: none when skipped, memory charts for the idle
/// scenarios, throughput, CPU, RSS and latency for the others (no latency for L4).
fn expected_charts(scenario: &Value) -> Vec<&'static str> {
    if scenario["skipped"].is_string() {
        return Vec::new();
    }
    let medians = scenario["contenders"]
        .as_array()
        .expect("contenders")
        .iter()
        .filter(|c| c["runs"].as_array().is_some_and(|runs| !runs.is_empty()))
        .map(|c| &c["median"])
        .collect::<Vec<_>>();
    if medians.iter().any(|median| median["idle"].is_object()) {
        vec!["per-connection", "rss"]
    } else if scenario["rate_unit"] == "MiB/s" {
        vec!["rate", "cpu", "rss"]
    } else {
        vec!["rate", "cpu", "rss", "latency"]
    }
}

/// The `data-chart` kinds of the figures in `name`'s section of `html`.
fn charts_in_section(html: &str, name: &str) -> Vec<String> {
    let start = html
        .find(&format!("data-scenario=\"{name}\""))
        .unwrap_or_else(|| panic!("no section for {name}"));
    let end = start + html[start..].find("</section>").expect("section closed");
    html[start..end]
        .match_indices("data-chart=\"")
        .map(|(at, needle)| {
            let rest = &html[start + at + needle.len()..end];
            rest[..rest.find('"').expect("attribute closed")].to_owned()
        })
        .collect()
}

#[test]
fn the_report_has_every_scenario_its_charts_and_no_script() {
    let report = fixture();
    let html = html::render(&report);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        !html.to_ascii_lowercase().contains("<script"),
        "no JavaScript"
    );
    for fetch in [" src=", "<link", "@import", "url("] {
        assert!(
            !html.contains(fetch),
            "nothing loaded from elsewhere ({fetch})"
        );
    }
    assert!(!html.contains("chart failed"), "every chart drawn");
    for key in ["commit", "command", "started_utc"] {
        let value = report[key].as_str().expect("recorded");
        assert!(html.contains(value), "{key} {value:?} shown");
    }
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert!(scenarios.len() >= 10, "a whole --quick run was recorded");
    let mut figures = 0;
    for scenario in scenarios {
        let name = scenario["name"].as_str().expect("name");
        let charts = charts_in_section(&html, name);
        assert_eq!(charts, expected_charts(scenario), "{name}");
        figures += charts.len();
        for contender in scenario["contenders"].as_array().expect("contenders") {
            let row = format!(
                "<tr data-contender=\"{}\">",
                contender["contender"].as_str().unwrap_or("?")
            );
            assert!(
                scenario["skipped"].is_string() || html.contains(&row),
                "{name}: a row for {contender}"
            );
        }
    }
    assert_eq!(html.matches("<svg").count(), figures, "one SVG per chart");
    // The three-nginx scenarios and both idle scenarios are in the recording.
    for name in [
        "keepalive-64-3nginx",
        "keepalive-1000-3nginx",
        "idle-2k",
        "idle-10k",
    ] {
        assert!(
            !charts_in_section(&html, name).is_empty(),
            "{name} was measured"
        );
    }
}

#[test]
fn a_skipped_scenario_and_a_failed_contender_are_said_so() {
    let report = serde_json::json!({
        "started_utc": "20261203-000000",
        "commit": "abc",
        "command": "cargo bench --bench proxy -- --quick",
        "machine": {"cores": 2, "pinned": false, "load_generator": "wrk"},
        "options": {"rounds": 1, "duration_s": 1, "warmup_s": 0},
        "scenarios": [
            {"name": "h2", "about": "HTTP/2", "skipped": "skipped: h2load not installed <here>", "contenders": []},
            {"name": "keepalive-64", "about": "13 B", "rate_unit": "req/s", "skipped": null, "contenders": [
                {"contender": "fulcrum", "skipped": null, "failures": ["did not start"], "runs": [], "median": {}},
                {"contender": "nginx", "skipped": "nginx not installed", "failures": [], "runs": [], "median": {}},
            ]},
        ],
    });
    let html = html::render(&report);
    assert!(
        html.contains("skipped: h2load not installed &lt;here&gt;"),
        "escaped: {html}"
    );
    assert!(html.contains("failed: did not start"));
    assert!(html.contains("skipped: nginx not installed"));
    assert!(charts_in_section(&html, "h2").is_empty());
}

/// Runs headless Chromium on `url` with `args` and returns its stdout; killed after a minute.
fn chromium(browser: &Path, url: &str, args: &[&str]) -> String {
    let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bench-report-chromium-{}-{}",
        std::process::id(),
        args.len()
    ));
    std::fs::create_dir_all(&profile).expect("create a chromium profile dir");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            // The page must not need the network: give it none.
            "--proxy-server=127.0.0.1:9",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium failed: {status}");
    reader
        .join()
        .expect("reader thread")
        .expect("chromium's output is UTF-8")
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(browser) = tools::require_tool("chromium") else {
        return;
    };
    let report = fixture();
    let html = html::render(&report);
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let page = target.join("bench-report.html");
    std::fs::write(&page, &html).expect("write the page");
    let url = format!("file://{}", page.display());

    let dom = chromium(&browser, &url, &["--dump-dom"]);
    assert_eq!(
        dom.matches("<svg").count(),
        html.matches("<svg").count(),
        "every chart parsed as SVG"
    );
    for scenario in report["scenarios"].as_array().expect("scenarios") {
        let name = scenario["name"].as_str().expect("name");
        assert!(
            dom.contains(&format!("data-scenario=\"{name}\"")),
            "{name} in the DOM"
        );
    }
    assert!(dom.contains(">p99.99<"), "the percentile axis is labelled");
    assert!(dom.contains(">fulcrum<"), "contenders named on the charts");

    let screenshot = target.join("bench-report.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &browser,
        &url,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,2400",
        ],
    );
    let size = std::fs::metadata(&screenshot)
        .unwrap_or_else(|err| panic!("screenshot {}: {err}", screenshot.display()))
        .len();
    assert!(size > 50_000, "{} is {size} bytes", screenshot.display());
    println!("screenshot: {}", screenshot.display());
}
