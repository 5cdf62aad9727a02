//! One DNS lookup of a `discover` target with hickory-resolver: the backends it names and the
//! TTL they hold for, or what kind of failure it was.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::{DiscoverTarget, DnsConfig};

/// Most an SRV weight counts for: the largest weight a configured backend may have.
const MAX_WEIGHT: u32 = 10_000;

/// One backend an answer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Found {
    /// Where it listens.
    pub(crate) address: SocketAddr,
    /// Its weight: 1 for A/AAAA, the SRV weight (0 counted as 1) otherwise.
    pub(crate) weight: NonZeroU32,
}

/// A good answer: its backends (sorted, unique) and the shortest TTL among its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) backends: Vec<Found>,
    pub(crate) ttl: Duration,
}

/// Why a lookup gave no backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// The name exists but has no records of the type asked (or SRV targets with none).
    Empty,
    /// No answer: a timeout, SERVFAIL, REFUSED, a server that is down.
    Error(String),
}

impl Failure {
    /// The metrics label of this outcome.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Failure::NxDomain => "nxdomain",
            Failure::Empty => "empty",
            Failure::Error(_) => "error",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NxDomain => f.write_str("NXDOMAIN: the name does not exist"),
            Failure::Empty => f.write_str("the answer has no records"),
            Failure::Error(error) => f.write_str(error),
        }
    }
}

/// The resolver of `dns`: its servers over UDP (TCP for truncated answers), or the system's
/// (resolv.conf and `/etc/hosts`).
/// Nothing is cached, so every lookup asks the servers and sees the records' own TTLs.
pub(crate) fn resolver(dns: &DnsConfig) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if dns.servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|err| format!("cannot read the system's resolver config: {err}"))?
    } else {
        let mut config = ResolverConfig::new();
        for server in &dns.servers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
            config.add_name_server(NameServerConfig::new(*server, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let explicit = !dns.servers.is_empty();
    let options = builder.options_mut();
    if explicit {
        // The servers given are the whole truth; the local hosts file is the system's.
        options.use_hosts_file = ResolveHosts::Never;
    }
    options.timeout = dns.timeout;
    // Each refresh is the retry; one attempt keeps a lookup within `timeout` per server.
    options.attempts = 1;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    Ok(builder.build())
}

/// Looks `target` up once.
pub(crate) async fn lookup(
    resolver: &Result<Arc<TokioResolver>, String>,
    target: &DiscoverTarget,
) -> Result<Answer, Failure> {
    let resolver = resolver
        .as_ref()
        .map_err(|err| Failure::Error(err.clone()))?;
    let (mut backends, ttl) = match target {
        DiscoverTarget::Name { name, port } => {
            let (addresses, ttl) = addresses(resolver, name).await?;
            let one = NonZeroU32::MIN;
            let backends = addresses
                .into_iter()
                .map(|ip| Found {
                    address: SocketAddr::new(ip, *port),
                    weight: one,
                })
                .collect();
            (backends, ttl)
        }
        DiscoverTarget::Srv(name) => srv(resolver, name).await?,
    };
    backends.sort();
    backends.dedup_by_key(|found| found.address);
    if backends.is_empty() {
        return Err(Failure::Empty);
    }
    Ok(Answer { backends, ttl })
}

/// The A and AAAA addresses of `name` and their shortest TTL.
async fn addresses(
    resolver: &TokioResolver,
    name: &str,
) -> Result<(Vec<std::net::IpAddr>, Duration), Failure> {
    let found = resolver.lookup_ip(name).await.map_err(classify)?;
    Ok((found.iter().collect(), shortest_ttl(found.as_lookup())))
}

/// The backends of the SRV records of `name` with the lowest priority (the others are
/// backups, RFC 2782), each target resolved to its addresses, and the shortest TTL of all
/// the records used.
async fn srv(resolver: &TokioResolver, name: &str) -> Result<(Vec<Found>, Duration), Failure> {
    let records = resolver.srv_lookup(name).await.map_err(classify)?;
    let mut ttl = shortest_ttl(records.as_lookup());
    let Some(priority) = records.iter().map(|srv| srv.priority()).min() else {
        return Err(Failure::Empty);
    };
    let mut backends = Vec::new();
    for srv in records.iter().filter(|srv| srv.priority() == priority) {
        // "." means the service is decidedly not available at this name.
        if srv.target().is_root() {
            continue;
        }
        let target = srv.target().to_ascii();
        let addresses = match addresses(resolver, &target).await {
            Ok((addresses, target_ttl)) => {
                ttl = ttl.min(target_ttl);
                addresses
            }
            Err(Failure::NxDomain | Failure::Empty) => {
                tracing::warn!(srv = name, target = %target, "discovery: SRV target has no addresses; skipped");
                continue;
            }
            Err(error) => return Err(error),
        };
        let weight = NonZeroU32::new(u32::from(srv.weight()).clamp(1, MAX_WEIGHT))
            .unwrap_or(NonZeroU32::MIN);
        backends.extend(addresses.into_iter().map(|ip| Found {
            address: SocketAddr::new(ip, srv.port()),
            weight,
        }));
    }
    Ok((backends, ttl))
}

fn shortest_ttl(lookup: &hickory_resolver::lookup::Lookup) -> Duration {
    let ttl = lookup.records().iter().map(|record| record.ttl()).min();
    Duration::from_secs(u64::from(ttl.unwrap_or(0)))
}

/// What a resolver error means for the pool.
fn classify(error: ResolveError) -> Failure {
    match error.proto().map(|proto| proto.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => match *response_code {
            ResponseCode::NXDomain => Failure::NxDomain,
            ResponseCode::NoError => Failure::Empty,
            code => Failure::Error(format!("the server answered {code}")),
        },
        _ => Failure::Error(error.to_string()),
    }
}
