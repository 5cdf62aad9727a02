//! What makes fulcrum reload and what it refuses: edits in place, write-and-rename, symlink swaps,
//! SIGHUP and `POST /reload`, invalid files, unchanged content, and `--check --diff`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_are_rejected_with_their_position_and_the_next_valid_one_applies() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("invalid");
        let path = dir.join("fulcrum.toml");
        let file = path.display().to_string();
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        let original = cfg.text();
        write_in_place(&path, &original);
        let fulcrum = Fulcrum::start(&path).await;
        let admin = fulcrum.admin();
        let load = Load::start(fulcrum.web, 4).await;

        // A syntax error on a known line.
        let syntax = format!("{original}retries = = 3\n");
        let syntax_line = syntax.lines().count();
        let mark = fulcrum.mark();
        write_in_place(&path, &syntax);
        let (_, line) = fulcrum
            .wait_log(mark, "config reload rejected", RELOAD_LIMIT)
            .await;
        let position = format!("{file}:{syntax_line}:");
        assert!(line.contains(&position), "{position} not in {line}");
        assert!(line.contains("trigger=\"file\""), "{line}");
        let (status, body) = admin_request(admin, http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains(&position), "{position} not in {body}");

        // A semantic error: the listener names a pool that does not exist.
        let semantic = original.replacen("pool = \"app\"", "pool = \"nope\"", 1);
        let semantic_line = semantic
            .lines()
            .position(|l| l == "pool = \"nope\"")
            .expect("the edited line")
            + 1;
        let expected =
            format!("{file}:{semantic_line}:8: listeners[0].pool: pool \"nope\" does not exist");
        let mark = fulcrum.mark();
        write_in_place(&path, &semantic);
        let (_, line) = fulcrum.wait_log(mark, &expected, RELOAD_LIMIT).await;
        assert!(line.contains("config reload rejected"), "{line}");
        assert!(line.contains("trigger=\"file\""), "{line}");
        let (status, body) = admin_request(admin, http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains(&expected), "{expected} not in {body}");
        assert!(
            fulcrum.lines_since(0, "config reloaded").is_empty(),
            "an invalid file was applied"
        );
        let (status, running) = admin_request(admin, http::Method::GET, "/config").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            running, original,
            "GET /config changed after rejected reloads"
        );

        // The next valid write is applied.
        let mark = fulcrum.mark();
        cfg.backends.push((c.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", c.addr())),
            "{line}"
        );
        wait_for_traffic(&c, 0, Duration::from_secs(1)).await;
        let (_, running) = admin_request(admin, http::Method::GET, "/config").await;
        assert_eq!(running, cfg.text());

        let report = load.finish().await;
        assert_no_failures(&report);
        assert!(report.served("a") > 0 && report.served("b") > 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_post_reload_apply_a_change() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("triggers");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        // SIGHUP right after the write: it is handled before the watcher's 200 ms debounce ends,
        // so the change is applied by the signal (trigger "request"), and the watcher then finds
        // the content unchanged.
        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        write_in_place(&path, &cfg.text());
        fulcrum.signal("-HUP");
        fulcrum
            .wait_log(mark, "reload requested signal=\"SIGHUP\"", RELOAD_LIMIT)
            .await;
        let (index, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("trigger=\"request\""), "{line}");
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            fulcrum.lines_since(index + 1, "config reloaded").is_empty(),
            "the change was applied twice"
        );

        // SIGHUP with no change still reloads (re-resolves), reporting no changes.
        let mark = fulcrum.mark();
        fulcrum.signal("-HUP");
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("changes=none"), "{line}");

        // POST /reload answers with the change it applied.
        let mark = fulcrum.mark();
        cfg.backends.push((c.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (status, body) = admin_request(fulcrum.admin(), http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            format!("applied: pool app: +{} (weight 1)\n", c.addr())
        );
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("trigger=\"request\""), "{line}");
        wait_for_traffic(&c, 0, Duration::from_secs(1)).await;

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_and_rename_edit_is_picked_up() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("rename");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        let temp = dir.join(".fulcrum.toml.swp");
        std::fs::write(&temp, cfg.text()).expect("write temp file");
        std::fs::rename(&temp, &path).expect("rename over the config");
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;

        // A second rename-edit works too (the watch is on the directory, not the old inode).
        let mark = fulcrum.mark();
        cfg.backends.remove(0);
        std::fs::write(&temp, cfg.text()).expect("write temp file");
        std::fs::rename(&temp, &path).expect("rename over the config");
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("-{} (draining)", a.addr())),
            "{line}"
        );

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_symlink_swap_is_picked_up() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("configmap");
        let mut cfg = Cfg::new(&[a.addr()]);
        // D/..v1/fulcrum.toml, D/..data -> ..v1, D/fulcrum.toml -> ..data/fulcrum.toml
        std::fs::create_dir(dir.join("..v1")).expect("mkdir ..v1");
        std::fs::write(dir.join("..v1/fulcrum.toml"), cfg.text()).expect("write v1");
        std::os::unix::fs::symlink("..v1", dir.join("..data")).expect("symlink ..data");
        std::os::unix::fs::symlink("..data/fulcrum.toml", dir.join("fulcrum.toml"))
            .expect("symlink fulcrum.toml");
        let fulcrum = Fulcrum::start(&dir.join("fulcrum.toml")).await;
        let load = Load::start(fulcrum.web, 2).await;

        let swap = |version: &str, text: &str| {
            std::fs::create_dir(dir.join(version)).expect("mkdir version");
            std::fs::write(dir.join(version).join("fulcrum.toml"), text).expect("write version");
            std::os::unix::fs::symlink(version, dir.join("..data_tmp")).expect("symlink tmp");
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
        };

        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        swap("..v2", &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;
        // Kubernetes then deletes the old version; that is not a change.
        let mark = fulcrum.mark();
        std::fs::remove_dir_all(dir.join("..v1")).expect("remove ..v1");

        // A second swap.
        cfg.backends[1].1 = 2;
        swap("..v3", &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: {} weight 1→2", b.addr())),
            "{line}"
        );

        let report = load.finish().await;
        assert_no_failures(&report);
        assert!(dir.path().join("..data").exists());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_to_a_file_elsewhere_edited_in_place_is_picked_up() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let link_dir = TempDir::new("link");
        let real_dir = TempDir::new("real");
        let real = real_dir.join("fulcrum.toml");
        let link = link_dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&real, &cfg.text());
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let fulcrum = Fulcrum::start(&link).await;

        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        write_in_place(&real, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains(&format!("+{}", b.addr())), "{line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_identical_content_does_not_reload() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("touch");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        let mark = fulcrum.mark();
        write_in_place(&path, &cfg.text());
        // And a rename-style rewrite of the same bytes.
        let temp = dir.join(".fulcrum.toml.tmp");
        std::fs::write(&temp, cfg.text()).expect("write temp");
        std::fs::rename(&temp, &path).expect("rename");
        // Well past the 200 ms debounce.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            fulcrum.lines_since(mark, "config reload"),
            Vec::<String>::new(),
            "an unchanged file was reloaded"
        );

        // The watcher does work: a real change right after is applied.
        cfg.backends.push((b.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_diff_prints_the_changes_without_applying_them() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("diff");
        let path = dir.join("fulcrum.toml");
        let cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let admin = fulcrum.admin();
        let load = Load::start(fulcrum.web, 2).await;

        // Weight change on a, c added, b removed; written next to the live file.
        let mut edited = cfg.clone();
        edited.backends = vec![(a.addr(), 3), (c.addr(), 1)];
        let new = dir.join("fulcrum.new.toml");
        write_in_place(&new, &edited.text());
        let mark = fulcrum.mark();
        let output = within(
            Duration::from_secs(20),
            "fulcrum --check --diff",
            tokio::process::Command::new(BIN)
                .arg("--config")
                .arg(&new)
                .arg("--check")
                .arg("--diff")
                .arg(admin.to_string())
                .env("NO_COLOR", "1")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run fulcrum --check --diff");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert_eq!(
            stdout,
            format!(
                "{}: ok\nchanges against the instance at {admin}:\n  pool app: {} weight 1→3, \
                 +{} (weight 1), -{} (draining)\n",
                new.display(),
                a.addr(),
                c.addr(),
                b.addr()
            )
        );

        // Identical file: no changes.
        let same = dir.join("fulcrum.same.toml");
        write_in_place(&same, &cfg.text());
        let output = within(
            Duration::from_secs(20),
            "fulcrum --check --diff",
            tokio::process::Command::new(BIN)
                .arg("--config")
                .arg(&same)
                .args(["--check", "--diff", &admin.to_string()])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run fulcrum --check --diff");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(
            stdout.ends_with(&format!("no changes against the instance at {admin}\n")),
            "{stdout}"
        );

        // Nothing was applied.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = load.finish().await;
        assert_no_failures(&report);
        assert!(
            fulcrum.lines_since(mark, "config reload").is_empty(),
            "--check --diff changed the running instance"
        );
        let (status, running) = admin_request(admin, http::Method::GET, "/config").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(running, cfg.text());
        assert_eq!(c.request_count(), 0);
        let tally = sequential(fulcrum.web, 10).await;
        assert_eq!(
            (tally.get("a"), tally.get("b")),
            (Some(&5), Some(&5)),
            "{tally:?}"
        );
    })
    .await;
}
