//! Micro-benchmarks of the hot path's pure parts: backend selection, routing, header rewriting,
//! and config parsing. Everything goes through the public API the proxy itself uses.
//!
//! ```sh
//! cargo bench --bench micro                 # all of them
//! cargo bench --bench micro -- pick         # only the balancer
//! cargo bench --bench micro -- --quick      # criterion's short mode (noisier)
//! ```
//!
//! Balancer benchmarks build a pool of N backends (`127.0.0.1:10000+i`, no health checks, so
//! every backend is up) through `Config::parse` and `Snapshot::build`, then time
//! `Pool::pick(&Tried::default())` — for keyed algorithms (consistent_hash) a `Tried` carrying
//! a new key hash each iteration, as each request brings its own. The algorithms are the rows
//! of [`ALGORITHMS`]; adding one is one line there. "build" times building a consistent_hash
//! ring from the pool's endpoints (what a config load or reload does per such pool). "contended" runs the same picks on several threads at once
//! against one shared pool; its throughput is picks per second summed over the threads.
//! "weighted" gives the backends weights 1, 2, 3, 1, 2, 3, … instead of all 1 (round-robin then
//! steps through a precomputed order instead of counting through the backends).
//!
//! The router benchmark builds one listener with 1,000 routes over 200 hosts (each host has five
//! path-prefix routes, one with a method and one with a header condition) and times a match for
//! a request to the last route of a host, the worst case of the file-order scan.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use fulcrum::Config;
use fulcrum::bench::{
    Balancer, ClientInfo, Pool, Snapshot, Tried, prepare_request, prepare_response,
};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};

/// Pool sizes the balancer is measured at.
const SIZES: [usize; 4] = [2, 16, 256, 4096];

/// One algorithm under measurement: its name in the config, extra `[pools.app]` lines it needs,
/// and whether its picks take a per-request key.
struct Algorithm {
    name: &'static str,
    extra: &'static str,
    keyed: bool,
}

/// The algorithms the pick benchmarks run.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm {
        name: "round_robin",
        extra: "",
        keyed: false,
    },
    Algorithm {
        name: "least_connections",
        extra: "",
        keyed: false,
    },
    Algorithm {
        name: "peak_ewma",
        extra: "",
        keyed: false,
    },
    Algorithm {
        name: "consistent_hash",
        extra: "hash_key = \"header:x-user-id\"\nhash_balance_factor = 125",
        keyed: true,
    },
];
/// Threads picking at once in the contended benchmarks.
const THREADS: usize = 4;

/// A config whose only pool has `backends` backends, parsed like a file from disk; `weighted`
/// gives them weights 1, 2, 3, 1, … instead of all 1.
fn config_with(algorithm: &Algorithm, backends: usize, weighted: bool) -> Config {
    let list: Vec<String> = (0..backends)
        .map(|i| {
            if weighted {
                format!(
                    "{{ address = \"127.0.0.1:{}\", weight = {} }}",
                    10_000 + i,
                    1 + i % 3
                )
            } else {
                format!("\"127.0.0.1:{}\"", 10_000 + i)
            }
        })
        .collect();
    let source = format!(
        "[[listeners]]\nname = \"bench\"\nlisten = \"127.0.0.1:8080\"\npool = \"app\"\n\n\
         [pools.app]\nalgorithm = \"{}\"\nbackends = [{}]\n{}\n",
        algorithm.name,
        list.join(", "),
        algorithm.extra,
    );
    match Config::parse("bench.toml", &source) {
        Ok(config) => config,
        Err(err) => panic!("generated config does not parse: {err}"),
    }
}

/// The pool the proxy would pick from for that config.
fn pool_with(algorithm: &Algorithm, backends: usize, weighted: bool) -> Arc<Pool> {
    let snapshot = Snapshot::build(Arc::new(config_with(algorithm, backends, weighted)), None);
    match snapshot.pool("app") {
        Some(pool) => Arc::clone(pool),
        None => panic!("pool app missing from the snapshot"),
    }
}

/// Picks from `pool`: with one fixed `Tried`, or with a new key per pick for keyed algorithms.
fn picker(pool: &Pool, keyed: bool) -> impl FnMut() -> Option<usize> + '_ {
    let tried = Tried::default();
    let mut key: u64 = 0;
    move || {
        if keyed {
            // A new, well-spread key hash each time (Weyl sequence), like requests of many users.
            key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
            pool.pick(black_box(&Tried::new(Some(key), None, false)))
        } else {
            pool.pick(black_box(&tried))
        }
    }
}

fn pick(c: &mut Criterion) {
    for algorithm in ALGORITHMS {
        let mut group = c.benchmark_group(format!("pick/{}", algorithm.name));
        for size in SIZES {
            let pool = pool_with(algorithm, size, false);
            group.throughput(Throughput::Elements(1));
            let mut next = picker(&pool, algorithm.keyed);
            group.bench_with_input(BenchmarkId::new("single", size), &size, |b, _| {
                b.iter(|| black_box(next()));
            });
            let weighted = pool_with(algorithm, size, true);
            let mut next = picker(&weighted, algorithm.keyed);
            group.bench_with_input(BenchmarkId::new("single-weighted", size), &size, |b, _| {
                b.iter(|| black_box(next()));
            });
            group.throughput(Throughput::Elements(THREADS as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("contended-{THREADS}t"), size),
                &size,
                |b, _| b.iter_custom(|iters| contended(&pool, algorithm.keyed, iters)),
            );
        }
        group.finish();
    }
    let Some(hashing) = ALGORITHMS.iter().find(|a| a.name == "consistent_hash") else {
        panic!("consistent_hash is one of ALGORITHMS");
    };
    let mut group = c.benchmark_group("build/consistent_hash");
    for size in [256, 4096] {
        let pool = pool_with(hashing, size, false);
        group.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                black_box(Balancer::consistent_hash(
                    black_box(&pool.endpoints),
                    125,
                    metrics::Counter::noop(),
                ))
            });
        });
    }
    group.finish();
}

/// Wall time for `THREADS` threads to make `iters` picks each on the same pool.
fn contended(pool: &Arc<Pool>, keyed: bool, iters: u64) -> Duration {
    let start = Arc::new(Barrier::new(THREADS + 1));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let pool = Arc::clone(pool);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let mut next = picker(&pool, keyed);
                start.wait();
                for _ in 0..iters {
                    black_box(next());
                }
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for thread in threads {
        if thread.join().is_err() {
            panic!("a picking thread panicked");
        }
    }
    began.elapsed()
}

/// A browser-like HTTP/1.1 request head, as hyper hands it to the proxy.
fn request_headers(forwarded: bool) -> HeaderMap {
    let mut map = HeaderMap::new();
    let pairs: &[(&str, &str)] = &[
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        (
            "cookie",
            "session=6f1c2a9e0b7d4f38a1c5e2d9b0a7f3c1; theme=dark",
        ),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("priority", "u=0, i"),
    ];
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    if forwarded {
        map.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
    }
    map
}

/// A typical app-server response head.
fn response_headers() -> HeaderMap {
    let mut map = HeaderMap::new();
    let pairs: &[(&str, &str)] = &[
        ("content-type", "application/json"),
        ("content-length", "1432"),
        ("date", "Sun, 01 Nov 2026 12:00:00 GMT"),
        ("cache-control", "no-store"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=60"),
        ("x-served-by", "app-2"),
        (
            "set-cookie",
            "session=6f1c2a9e0b7d4f38; Path=/; HttpOnly; Secure",
        ),
    ];
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

fn headers(c: &mut Criterion) {
    let client = ClientInfo {
        ip: HeaderValue::from_static("203.0.113.7"),
        proto: HeaderValue::from_static("http"),
    };
    let mut group = c.benchmark_group("headers");
    group.throughput(Throughput::Elements(1));
    for (name, forwarded, target, version) in [
        ("request/h1", false, "/api/items?page=2", Version::HTTP_11),
        (
            "request/h1-forwarded",
            true,
            "/api/items?page=2",
            Version::HTTP_11,
        ),
        (
            "request/h2-absolute",
            false,
            "http://shop.example.com/api/items?page=2",
            Version::HTTP_2,
        ),
    ] {
        let template = request_headers(forwarded);
        let uri = Uri::from_static(target);
        // The clone is made in criterion's untimed setup; only the rewrite is timed: for
        // HTTP/1.1 backends the forwarding fields are written as field lines (as the encoder
        // does), for HTTP/2 ones they go into the map.
        group.bench_function(name, |b| {
            b.iter_batched(
                || (uri.clone(), template.clone(), Vec::with_capacity(256)),
                |(mut uri, mut map, mut lines)| {
                    let forwarding = prepare_request(&mut uri, version, &mut map, &client);
                    if version == Version::HTTP_2 {
                        forwarding.apply(&mut map);
                    } else {
                        forwarding.write(map.get(http::header::HOST), &mut lines);
                    }
                    (uri, map, lines)
                },
                criterion::BatchSize::SmallInput,
            );
        });
    }
    let template = response_headers();
    group.bench_function("response/h1", |b| {
        b.iter_batched(
            || template.clone(),
            |mut map| {
                prepare_response(Version::HTTP_11, &mut map);
                map
            },
            criterion::BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn config(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fulcrum.toml");
    let source = match std::fs::read_to_string(path) {
        Ok(source) => source,
        Err(err) => panic!("cannot read {path}: {err}"),
    };
    let mut group = c.benchmark_group("config");
    group.throughput(Throughput::Bytes(source.len() as u64));
    group.bench_function("parse/fulcrum.toml", |b| {
        b.iter(|| black_box(Config::parse("config/fulcrum.toml", black_box(&source))).is_ok());
    });
    group.finish();
}

/// 1,000 routes over 200 hosts: for each host `hN.example.com`, five routes on `/a` … `/e`,
/// the fourth only for POST, the fifth only with `x-canary: 1`.
fn routing_config() -> Config {
    let mut source = String::from(
        "[[listeners]]\nname = \"bench\"\nlisten = \"127.0.0.1:8080\"\npool = \"app\"\n",
    );
    for host in 0..200 {
        for (index, path) in ["/a", "/b", "/c", "/d", "/e"].iter().enumerate() {
            source.push_str(&format!(
                "[[listeners.routes]]\nhost = \"h{host}.example.com\"\npath_prefix = \"{path}\"\npool = \"app\"\n"
            ));
            match index {
                3 => source.push_str("methods = [\"POST\"]\n"),
                4 => source.push_str("headers = { \"x-canary\" = \"1\" }\n"),
                _ => {}
            }
        }
    }
    source.push_str("[pools.app]\nbackends = [\"127.0.0.1:10000\"]\n");
    match Config::parse("bench.toml", &source) {
        Ok(config) => config,
        Err(err) => panic!("generated config does not parse: {err}"),
    }
}

fn routing(c: &mut Criterion) {
    let snapshot = Snapshot::build(Arc::new(routing_config()), None);
    let uri: Uri = "/e/items/42?x=1".parse().expect("uri");
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("h137.example.com"));
    headers.insert("x-canary", HeaderValue::from_static("1"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    assert!(fulcrum::bench::route(
        &snapshot,
        "bench",
        &Method::GET,
        &uri,
        &headers
    ));
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    group.bench_function("1000-routes-200-hosts/last-of-host", |b| {
        b.iter(|| {
            black_box(fulcrum::bench::route(
                &snapshot,
                "bench",
                &Method::GET,
                black_box(&uri),
                black_box(&headers),
            ))
        });
    });
    let unknown = {
        let mut unknown = headers.clone();
        unknown.insert("host", HeaderValue::from_static("nobody.example.org"));
        unknown
    };
    group.bench_function("1000-routes-200-hosts/unknown-host", |b| {
        b.iter(|| {
            black_box(fulcrum::bench::route(
                &snapshot,
                "bench",
                &Method::GET,
                black_box(&uri),
                black_box(&unknown),
            ))
        });
    });
    group.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, minus the undocumented `pub fn` that
// trips the crate's `missing_docs` lint.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    pick(&mut criterion);
    routing(&mut criterion);
    headers(&mut criterion);
    config(&mut criterion);
    criterion.final_summary();
}
