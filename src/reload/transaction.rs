//! The reload transaction: read and validate the file, bind every new address, then swap the
//! snapshot in one store and bring listeners, checkers and watches in line. Changed DNS
//! discovery sets take the same swap (`swap_snapshot`), from `discovery.rs`. On any error
//! before the swap nothing changes, and the running config keeps serving.

use std::sync::Arc;

use super::{ReloadError, ReloadOutcome, Trigger};
use crate::config::{self, AdminToken, Config};
use crate::server::accept;
use crate::server::runtime::{Handler, Runtime, same_role, tls_files};
use crate::snapshot::Snapshot;

impl Runtime {
    /// Reads, validates and applies the config file. On any error nothing changes.
    pub(crate) async fn reload(&mut self, trigger: Trigger) -> ReloadOutcome {
        let outcome = self.try_reload(trigger).await;
        match &outcome {
            ReloadOutcome::Applied(_) => crate::metrics::record_reload(true),
            ReloadOutcome::Rejected(_) => crate::metrics::record_reload(false),
            ReloadOutcome::Unchanged | ReloadOutcome::NoFile => {}
        }
        match &outcome {
            ReloadOutcome::Applied(changes) => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    changes = %if changes.is_empty() { "none".to_owned() } else { changes.join("; ") },
                    "config reloaded"
                );
            }
            ReloadOutcome::Rejected(error) => tracing::error!(
                trigger = trigger.as_str(),
                error = %error,
                "config reload rejected; keeping the running config"
            ),
            ReloadOutcome::Unchanged | ReloadOutcome::NoFile => {}
        }
        self.admin_state
            .record_reload(&outcome, self.last_source.clone());
        outcome
    }

    async fn try_reload(&mut self, trigger: Trigger) -> ReloadOutcome {
        if trigger == Trigger::Certificates {
            return self.reload_certificates();
        }
        if trigger == Trigger::AdminToken {
            return self.reload_admin_token();
        }
        let Some(path) = self.file.clone() else {
            return ReloadOutcome::NoFile;
        };
        let source = match tokio::fs::read_to_string(&path).await {
            Ok(source) => source,
            Err(source) => {
                return rejected(ReloadError::Read { path, source });
            }
        };
        if trigger == Trigger::FileChanged && self.last_source.as_deref() == Some(source.as_str()) {
            return ReloadOutcome::Unchanged;
        }
        // Remember the text now, so an invalid file is not re-parsed on every event. A reload
        // that fails for outside reasons (a port in use) restores it, so saving the same file
        // again retries.
        let previous_source = self.last_source.replace(source.clone());
        let file = path.display().to_string();
        // Parsing resolves hostnames, which blocks.
        let parsed = tokio::task::spawn_blocking(move || Config::parse(&file, &source)).await;
        let config = match parsed {
            Ok(Ok(config)) => config,
            Ok(Err(err)) => return rejected(ReloadError::Invalid(err)),
            Err(err) => {
                self.last_source = previous_source;
                return rejected(ReloadError::Parser(err));
            }
        };
        for warning in &config.warnings {
            tracing::warn!(%warning, "config warning");
        }
        let changes = config::diff(&self.config, &config);

        // Bind every new address first: if one fails, nothing has changed yet.
        let mut fresh = Vec::new();
        for new in &config.listeners {
            let kept = self
                .listeners
                .iter()
                .any(|running| same_role(&running.config, new));
            let moved_from = self
                .listeners
                .iter()
                .any(|running| running.config.listen == new.listen && new.listen.port() != 0);
            if kept || moved_from {
                continue;
            }
            match accept::bind(new.listen).await {
                Ok(socket) => fresh.push((new.name.clone(), socket)),
                Err(source) => {
                    self.last_source = previous_source;
                    return rejected(ReloadError::Bind {
                        listener: Arc::clone(&new.name),
                        address: new.listen,
                        source,
                    });
                }
            }
        }
        let admin_socket = match (&config.admin, &self.admin) {
            (Some(new), Some(running)) if new.listen == running.listen => None,
            (Some(new), _) => match accept::bind(new.listen).await {
                Ok(socket) => Some(socket),
                Err(source) => {
                    self.last_source = previous_source;
                    return rejected(ReloadError::BindAdmin {
                        address: new.listen,
                        source,
                    });
                }
            },
            (None, _) => None,
        };

        // Swap the snapshot: one store, off the hot path. Discover pools keep their sets.
        let config = Arc::new(config);
        self.discovery.sync(&config);
        let effective = Arc::new(self.discovery.registry().merge(&config));
        self.swap_snapshot(effective).await;
        // New ACME certificates are served (cached or stand-in) before their listeners change.
        self.acme.sync(&config);
        self.apply_listeners(&config, fresh).await;
        self.apply_admin(&config, admin_socket).await;
        self.publish_listeners();
        let certificates_changed = tls_files(&self.config) != tls_files(&config);
        self.config = config;
        if certificates_changed {
            let handle = self.reload_handle.clone();
            self.watch_certificates(&handle);
        }
        ReloadOutcome::Applied(changes)
    }

    /// Builds the snapshot of `config` (the file's config with the discovered backends merged
    /// in) keeping the live state of every backend that stays, gives new backends their first
    /// health checks, swaps it in, and drains the backends it no longer has.
    pub(crate) async fn swap_snapshot(&mut self, config: Arc<Config>) {
        let previous = self.state.load_full();
        let snapshot = Arc::new(Snapshot::build(config, Some(&previous)));
        // A pool with no backend up yet (a new one) gets its first checks before it serves.
        self.checkers.sync(&snapshot);
        let unchecked = crate::health::checker::first_round(&snapshot, false).await;
        if unchecked > 0 {
            tracing::warn!(
                unchecked,
                "first health checks of new backends not all done within the check timeout; serving with what is known"
            );
        }
        self.state.store(Arc::clone(&snapshot));
        for pool in snapshot.pools() {
            // Queued requests look again: limits, backends or their health may have changed.
            pool.queue.recheck();
        }
        let mut retired = Vec::new();
        for pool in previous.pools() {
            for endpoint in pool.endpoints.iter() {
                if !snapshot.contains_backend(&endpoint.backend) {
                    endpoint.backend.retire();
                    retired.push(Arc::clone(&endpoint.backend));
                }
            }
        }
        self.admin_state.add_draining(retired);
    }

    /// Re-reads every TLS listener's certificate files; a listener whose files are broken keeps
    /// its current certificates.
    fn reload_certificates(&mut self) -> ReloadOutcome {
        let mut changes = Vec::new();
        let mut errors = Vec::new();
        for running in &self.listeners {
            let (Handler::Http(http), Some(tls)) = (&running.handler, running.config.tls.as_ref())
            else {
                continue;
            };
            match http.update(&running.config.limits, Some(tls)) {
                Ok(()) => changes.push(format!(
                    "listener {}: certificates reloaded",
                    running.config.name
                )),
                Err(err) => errors.push((Arc::clone(&running.config.name), err)),
            }
        }
        if errors.is_empty() {
            ReloadOutcome::Applied(changes)
        } else {
            rejected(ReloadError::Certificates(errors))
        }
    }
}

impl Runtime {
    /// Re-reads the admin token file; a broken file keeps the current token.
    fn reload_admin_token(&mut self) -> ReloadOutcome {
        let Some(current) = self
            .config
            .admin
            .as_ref()
            .and_then(|admin| admin.token.clone())
        else {
            return ReloadOutcome::Unchanged;
        };
        match AdminToken::read(current.file()) {
            Ok(token) if token == current => ReloadOutcome::Unchanged,
            Ok(token) => {
                let access = self.admin_state.access().with_token(token.clone());
                self.admin_state.set_access(access);
                let mut config = (*self.config).clone();
                if let Some(admin) = config.admin.as_mut() {
                    admin.token = Some(token);
                }
                self.config = Arc::new(config);
                ReloadOutcome::Applied(vec!["admin: token reloaded".to_owned()])
            }
            Err(err) => rejected(ReloadError::AdminToken(err)),
        }
    }
}

fn rejected(error: ReloadError) -> ReloadOutcome {
    ReloadOutcome::Rejected(Arc::new(error))
}
