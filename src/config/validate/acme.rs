//! `[listeners.tls.acme]`: domains that are DNS names, a contact address, an HTTPS directory, a
//! writable cache, the challenge, and (for HTTP-01) a plain listener on the challenge port.

use std::path::Path;

use toml::Spanned;

use super::checker::Checker;
use crate::config::raw::{RawAcme, RawConfig};
use crate::config::types::{ListenerConfig, Protocol};
use crate::tls::{AcmeSettings, Challenge};

/// Let's Encrypt's production directory, the default CA.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The port HTTP-01 validation connects to (RFC 8555 §8.3).
const HTTP01_PORT: u16 = 80;

impl Checker<'_> {
    pub(super) fn acme(&mut self, key: &str, spanned: &Spanned<RawAcme>) -> Option<AcmeSettings> {
        let raw = spanned.get_ref();
        let base = self.config_dir();
        let mut ok = true;
        let mut domains: Vec<String> = Vec::new();
        if raw.domains.get_ref().is_empty() {
            self.report(
                &raw.domains,
                &format!("{key}.domains"),
                "at least one domain is required",
            );
            ok = false;
        }
        for (index, domain) in raw.domains.get_ref().iter().enumerate() {
            let name = domain.get_ref().to_ascii_lowercase();
            if let Some(problem) = dns_name_problem(&name) {
                self.report(
                    domain,
                    &format!("{key}.domains[{index}]"),
                    format!("{:?} is not a DNS name: {problem}", domain.get_ref()),
                );
                ok = false;
            } else if domains.contains(&name) {
                self.report(
                    domain,
                    &format!("{key}.domains[{index}]"),
                    format!("{:?} is listed twice", domain.get_ref()),
                );
                ok = false;
            } else {
                domains.push(name);
            }
        }
        let email = raw.email.as_ref().and_then(|email| {
            let problem = email_problem(email.get_ref());
            if let Some(problem) = problem {
                self.report(
                    email,
                    &format!("{key}.email"),
                    format!("{:?} is not an email address: {problem}", email.get_ref()),
                );
                ok = false;
            }
            problem.is_none().then(|| email.get_ref().clone())
        });
        let directory = match &raw.directory {
            None => LETS_ENCRYPT.to_owned(),
            Some(url) => {
                let text = url.get_ref();
                let parsed = text.parse::<http::Uri>().ok();
                if parsed.as_ref().and_then(http::Uri::scheme_str) != Some("https")
                    || parsed.as_ref().and_then(http::Uri::host).is_none()
                {
                    self.report(
                        url,
                        &format!("{key}.directory"),
                        format!(
                            "{text:?} is not an https:// URL (ACME requires HTTPS, RFC 8555 §6.1)"
                        ),
                    );
                    ok = false;
                }
                text.clone()
            }
        };
        let directory_ca = raw.directory_ca.as_ref().map(|path| {
            let file = base.join(path.get_ref());
            if let Err(err) = crate::tls::load_roots(&file) {
                self.report(path, &format!("{key}.directory_ca"), err.to_string());
                ok = false;
            }
            file
        });
        let cache = base.join(raw.cache.get_ref());
        if let Some(problem) = cache_problem(&cache) {
            self.report(&raw.cache, &format!("{key}.cache"), problem);
            ok = false;
        }
        let challenge = match raw.challenge.as_ref() {
            None => Challenge::TlsAlpn01,
            Some(challenge) => match challenge.get_ref().as_str() {
                "tls-alpn-01" => Challenge::TlsAlpn01,
                "http-01" => Challenge::Http01,
                other => {
                    self.report(
                        challenge,
                        &format!("{key}.challenge"),
                        format!("{other:?} is not supported (\"tls-alpn-01\" or \"http-01\")"),
                    );
                    ok = false;
                    Challenge::TlsAlpn01
                }
            },
        };
        let challenge_port = match &raw.challenge_port {
            None => HTTP01_PORT,
            Some(port) if challenge != Challenge::Http01 => {
                self.report(
                    port,
                    &format!("{key}.challenge_port"),
                    "applies only to challenge = \"http-01\"",
                );
                ok = false;
                HTTP01_PORT
            }
            Some(port) => self
                .int_in(port, &format!("{key}.challenge_port"), 1, 65535)
                .and_then(|port| u16::try_from(port).ok())
                .unwrap_or_else(|| {
                    ok = false;
                    HTTP01_PORT
                }),
        };
        let renew_before = match &raw.renew_before {
            None => Some(None),
            Some(raw) => self
                .duration(
                    Some(raw),
                    &format!("{key}.renew_before"),
                    Default::default(),
                )
                .map(Some),
        };
        let renew_before = renew_before?;
        ok.then_some(AcmeSettings {
            domains,
            email,
            directory,
            directory_ca,
            cache,
            challenge,
            renew_before,
            challenge_port,
        })
    }

    /// Every HTTP-01 certificate needs a plain HTTP listener on its challenge port: the CA asks
    /// there. A domain is in one `[listeners.tls.acme]` only: two would order, validate and
    /// install the same name against each other.
    pub(super) fn http01_listeners(&mut self, raw: &RawConfig, listeners: &[ListenerConfig]) {
        let mut owners: Vec<(&str, usize)> = Vec::new();
        for (index, listener) in listeners.iter().enumerate() {
            let Some(acme) = listener.tls.as_ref().and_then(|tls| tls.acme.as_ref()) else {
                continue;
            };
            for (position, domain) in acme.domains.iter().enumerate() {
                match owners.iter().find(|(name, _)| name == domain) {
                    Some((_, owner)) => {
                        let at = raw
                            .listeners
                            .get(index)
                            .and_then(|l| l.get_ref().tls.as_ref())
                            .and_then(|tls| tls.get_ref().acme.as_ref())
                            .and_then(|acme| acme.get_ref().domains.get_ref().get(position));
                        if let Some(at) = at {
                            self.report(
                                at,
                                &format!("listeners[{index}].tls.acme.domains[{position}]"),
                                format!(
                                    "{domain:?} is already in listeners[{owner}].tls.acme; a domain gets one ACME certificate"
                                ),
                            );
                        }
                    }
                    None => owners.push((domain, index)),
                }
            }
        }
        for (index, listener) in listeners.iter().enumerate() {
            let Some(acme) = listener.tls.as_ref().and_then(|tls| tls.acme.as_ref()) else {
                continue;
            };
            if acme.challenge != Challenge::Http01 {
                continue;
            }
            let answered = listeners.iter().any(|other| {
                other.protocol == Protocol::Http
                    && other.tls.is_none()
                    && other.listen.port() == acme.challenge_port
            });
            if answered {
                continue;
            }
            let raw_acme = raw
                .listeners
                .get(index)
                .and_then(|l| l.get_ref().tls.as_ref())
                .and_then(|tls| tls.get_ref().acme.as_ref());
            let Some(raw_acme) = raw_acme else { continue };
            let message = format!(
                "challenge \"http-01\" needs a plain HTTP listener (no tls) on port {}, where the CA connects; add one, or set challenge_port",
                acme.challenge_port
            );
            let key = format!("listeners[{index}].tls.acme.challenge");
            match &raw_acme.get_ref().challenge {
                Some(at) => self.report(at, &key, message),
                None => self.report(raw_acme, &key, message),
            }
        }
    }
}

/// Why `name` (lower case) is not a DNS name a CA can validate with HTTP-01 or TLS-ALPN-01.
pub(crate) fn dns_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name.starts_with("*.") {
        return Some("wildcard names need the dns-01 challenge, which fulcrum does not answer");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some("an IP address");
    }
    if name.len() > 253 {
        return Some("longer than 253 characters");
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.len() < 2 {
        return Some("it needs at least one dot (a CA does not issue for a single label)");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Some("every label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Some("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("a label must not start or end with '-'");
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some("the last label must not be numeric");
    }
    None
}

/// Why `email` is not a plain `local@domain` address.
fn email_problem(email: &str) -> Option<&'static str> {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Some("it has no '@'");
    };
    if local.is_empty() {
        return Some("nothing before the '@'");
    }
    if email
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | '<' | '>' | '"'))
    {
        return Some("it contains spaces, commas, quotes or angle brackets");
    }
    dns_name_problem(&domain.to_ascii_lowercase())
        .map(|_| "the part after '@' is not a domain name")
}

/// Why `cache` cannot be the ACME cache: it (or what would hold it) is not a writable directory.
/// Checked by creating and removing a file in the nearest directory that exists.
fn cache_problem(cache: &Path) -> Option<String> {
    let mut existing = cache;
    loop {
        let probe = if existing.as_os_str().is_empty() {
            Path::new(".")
        } else {
            existing
        };
        match std::fs::metadata(probe) {
            Ok(meta) if meta.is_dir() => {
                existing = probe;
                break;
            }
            Ok(_) => return Some(format!("{} is not a directory", probe.display())),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match existing.parent() {
                    Some(parent) => existing = parent,
                    None => return Some(format!("{} does not exist", probe.display())),
                }
            }
            Err(err) => return Some(format!("cannot read {}: {err}", probe.display())),
        }
    }
    // A name of this check's own: two checks at once in one process (tests run side by side, a
    // reload's validation next to another) must not meet at the same probe.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let test = existing.join(format!(
        ".fulcrum-write-test-{}-{probe}",
        std::process::id()
    ));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&test)
    {
        Ok(_) => {
            // Best effort: a leftover empty probe file harms nothing.
            let _ = std::fs::remove_file(&test);
            None
        }
        Err(err) => Some(format!("{} is not writable: {err}", existing.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::{cache_problem, dns_name_problem, email_problem};
    use crate::config::Config;
    use crate::tls::Challenge;

    /// Checks of one directory at once (the tests of this module run side by side in one
    /// process, as may a reload's validation) each probe with a file of their own: a shared
    /// probe name made one of them report the directory as not writable.
    #[test]
    fn simultaneous_cache_checks_of_one_directory_all_pass() {
        let dir = std::env::temp_dir();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        assert_eq!(cache_problem(&dir.join("fulcrum-acme-cache")), None);
                    }
                });
            }
        });
    }

    /// A config with an HTTPS listener whose `[listeners.tls.acme]` holds `acme` (cache in a
    /// fresh temp dir), plus `extra` listeners.
    fn parse(acme: &str, extra: &str) -> Result<Config, crate::config::ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "fulcrum-acme-validate-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let text = format!(
            "[[listeners]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n[listeners.tls.acme]\ncache = {:?}\n{acme}\n{extra}\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n",
            dir.join("cache").display().to_string()
        );
        Config::parse("test.toml", &text)
    }

    #[test]
    fn acme_alone_is_enough_for_a_tls_listener_and_defaults_apply() {
        let config = parse("domains = [\"Example.com\", \"www.example.com\"]", "").expect("valid");
        let acme = config.listeners[0]
            .tls
            .as_ref()
            .and_then(|tls| tls.acme.as_ref())
            .expect("acme settings");
        assert_eq!(acme.domains, ["example.com", "www.example.com"]);
        assert_eq!(acme.directory, super::LETS_ENCRYPT);
        assert_eq!(acme.challenge, Challenge::TlsAlpn01);
        assert_eq!(acme.renew_before, None);
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn a_domain_that_is_not_a_dns_name_is_an_error_at_its_position() {
        let err =
            parse("domains = [\"example.com\", \"*.example.com\"]", "").expect_err("wildcard");
        assert!(
            err.to_string().contains("test.toml:7:27: listeners[0].tls.acme.domains[1]: \"*.example.com\" is not a DNS name: wildcard names need the dns-01 challenge"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_email_or_directory_is_an_error_at_its_position() {
        let err = parse(
            "domains = [\"example.com\"]\nemail = \"ops\"\ndirectory = \"http://ca.example/dir\"",
            "",
        )
        .expect_err("bad email and directory");
        let text = err.to_string();
        assert!(text.contains("test.toml:8:9: listeners[0].tls.acme.email: \"ops\" is not an email address: it has no '@'"), "{text}");
        assert!(text.contains("test.toml:9:13: listeners[0].tls.acme.directory: \"http://ca.example/dir\" is not an https:// URL"), "{text}");
    }

    #[test]
    fn an_unwritable_cache_is_an_error_at_its_position() {
        let file = std::env::temp_dir().join(format!("fulcrum-acme-file-{}", std::process::id()));
        std::fs::write(&file, b"not a directory").expect("write");
        let text = format!(
            "[[listeners]]\nname = \"https\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n[listeners.tls.acme]\ndomains = [\"example.com\"]\ncache = {:?}\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n",
            file.join("acme").display().to_string()
        );
        let err = Config::parse("test.toml", &text).expect_err("a file where the cache should go");
        let _ = std::fs::remove_file(&file);
        assert!(
            err.to_string().contains(&format!(
                "test.toml:7:9: listeners[0].tls.acme.cache: {} is not a directory",
                file.display()
            )),
            "{err}"
        );
    }

    #[test]
    fn a_domain_in_two_acme_listeners_is_an_error_at_the_second() {
        let second = format!(
            "[[listeners]]\nname = \"https2\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n[listeners.tls.acme]\ndomains = [\"other.example.com\", \"example.com\"]\ncache = {:?}\n",
            std::env::temp_dir()
                .join("fulcrum-acme-second")
                .display()
                .to_string()
        );
        let err = parse("domains = [\"example.com\"]", &second).expect_err("a domain twice");
        assert!(
            err.to_string().contains("test.toml:13:33: listeners[1].tls.acme.domains[1]: \"example.com\" is already in listeners[0].tls.acme"),
            "{err}"
        );
    }

    #[test]
    fn http01_needs_a_plain_listener_on_the_challenge_port() {
        let err = parse("domains = [\"example.com\"]\nchallenge = \"http-01\"", "")
            .expect_err("no plain listener on port 80");
        assert!(
            err.to_string().contains("test.toml:8:13: listeners[0].tls.acme.challenge: challenge \"http-01\" needs a plain HTTP listener (no tls) on port 80"),
            "{err}"
        );
        let plain =
            "[[listeners]]\nname = \"http\"\nlisten = \"127.0.0.1:18080\"\npool = \"app\"\n";
        let config = parse(
            "domains = [\"example.com\"]\nchallenge = \"http-01\"\nchallenge_port = 18080",
            plain,
        )
        .expect("a plain listener on the challenge port");
        let acme = config.listeners[0]
            .tls
            .as_ref()
            .and_then(|tls| tls.acme.as_ref())
            .expect("acme");
        assert_eq!(
            (acme.challenge, acme.challenge_port),
            (Challenge::Http01, 18080)
        );
        let err = parse("domains = [\"example.com\"]\nchallenge_port = 18080", "")
            .expect_err("challenge_port without http-01");
        assert!(
            err.to_string().contains(
                "listeners[0].tls.acme.challenge_port: applies only to challenge = \"http-01\""
            ),
            "{err}"
        );
    }

    #[test]
    fn dns_names_are_checked_label_by_label() {
        for good in ["example.com", "a-b.example.co.uk", "x1.test"] {
            assert_eq!(dns_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "*.example.com",
            "127.0.0.1",
            "localhost",
            "-a.example.com",
            "a..example.com",
            "ex_ample.com",
            "example.123",
        ] {
            assert!(dns_name_problem(bad).is_some(), "{bad}");
        }
        assert!(dns_name_problem(&format!("{}.com", "a".repeat(64))).is_some());
    }

    #[test]
    fn email_addresses_need_a_local_part_and_a_domain() {
        assert_eq!(email_problem("ops@example.com"), None);
        for bad in [
            "ops",
            "@example.com",
            "ops@localhost",
            "a b@example.com",
            "ops@",
        ] {
            assert!(email_problem(bad).is_some(), "{bad}");
        }
    }
}
