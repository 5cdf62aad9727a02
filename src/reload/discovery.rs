//! DNS discovery's side of the reload path: the first answers before the listeners accept, and
//! a changed discovered set applied as a reload applies a new backend list (the same
//! `swap_snapshot`: live state kept, removed backends drained, new ones checked, the diff
//! logged).

use std::sync::Arc;

use crate::config;
use crate::server::runtime::Runtime;
use crate::snapshot::Snapshot;

impl Runtime {
    /// Starts the lookups of the config's `discover` pools and waits for their first answers
    /// (each lookup is bounded by `[dns].timeout`; an SRV lookup and its targets take two), so
    /// the first snapshot has the discovered backends. A pool whose name does not answer in
    /// time starts with its static backends only and gets the rest when DNS answers.
    pub(crate) async fn start_discovery(&mut self) {
        if self.config.pools.iter().all(|pool| pool.discover.is_none()) {
            return;
        }
        self.discovery.sync(&self.config);
        let within = self.config.dns.timeout * 2;
        if self.discovery.first_answers(within).await {
            tracing::info!("discovery: first answers in");
        } else {
            tracing::warn!(
                waited_ms = within.as_millis() as u64,
                "discovery: not every discover pool answered in time; starting with what is known"
            );
        }
        let merged = self.discovery.registry().merge(&self.config);
        // Nothing has served yet: the first snapshot again, now with the discovered backends.
        self.state
            .store(Arc::new(Snapshot::build(Arc::new(merged), None)));
    }

    /// Rebuilds the snapshot with the discovered sets as they are now, if that changes any
    /// pool, and logs the change like a reload.
    pub(crate) async fn apply_discovery(&mut self) {
        let merged = Arc::new(self.discovery.registry().merge(&self.config));
        let changes = config::diff(&self.state.load().config, &merged);
        if changes.is_empty() {
            return;
        }
        tracing::info!(changes = %changes.join("; "), "discovery: backends changed");
        self.swap_snapshot(merged).await;
    }
}
