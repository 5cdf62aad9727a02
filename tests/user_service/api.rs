//! The service's API through fulcrum: the account flow over every instance, documented error
//! statuses, concurrent sign-ups, and an instance killed mid-stream.

use super::*;

#[tokio::test]
async fn account_flow_through_fulcrum_uses_every_instance() {
    bounded_for(Duration::from_secs(60), async {
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
    bounded_for(Duration::from_secs(60), async {
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
    bounded_for(Duration::from_secs(90), async {
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
    bounded_for(Duration::from_secs(120), async {
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
