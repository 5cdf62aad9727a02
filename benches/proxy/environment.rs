//! What the machine offers, found once per bench run: the fulcrum binary (built in release
//! mode unless given), which contenders and load generators are installed, whether processes
//! can be pinned, and the TLS certificate every contender serves.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::options::Options;
use crate::sampling::clock_ticks;

/// What the machine offers, found once.
pub struct Environment {
    /// The fulcrum binary measured.
    pub fulcrum: PathBuf,
    /// nginx, if installed.
    pub nginx: Option<PathBuf>,
    /// nginx's stream module (for `tcp-bulk`), if installed.
    pub nginx_stream_module: Option<PathBuf>,
    /// HAProxy, if installed.
    pub haproxy: Option<PathBuf>,
    /// wrk, unless missing or `--builtin-load` (then the built-in generator is used).
    pub wrk: Option<PathBuf>,
    /// h2load, without which the HTTP/2 scenarios are skipped.
    pub h2load: Option<PathBuf>,
    /// `taskset` and at least two cores: proxy on core 1, everything else on core 0.
    pub pin: bool,
    /// CPUs available to this process.
    pub cores: usize,
    /// Clock ticks per second, the unit of `/proc` CPU times.
    pub ticks: f64,
    /// This executable, started again for the helper roles.
    pub me: PathBuf,
    /// The bench's temporary directory (configs, logs, TLS files).
    pub temp: PathBuf,
    /// The certificate every contender serves in the TLS scenarios.
    pub tls: TlsFiles,
}

/// A self-signed certificate for 127.0.0.1 and localhost, generated per bench run (ECDSA
/// P-256, rcgen's default), as the PEM files the contenders want.
pub struct TlsFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Certificate followed by key, for HAProxy's `crt`.
    pub bundle: PathBuf,
}

impl TlsFiles {
    /// Generates the certificate into `dir`.
    fn generate(dir: &Path) -> Result<TlsFiles> {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names)?;
        let (cert_pem, key_pem) = (certified.cert.pem(), certified.signing_key.serialize_pem());
        std::fs::create_dir_all(dir)?;
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            bundle: dir.join("bundle.pem"),
        };
        std::fs::write(&files.cert, &cert_pem)?;
        std::fs::write(&files.key, &key_pem)?;
        std::fs::write(&files.bundle, format!("{cert_pem}{key_pem}"))?;
        Ok(files)
    }
}

impl Environment {
    /// Looks for the contenders and tools, and writes the TLS files into `temp`.
    pub fn discover(options: &Options, fulcrum: PathBuf, temp: PathBuf) -> Result<Environment> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Ok(Environment {
            fulcrum,
            nginx: installed("/usr/sbin/nginx").or_else(|| which("nginx")),
            nginx_stream_module: installed("/usr/lib/nginx/modules/ngx_stream_module.so"),
            haproxy: installed("/usr/sbin/haproxy").or_else(|| which("haproxy")),
            wrk: if options.builtin_load {
                None
            } else {
                installed("/usr/bin/wrk").or_else(|| which("wrk"))
            },
            h2load: which("h2load"),
            pin: options.pin && cores >= 2 && which("taskset").is_some(),
            cores,
            ticks: clock_ticks(),
            me: std::env::current_exe()?,
            tls: TlsFiles::generate(&temp.join("tls"))?,
            temp,
        })
    }

    /// A command, pinned to `core` when pinning.
    pub fn command(&self, core: u8, program: &Path) -> Command {
        if self.pin {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

/// `path` if it exists.
fn installed(path: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    path.exists().then_some(path)
}

/// `name` found on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The package's directory, where `cargo build` runs.
fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory, where the release binary and the JSON reports go.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"))
}

/// The release binary, built first unless `--fulcrum` names one. Built with plain
/// `cargo build --release` so it has the same features as a deployed binary (the binary
/// `cargo bench` builds has the dev-dependencies' extra tokio features).
pub fn fulcrum_binary(options: &Options) -> Result<PathBuf> {
    if let Some(path) = &options.fulcrum {
        return Ok(path.clone());
    }
    eprintln!("building fulcrum: cargo build --release --bin fulcrum");
    let status = cargo_command()
        .args(["build", "--release", "--bin", "fulcrum"])
        .status()?;
    if !status.success() {
        return Err("cargo build --release --bin fulcrum failed".into());
    }
    Ok(target_dir().join("release").join("fulcrum"))
}

/// Cargo, run in the package's directory without the variables `cargo bench` set for this
/// executable: build scripts that watch the environment (ring's, via cc) would see a change
/// and rebuild everything each time.
pub fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_TARGET_TMPDIR"
            || name == "OUT_DIR"
        {
            command.env_remove(&*name);
        }
    }
    command.current_dir(manifest_dir());
    command
}
