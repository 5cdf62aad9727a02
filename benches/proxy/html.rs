//! The HTML report: one self-contained page drawn from the bench's JSON report (the same
//! `serde_json::Value` the bench writes, or a recorded one). Per scenario a table of the medians
//! and charts drawn with `plotters` as inline SVG: throughput, the proxy's CPU per request split
//! into user and system time, peak RSS, and every contender's latency percentile curve
//! (p50 … p99.99, both axes logarithmic); the idle scenarios get memory per connection instead.
//! No script, no external file: the page opens from disk and prints as it is.
//!
//! This file only depends on `serde_json` and `plotters`, so `tests/bench_report.rs` includes it
//! with `#[path]` and renders a recorded report in headless Chromium.

use std::fmt::Write as _;

use plotters::coord::CoordTranslate;
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// Width and height of one chart, in CSS pixels.
const CHART_SIZE: (u32, u32) = (460, 270);
/// The font every chart's text uses.
const FONT: &str = "sans-serif";

/// Each contender's colour, in every chart (others, if any, get grey).
fn colour(contender: &str) -> RGBColor {
    match contender {
        "direct" => RGBColor(140, 140, 140),
        "fulcrum" => RGBColor(214, 96, 38),
        "nginx" => RGBColor(46, 139, 87),
        "haproxy" => RGBColor(52, 101, 164),
        _ => RGBColor(90, 90, 90),
    }
}

/// The page's stylesheet.
const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1440px;padding:0 1rem;color:#222}\
h1{font-size:1.5rem}h2{font-size:1.2rem;margin:0 0 .2rem}\
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dl.meta dt{font-weight:600}\
dl.meta dd{margin:0}code{font-size:.9em;word-break:break-all}\
nav a{margin-right:.8rem}section{border-top:1px solid #ccc;margin-top:1.5rem;padding-top:1rem}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:.6rem 0}\
th,td{padding:.15rem .6rem;text-align:right;border-bottom:1px solid #eee}th:first-child,td:first-child{text-align:left}\
.note{color:#666;text-align:left}.charts{display:flex;flex-wrap:wrap;gap:.5rem}figure{margin:0}\
figure svg{max-width:100%;height:auto}.error{color:#b00}";

/// The percentiles drawn, in percent.
const PERCENTILES: [f64; 4] = [50.0, 99.0, 99.9, 99.99];

/// The percentile curve's x position of `p` (percent): `-log10(1 - p/100)` in thousandths, so
/// p99, p99.9 and p99.99 sit one decade (1000) apart and p50 at 301.
fn percentile_x(p: f64) -> i32 {
    (-(1.0 - p / 100.0).log10() * 1000.0).round() as i32
}

/// Each bar's slot on a bar chart's x axis (integer coordinates, so the axis can carry the
/// contenders' names as labels).
const SLOT: i32 = 100;

/// Renders the whole report.
pub fn render(report: &Value) -> String {
    let text = |value: &Value| value.as_str().map(escape).unwrap_or_else(|| "?".to_owned());
    let machine = &report["machine"];
    let options = &report["options"];
    let mut html = String::new();
    let _ = writeln!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>fulcrum proxy bench {started}</title><style>{STYLE}</style></head><body>\n\
         <h1>fulcrum end-to-end benchmark</h1>\n<dl class=\"meta\">\
         <dt>started (UTC)</dt><dd id=\"started\">{started}</dd>\
         <dt>commit</dt><dd id=\"commit\"><code>{commit}</code></dd>\
         <dt>command</dt><dd id=\"command\"><code>{command}</code></dd>\
         <dt>machine</dt><dd id=\"machine\">{cores} cores, {cpu}, Linux {kernel}; {pinned}</dd>\
         <dt>load generator</dt><dd>{load} (1 thread)</dd>\
         <dt>runs</dt><dd>{rounds} round(s) of {duration} s (+{warmup} s warm-up) per contender, \
         contenders alternating; medians shown</dd></dl>",
        started = text(&report["started_utc"]),
        commit = text(&report["commit"]),
        command = text(&report["command"]),
        cores = machine["cores"],
        cpu = text(&machine["cpu"]),
        kernel = text(&machine["kernel"]),
        pinned = if machine["pinned"].as_bool() == Some(true) {
            "proxy pinned to core 1, load generator and backends to core 0"
        } else {
            "not pinned"
        },
        load = text(&machine["load_generator"]),
        rounds = options["rounds"],
        duration = options["duration_s"],
        warmup = options["warmup_s"],
    );
    let scenarios = report["scenarios"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    html.push_str("<nav>");
    for scenario in scenarios {
        let name = text(&scenario["name"]);
        let _ = write!(html, "<a href=\"#s-{name}\">{name}</a>");
    }
    html.push_str("</nav>\n");
    for scenario in scenarios {
        render_scenario(&mut html, scenario);
    }
    html.push_str("</body></html>\n");
    html
}

/// One scenario's section: heading, table, charts.
fn render_scenario(html: &mut String, scenario: &Value) {
    let name = escape(scenario["name"].as_str().unwrap_or("?"));
    let _ = writeln!(
        html,
        "<section id=\"s-{name}\" data-scenario=\"{name}\"><h2>{name}</h2><p>{}</p>",
        escape(scenario["about"].as_str().unwrap_or(""))
    );
    if let Some(reason) = scenario["skipped"].as_str() {
        let _ = writeln!(html, "<p class=\"note\">{}</p></section>", escape(reason));
        return;
    }
    let contenders = scenario["contenders"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let measured: Vec<(&str, &Value)> = contenders
        .iter()
        .filter(|c| c["runs"].as_array().is_some_and(|runs| !runs.is_empty()))
        .map(|c| (c["contender"].as_str().unwrap_or("?"), &c["median"]))
        .collect();
    let idle = measured
        .iter()
        .any(|(_, median)| median["idle"].is_object());
    if idle {
        idle_table(html, contenders);
    } else {
        load_table(html, scenario, contenders);
    }
    html.push_str("<div class=\"charts\">\n");
    let charts = if idle {
        idle_charts(&measured)
    } else {
        load_charts(scenario, &measured)
    };
    for (kind, chart) in charts {
        let _ = write!(html, "<figure data-chart=\"{kind}\">");
        match chart {
            Ok(svg) => html.push_str(&svg),
            Err(err) => {
                let _ = write!(
                    html,
                    "<p class=\"error\">chart failed: {}</p>",
                    escape(&err)
                );
            }
        }
        html.push_str("</figure>\n");
    }
    html.push_str("</div></section>\n");
}

/// A median as a number, if there is one.
fn number(value: &Value) -> Option<f64> {
    value.as_f64().filter(|v| v.is_finite())
}

/// A latency in µs, as the console tables print it.
fn latency(value: &Value) -> String {
    match number(value) {
        None => "–".to_owned(),
        Some(us) if us >= 1e6 => format!("{:.2} s", us / 1e6),
        Some(us) if us >= 1e3 => format!("{:.2} ms", us / 1e3),
        Some(us) => format!("{us:.0} µs"),
    }
}

/// `value` formatted, or a dash.
fn or_dash(value: &Value, format: impl Fn(f64) -> String) -> String {
    number(value).map_or_else(|| "–".to_owned(), format)
}

/// A row for a contender that did not run, or whose runs all failed; `None` if it ran.
fn absent_row(contender: &Value, columns: usize) -> Option<String> {
    let name = escape(contender["contender"].as_str().unwrap_or("?"));
    let why = match contender["skipped"].as_str() {
        Some(reason) => format!("skipped: {reason}"),
        None if contender["runs"].as_array().is_some_and(|r| r.is_empty()) => format!(
            "failed: {}",
            contender["failures"][0]
                .as_str()
                .unwrap_or("no run completed")
        ),
        None => return None,
    };
    Some(format!(
        "<tr data-contender=\"{name}\"><td>{name}</td><td colspan=\"{columns}\" class=\"note\">{}</td></tr>\n",
        escape(&why)
    ))
}

/// The medians of a scenario with load.
fn load_table(html: &mut String, scenario: &Value, contenders: &[Value]) {
    let unit = escape(scenario["rate_unit"].as_str().unwrap_or("req/s"));
    let per = if unit == "MiB/s" { "MiB" } else { "req" };
    let _ = writeln!(
        html,
        "<table><thead><tr><th>contender</th><th>{unit}</th><th>p50</th><th>p99</th>\
         <th>p99.9</th><th>p99.99</th><th>errors</th><th>CPU/{per}</th><th>user</th>\
         <th>system</th><th>proxy core</th><th>peak RSS</th></tr></thead><tbody>"
    );
    for contender in contenders {
        if let Some(row) = absent_row(contender, 11) {
            html.push_str(&row);
            continue;
        }
        let name = escape(contender["contender"].as_str().unwrap_or("?"));
        let median = &contender["median"];
        let percent = &median["latency_us"];
        let micros = |value: &Value| or_dash(value, |us| format!("{us:.1} µs"));
        let _ = writeln!(
            html,
            "<tr data-contender=\"{name}\"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            or_dash(&median["rate"], |r| format!("{r:.0}")),
            latency(&percent["p50"]),
            latency(&percent["p99"]),
            latency(&percent["p99.9"]),
            latency(&percent["p99.99"]),
            or_dash(&median["errors"], |e| format!("{e:.0}")),
            micros(&median["proxy_cpu_us_per_op"]),
            micros(&median["proxy_user_us_per_op"]),
            micros(&median["proxy_system_us_per_op"]),
            or_dash(&median["proxy_core_share"], |c| format!(
                "{:.0} %",
                c * 100.0
            )),
            or_dash(&median["proxy_peak_rss_kib"], |k| format!(
                "{:.1} MiB",
                k / 1024.0
            )),
        );
    }
    html.push_str("</tbody></table>\n");
}

/// The medians of an idle scenario.
fn idle_table(html: &mut String, contenders: &[Value]) {
    html.push_str(
        "<table><thead><tr><th>contender</th><th>idle RSS</th><th>loaded RSS</th><th>added</th>\
         <th>per connection</th><th>closed</th><th>opened</th><th>failed</th><th>kept</th>\
         <th>parked</th></tr></thead><tbody>\n",
    );
    for contender in contenders {
        if let Some(row) = absent_row(contender, 9) {
            html.push_str(&row);
            continue;
        }
        let name = escape(contender["contender"].as_str().unwrap_or("?"));
        let idle = &contender["median"]["idle"];
        let mib = |value: &Value| or_dash(value, |k| format!("{:.1} MiB", k / 1024.0));
        let count = |value: &Value| or_dash(value, |n| format!("{n:.0}"));
        let _ = writeln!(
            html,
            "<tr data-contender=\"{name}\"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            mib(&idle["rss_idle_kib"]),
            mib(&idle["rss_loaded_kib"]),
            mib(&idle["added_kib"]),
            per_connection_kib(idle).map_or_else(|| "–".to_owned(), |k| format!("{k:.2} KiB")),
            mib(&idle["rss_closed_kib"]),
            count(&idle["connections_opened"]),
            count(&idle["connections_failed"]),
            count(&idle["connections_still_open"]),
            count(&idle["connections_parked"]),
        );
    }
    html.push_str("</tbody></table>\n");
}

/// What one opened connection added, in KiB.
fn per_connection_kib(idle: &Value) -> Option<f64> {
    Some(number(&idle["added_kib"])? / number(&idle["connections_opened"])?.max(1.0))
}

/// A drawn chart (SVG) or why it could not be drawn, tagged with its kind.
type Chart = (&'static str, Result<String, String>);

/// Throughput, CPU per request (user + system), peak RSS and the latency curve.
fn load_charts(scenario: &Value, measured: &[(&str, &Value)]) -> Vec<Chart> {
    let unit = scenario["rate_unit"].as_str().unwrap_or("req/s");
    let per = if unit == "MiB/s" { "MiB" } else { "request" };
    let bars = |field: &str| -> Vec<Bar> {
        measured
            .iter()
            .filter_map(|(name, median)| {
                Some(Bar {
                    name,
                    segments: vec![number(&median[field])?],
                })
            })
            .collect()
    };
    let cpu: Vec<Bar> = measured
        .iter()
        .filter_map(|(name, median)| {
            let user = number(&median["proxy_user_us_per_op"]);
            let system = number(&median["proxy_system_us_per_op"]);
            let segments = match (user, system) {
                (Some(user), Some(system)) => vec![user, system],
                _ => vec![number(&median["proxy_cpu_us_per_op"])?],
            };
            Some(Bar { name, segments })
        })
        .collect();
    let rss: Vec<Bar> = bars("proxy_peak_rss_kib")
        .into_iter()
        .map(|bar| Bar {
            segments: bar.segments.iter().map(|kib| kib / 1024.0).collect(),
            ..bar
        })
        .collect();
    let mut charts = vec![
        (
            "rate",
            bar_chart(&format!("throughput ({unit})"), &bars("rate"), &[]),
        ),
        (
            "cpu",
            bar_chart(
                &format!("proxy CPU per {per} (µs)"),
                &cpu,
                &["user", "system"],
            ),
        ),
        ("rss", bar_chart("proxy peak RSS (MiB)", &rss, &[])),
    ];
    let curves: Vec<(&str, Vec<(i32, f64)>)> = measured
        .iter()
        .map(|(name, median)| {
            let points = median["latency_us"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(key, value)| {
                    let p: f64 = key.strip_prefix('p')?.parse().ok()?;
                    Some((percentile_x(p), number(value).filter(|us| *us > 0.0)?))
                })
                .collect();
            (*name, points)
        })
        .filter(|(_, points): &(&str, Vec<(i32, f64)>)| !points.is_empty())
        .collect();
    if !curves.is_empty() {
        charts.push(("latency", latency_chart(&curves)));
    }
    charts
}

/// Memory per idle connection and the proxy's RSS idle and loaded.
fn idle_charts(measured: &[(&str, &Value)]) -> Vec<Chart> {
    let per_connection: Vec<Bar> = measured
        .iter()
        .filter_map(|(name, median)| {
            Some(Bar {
                name,
                segments: vec![per_connection_kib(&median["idle"])?],
            })
        })
        .collect();
    let rss: Vec<Bar> = measured
        .iter()
        .filter_map(|(name, median)| {
            let idle = &median["idle"];
            let before = number(&idle["rss_idle_kib"])? / 1024.0;
            let after = number(&idle["rss_loaded_kib"])? / 1024.0;
            Some(Bar {
                name,
                segments: vec![before, (after - before).max(0.0)],
            })
        })
        .collect();
    vec![
        (
            "per-connection",
            bar_chart("memory per idle connection (KiB)", &per_connection, &[]),
        ),
        (
            "rss",
            bar_chart(
                "proxy RSS (MiB)",
                &rss,
                &["idle", "added by the connections"],
            ),
        ),
    ]
}

/// One bar: a contender and its stacked values, bottom first.
struct Bar<'a> {
    name: &'a str,
    segments: Vec<f64>,
}

/// Bars, one per contender in its colour; stacked segments get lighter upwards and are named
/// in a legend when `segment_names` are given. The total is written above each bar.
fn bar_chart(title: &str, bars: &[Bar], segment_names: &[&str]) -> Result<String, String> {
    let top = bars
        .iter()
        .map(|bar| bar.segments.iter().sum::<f64>())
        .fold(0.0, f64::max);
    // Room above the tallest bar for its value, and for the legend when there is one.
    let headroom = if segment_names.is_empty() { 1.18 } else { 1.5 };
    let top = if top > 0.0 { top * headroom } else { 1.0 };
    let count = i32::try_from(bars.len()).map_err(|e| e.to_string())?;
    let centres: Vec<i32> = (0..count).map(|i| i * SLOT + SLOT / 2).collect();
    let names: Vec<&str> = bars.iter().map(|bar| bar.name).collect();
    let shade = |colour: RGBColor, segment: usize| colour.mix(1.0 - 0.45 * segment as f64);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 17))
            .margin(10)
            .x_label_area_size(26)
            .y_label_area_size(58)
            .build_cartesian_2d((0..count.max(1) * SLOT).with_key_points(centres), 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| {
                usize::try_from(x / SLOT)
                    .ok()
                    .and_then(|i| names.get(i))
                    .map_or_else(String::new, |name| (*name).to_owned())
            })
            .y_labels(6)
            .y_label_formatter(&|y| compact(*y))
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, bar) in (0..count).zip(bars) {
            let (left, right) = (i * SLOT + SLOT / 6, i * SLOT + SLOT * 5 / 6);
            let mut base = 0.0;
            for (segment, value) in bar.segments.iter().enumerate() {
                let fill = shade(colour(bar.name), segment).filled();
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(left, base), (right, base + value)],
                        fill,
                    )))
                    .map_err(|e| e.to_string())?;
                base += value;
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    compact(base),
                    (i * SLOT + SLOT / 2, base + top * 0.02),
                    (FONT, 13)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))
                .map_err(|e| e.to_string())?;
        }
        for (segment, name) in segment_names.iter().enumerate() {
            chart
                .draw_series(std::iter::empty::<Rectangle<(i32, f64)>>())
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new(
                        [(x, y - 5), (x + 12, y + 5)],
                        shade(BLACK, segment).filled(),
                    )
                });
        }
        if !segment_names.is_empty() {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Every contender's latency at p50, p99, p99.9 and p99.99 as a line; both axes logarithmic.
fn latency_chart(curves: &[(&str, Vec<(i32, f64)>)]) -> Result<String, String> {
    let values = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1));
    let (low, high) = values.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (low, high) = (low / 1.5, high * 1.5);
    let keys: Vec<i32> = PERCENTILES.map(percentile_x).to_vec();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let x_axis = (0..4300).with_key_points(keys);
        let mut chart = ChartBuilder::on(&root)
            .caption("latency by percentile (log scale)", (FONT, 17))
            .margin(10)
            .x_label_area_size(26)
            .y_label_area_size(58)
            .build_cartesian_2d(x_axis, (low..high).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| percentile_name(*x))
            .y_label_formatter(&|us| short_latency(*us))
            .y_labels(8)
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, points) in curves {
            let style = colour(name).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style));
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&point| Circle::new(point, 3, colour(name).filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The legend of the labelled series, boxed at `position`.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())
}

/// `p50`, `p99`, … for a key point of the percentile axis.
fn percentile_name(x: i32) -> String {
    PERCENTILES
        .into_iter()
        .find(|p| percentile_x(*p) == x)
        .map_or_else(String::new, |p| format!("p{p}"))
}

/// A latency axis label: `850us`, `1.2ms`, `2s`.
fn short_latency(us: f64) -> String {
    if us >= 1e6 {
        format!("{}s", compact(us / 1e6))
    } else if us >= 1e3 {
        format!("{}ms", compact(us / 1e3))
    } else {
        format!("{}us", compact(us))
    }
}

/// A number with about three significant digits and thousands as `k`.
fn compact(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude == 0.0 {
        "0".to_owned()
    } else if magnitude >= 10_000.0 {
        format!("{:.0}k", value / 1e3)
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// Text made safe for HTML content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
