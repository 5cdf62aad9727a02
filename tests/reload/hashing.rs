//! `consistent_hash` across processes and reloads: two separately started `fulcrum` processes
//! send every key to the same backend, and a reload that removes or adds a backend moves only
//! the keys it must.

use super::*;

/// Keys sent per test: each is one request with `x-user-id: user-<i>`.
const KEYS: usize = 1_000;

/// A consistent_hash pool over `backends`, keyed by the `x-user-id` header.
fn hashing(backends: &[SocketAddr]) -> Cfg {
    let mut cfg = Cfg::new(backends);
    cfg.algorithm = "consistent_hash";
    cfg.pool_keys
        .push("hash_key = \"header:x-user-id\"".to_owned());
    cfg
}

/// The backend name that served each of the keys `user-0` … through `web`.
async fn mapping(web: SocketAddr) -> Vec<String> {
    let mut client = TestClient::connect(web).await;
    let mut names = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let request = Request::get("/")
            .header("host", "fulcrum.test")
            .header("x-user-id", format!("user-{i}"))
            .body(empty())
            .expect("request");
        let response = within(Duration::from_secs(5), "a response", client.fetch(request))
            .await
            .unwrap_or_else(|err| panic!("key {i}: {err}"));
        assert_eq!(response.status, StatusCode::OK, "key {i}: {response:?}");
        names.push(response.served_by().expect("x-served-by").to_owned());
    }
    names
}

async fn backends(names: &[&str]) -> Vec<TestBackend> {
    let mut spawned = Vec::new();
    for name in names {
        spawned.push(TestBackend::spawn(name).await);
    }
    spawned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_separately_started_processes_send_every_key_to_the_same_backend() {
    common::bounded_for(Duration::from_secs(60), async {
        let backends = backends(&["a", "b", "c", "d", "e"]).await;
        let addresses: Vec<SocketAddr> = backends.iter().map(TestBackend::addr).collect();
        let dir = TempDir::new("hash-two");
        // Two files with the same pools: each process gets its own (port 0) listeners.
        let (first, second) = (dir.join("one.toml"), dir.join("two.toml"));
        write_in_place(&first, &hashing(&addresses).text());
        write_in_place(&second, &hashing(&addresses).text());
        let one = Fulcrum::start(&first).await;
        let two = Fulcrum::start(&second).await;
        assert_ne!(one.child.id(), two.child.id());
        let (by_one, by_two) = (mapping(one.web).await, mapping(two.web).await);
        let differing: Vec<usize> = (0..KEYS).filter(|&i| by_one[i] != by_two[i]).collect();
        assert!(
            differing.is_empty(),
            "keys mapped differently: {differing:?}"
        );
        // And the keys spread: every backend has a fair part of them (a fifth is 200).
        for backend in &backends {
            let count = by_one.iter().filter(|name| *name == backend.name()).count();
            assert!(
                (80..=400).contains(&count),
                "{}: {count} keys",
                backend.name()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_removing_or_adding_a_backend_moves_only_the_keys_it_must() {
    common::bounded_for(Duration::from_secs(90), async {
        let backends = backends(&["a", "b", "c", "d", "e", "f"]).await;
        let addresses: Vec<SocketAddr> = backends.iter().map(TestBackend::addr).collect();
        let dir = TempDir::new("hash-reload");
        let path = dir.join("fulcrum.toml");
        write_in_place(&path, &hashing(&addresses[..5]).text());
        let fulcrum = Fulcrum::start(&path).await;
        let before = mapping(fulcrum.web).await;

        // Remove c: exactly c's keys move, to the others.
        let mut without_c = addresses[..5].to_vec();
        without_c.remove(2);
        let mark = fulcrum.mark();
        write_in_place(&path, &hashing(&without_c).text());
        fulcrum.wait_reloaded(mark).await;
        let removed = mapping(fulcrum.web).await;
        let mut moved = 0;
        for (i, (old, new)) in before.iter().zip(&removed).enumerate() {
            if old == "c" {
                assert_ne!(new, "c", "key {i}");
                moved += 1;
            } else {
                assert_eq!(old, new, "key {i} of a kept backend moved");
            }
        }
        assert!((80..=400).contains(&moved), "{moved} keys were on c");

        // Back to the first five and add f: about a sixth of the keys move, all to f.
        let mark = fulcrum.mark();
        write_in_place(&path, &hashing(&addresses).text());
        fulcrum.wait_reloaded(mark).await;
        let added = mapping(fulcrum.web).await;
        let mut moved = 0;
        for (i, (old, new)) in before.iter().zip(&added).enumerate() {
            if old != new {
                assert_eq!(new, "f", "key {i} moved between two old backends");
                moved += 1;
            }
        }
        // 1/6 of 1,000 is 167.
        assert!((80..=300).contains(&moved), "{moved} keys moved to f");
    })
    .await;
}
