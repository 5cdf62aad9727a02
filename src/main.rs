//! The `fulcrum` binary: parse arguments, set up logging, load the config, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use fulcrum::cli::Cli;
use fulcrum::reload::{ReloadHandle, Trigger};
use fulcrum::server::UpgradeHandle;
use fulcrum::{Config, Server};
use tracing_subscriber::EnvFilter;

/// mimalloc: a proxy allocates and frees many small, short-lived buffers (heads, header maps,
/// channel slots) per request, which mimalloc's thread-local free lists are built for. Its v2
/// line: v3 sends every allocation over 1 KiB through a slow aligned path (about 275
/// instructions each, measured).
#[global_allocator]
static GLOBAL: Mimalloc = Mimalloc;

/// mimalloc, asked the way `malloc` is for what `malloc` already aligns. The `mimalloc` crate
/// sends every allocation through `mi_malloc_aligned`, which looks for a free block of the
/// right alignment before taking one and falls back to its generic path when the next free
/// block is not aligned: about 40 instructions an allocation instead of `mi_malloc`'s 20, on the
/// twelve a proxied request makes (measured with callgrind).
struct Mimalloc;

/// Every block `mi_malloc` returns is aligned to its size's largest power of two up to this
/// (mimalloc's `MI_MAX_ALIGN_SIZE`; the same test as its own `mi_malloc_is_naturally_aligned`).
const MALLOC_ALIGN: usize = 16;

/// Whether `mi_malloc` of `size` bytes is aligned enough for `align`.
fn malloc_aligns(size: usize, align: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY (all four): each call passes mimalloc the size and alignment `GlobalAlloc` was given;
// plain `mi_malloc`/`mi_zalloc`/`mi_realloc` only where `malloc_aligns` says their blocks meet
// the alignment; `mi_free` frees blocks from either path.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        if malloc_aligns(layout.size(), layout.align()) {
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            unsafe { mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        if malloc_aligns(layout.size(), layout.align()) {
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        if malloc_aligns(new_size, layout.align()) {
            unsafe { mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            unsafe { mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
        }
    }
}

/// How often free memory is given back to the operating system.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// Least time between two collections of one worker's heap as it parks.
const PARKED_COLLECT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Gives memory the allocator holds free back to the operating system four times a second, so
/// what a parked connection gave back leaves the process within a quarter of a second.
///
/// mimalloc purges a freed page only after a delay and only while its heap is busy, so a proxy
/// that goes quiet (thousands of keep-alive connections parked, nothing moving) kept resident
/// every page its connections' buffers had used: measured with 10 000 parked connections,
/// 170 to 230 MiB instead of 31 MiB. A forced collection walks the heap's pages once (a few
/// microseconds here) and costs no measurable throughput. It runs on one worker at a time; the
/// other workers collect their own heaps as they park (see `collect_when_idle`).
async fn release_free_memory() {
    let mut ticker = tokio::time::interval(COLLECT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // SAFETY: `mi_collect` has no preconditions (mimalloc documents it as callable at any
        // time from any thread): it frees this thread's empty pages and purges free memory.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
        // Work for an idle worker to wake for: it parks again right after, and collects its own
        // heap then (see `collect_when_idle`). Two tasks: tokio keeps the first spawned one in
        // this worker's LIFO slot, which no other worker steals; the second pushes it out to
        // the run queue, which wakes an idle worker to steal it.
        tokio::spawn(async {});
        tokio::spawn(async {});
    }
}

/// Gives this worker's free memory back to the operating system as it parks, at most once per
/// [`PARKED_COLLECT_EVERY`] (less than [`COLLECT_EVERY`], so every wake-up that
/// [`release_free_memory`] causes ends in a collection). mimalloc's heaps are per thread:
/// memory one worker allocated and another freed (a flood's rate-limit keys, swept later on
/// another worker) stays in the first one's heap until that one collects, and an idle worker
/// otherwise never would. Measured with the 100,000-key flood test on two workers: RSS stayed
/// 2.6–4 MiB above its baseline after eviction, and is back at it with this.
fn collect_when_idle() {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> =
            const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|at| now.duration_since(at) >= PARKED_COLLECT_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: as in `release_free_memory`.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_collect(true);
        }
    }
}

/// Keeps the heap in 4 KiB pages: mimalloc asks for transparent huge pages on its arenas
/// (`madvise(MADV_HUGEPAGE)`), and every 2 MiB page the kernel then backs is resident in full
/// however little of it the heap uses. Measured with 1,000 keep-alive connections through
/// three backends: peak RSS 64 MiB with huge pages, 42 MiB without (the system allocator: 41);
/// with 64 connections 19.6 against 11.8 MiB; requests/s within noise. The flag holds for the
/// whole process (mimalloc's arena, mapped before `main`, included) and for the process a
/// binary upgrade starts.
fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and touches no memory of ours.
    #[allow(unsafe_code)]
    let result = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn main() -> ExitCode {
    let huge_pages = disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_tracing(cli.log_level.as_deref());
    if let Err(err) = huge_pages {
        tracing::warn!(error = %err, "could not turn transparent huge pages off; memory use may be higher");
    }
    let loaded = std::fs::read_to_string(&cli.config)
        .map_err(|source| fulcrum::config::ConfigError::Read {
            path: cli.config.clone(),
            source,
        })
        .and_then(|source| {
            Config::parse(&cli.config.display().to_string(), &source).map(|c| (c, source))
        });
    let (config, source) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("{err}");
            if cli.check {
                eprintln!("config check failed: {}", cli.config.display());
            }
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        if let Some(admin) = cli.diff {
            return match print_diff(&cli, admin, &config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
        print_summary(&cli, &config);
        for warning in &config.warnings {
            eprintln!("warning: {warning}");
        }
        return ExitCode::SUCCESS;
    }
    match run(config, cli.config.clone(), source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "fulcrum failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

fn run(config: Config, path: std::path::PathBuf, source: String) -> anyhow::Result<()> {
    raise_open_files_limit();
    for warning in &config.warnings {
        tracing::warn!(%warning, "config warning");
    }
    // One worker thread: a current-thread runtime does the same work without the cross-thread
    // hand-offs of the work-stealing scheduler (measured: less CPU per request).
    let mut runtime = match config.runtime.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all().on_thread_park(collect_when_idle);
    let runtime = runtime.build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        tokio::spawn(release_free_memory());
        let server = Server::bind(config).await?.with_config_file(path, source);
        reload_on_sighup(server.reload_handle());
        upgrade_on_sigusr2(server.upgrade_handle());
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Every client and upstream connection is a descriptor, and the usual soft limit (1024) would
/// cap a balancer near a thousand clients: raise it to the hard limit, as nginx and HAProxy
/// operators do by hand. A failure only costs headroom, so it is logged, not fatal.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
    }
}

/// Asks for a reload on every SIGHUP.
fn reload_on_sighup(handle: ReloadHandle) {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!(signal = "SIGHUP", "reload requested");
                    handle.trigger(Trigger::Requested);
                }
            });
        }
        Err(err) => tracing::error!(error = %err, "cannot listen for SIGHUP"),
    }
    #[cfg(not(unix))]
    drop(handle);
}

/// Starts a zero-downtime binary upgrade on every SIGUSR2.
fn upgrade_on_sigusr2(handle: UpgradeHandle) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
        Ok(mut signal) => {
            tokio::spawn(async move {
                while signal.recv().await.is_some() {
                    tracing::info!(signal = "SIGUSR2", "binary upgrade requested");
                    handle.request();
                }
            });
        }
        Err(err) => tracing::error!(error = %err, "cannot listen for SIGUSR2"),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. Both are caught from this call on, not from the
/// future's first poll: a service manager may stop fulcrum right after its READY=1, and a
/// signal that came before the catch would kill it undrained.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let catch = |kind: SignalKind, name: &'static str| {
        let caught = signal(kind);
        async move {
            match caught {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, signal = name, "cannot listen for the signal");
                    std::future::pending::<()>().await;
                }
            }
        }
    };
    let interrupt = catch(SignalKind::interrupt(), "SIGINT");
    let terminate = catch(SignalKind::terminate(), "SIGTERM");
    async move {
        tokio::select! {
            () = interrupt => tracing::info!(signal = "SIGINT", "shutdown requested"),
            () = terminate => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        }
    }
}

/// `--check --diff ADMIN`: what applying this file would change on the running instance.
fn print_diff(cli: &Cli, admin: std::net::SocketAddr, config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The admin listener wants the token this file names (the same instance's config).
    let token = config.admin.as_ref().and_then(|admin| admin.token.as_ref());
    let running = runtime.block_on(fulcrum::cli::fetch_config(
        admin,
        token,
        fulcrum::cli::FETCH_TIMEOUT,
    ))?;
    let running = Config::parse(&format!("running config at {admin}"), &running)
        .context("the running instance's config does not parse here")?;
    let changes = fulcrum::config::diff(&running, config);
    println!("{}: ok", cli.config.display());
    if changes.is_empty() {
        println!("no changes against the instance at {admin}");
    } else {
        println!("changes against the instance at {admin}:");
        for change in changes {
            println!("  {change}");
        }
    }
    Ok(())
}

fn print_summary(cli: &Cli, config: &Config) {
    println!("{}: ok", cli.config.display());
    for listener in &config.listeners {
        println!(
            "  listener {} on {} -> {}",
            listener.name,
            listener.listen,
            listener.serves()
        );
        for route in &listener.routes {
            println!("    route {} -> {}", route.name, route.action);
        }
    }
    for pool in &config.pools {
        println!(
            "  pool {} ({}, {} backends, retries {})",
            pool.name,
            pool.algorithm.as_str(),
            pool.backends.len(),
            pool.retries
        );
        for backend in &pool.backends {
            println!(
                "    {} ({}) weight {}",
                backend.name, backend.address, backend.weight
            );
        }
    }
    if let Some(admin) = &config.admin {
        println!("  admin on {}", admin.listen);
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::GLOBAL;

    #[test]
    fn every_block_meets_its_alignment_through_allocation_growth_and_shrinking() {
        let mut held = Vec::new();
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in (1..=80).chain([96, 100, 1000, 1024, 5000]) {
                // Many of each, so blocks come from all over their pages.
                for _ in 0..16 {
                    let layout = Layout::from_size_align(size, align).expect("a valid layout");
                    // SAFETY: a non-zero size; the block is freed below with its layout.
                    #[allow(unsafe_code)]
                    let block = unsafe {
                        let zeroed = GLOBAL.alloc_zeroed(layout);
                        assert!(!zeroed.is_null());
                        assert!((0..size).all(|at| *zeroed.add(at) == 0), "zeroed");
                        GLOBAL.dealloc(zeroed, layout);
                        GLOBAL.alloc(layout)
                    };
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "{size} bytes at {align}");
                    held.push((block, layout));
                }
            }
        }
        for (mut block, mut layout) in held {
            // Grown, then shrunk below its alignment.
            for new_size in [layout.size() * 2 + 24, 3] {
                // SAFETY: `block` is allocated with `layout`, and not used after the call.
                #[allow(unsafe_code)]
                let moved = unsafe { GLOBAL.realloc(block, layout, new_size) };
                assert!(!moved.is_null());
                assert_eq!(moved as usize % layout.align(), 0, "{new_size} bytes");
                block = moved;
                layout = Layout::from_size_align(new_size, layout.align()).expect("valid");
            }
            // SAFETY: `block` holds `layout` now.
            #[allow(unsafe_code)]
            unsafe {
                GLOBAL.dealloc(block, layout);
            }
        }
    }
}
