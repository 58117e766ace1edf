//! Seed discovery: the addresses a node contacts to join a cluster.
//!
//! Seeds are a static list of socket addresses and/or DNS names with a port (for example a
//! headless service name that resolves to every pod). [`Seeds::resolve`] resolves the names
//! now, keeps the static entries, and returns the union without duplicates, in a stable
//! order. A name that does not resolve is reported in [`Resolved::failures`] and does not
//! fail the others, so one bad record does not keep a node out of its cluster.
//!
//! ```
//! use foundation_distributed::discovery::Seeds;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let seeds = Seeds::new().address("127.0.0.1:4369".parse().unwrap()).dns("localhost", 4370);
//! let resolved = seeds.resolve().await;
//! assert!(resolved.addresses.contains(&"127.0.0.1:4369".parse().unwrap()));
//! assert!(resolved.failures.is_empty());
//! # }
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A DNS seed: a host name and the port to use with every address it resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSeed {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// Seed configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Seeds {
    /// Fixed addresses.
    pub addresses: Vec<SocketAddr>,
    /// Names resolved at every [`resolve`](Seeds::resolve).
    pub dns: Vec<DnsSeed>,
}

/// The outcome of [`Seeds::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Every address, without duplicates, sorted.
    pub addresses: Vec<SocketAddr>,
    /// Names that did not resolve, with the reason.
    pub failures: Vec<(String, String)>,
}

impl Seeds {
    /// No seeds.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fixed address.
    pub fn address(mut self, addr: SocketAddr) -> Self {
        self.addresses.push(addr);
        self
    }

    /// Adds a DNS name.
    pub fn dns(mut self, host: impl Into<String>, port: u16) -> Self {
        self.dns.push(DnsSeed {
            host: host.into(),
            port,
        });
        self
    }

    /// Resolves the DNS seeds (concurrently) and merges them with the fixed addresses.
    pub async fn resolve(&self) -> Resolved {
        let lookups = self.dns.iter().map(|seed| async move {
            let name = format!("{}:{}", seed.host, seed.port);
            (
                name.clone(),
                tokio::net::lookup_host(name)
                    .await
                    .map(|it| it.collect::<Vec<_>>()),
            )
        });
        let results = futures_util::future::join_all(lookups).await;
        let mut set: BTreeSet<SocketAddr> = self.addresses.iter().copied().collect();
        let mut failures = Vec::new();
        for (name, r) in results {
            match r {
                Ok(addrs) if !addrs.is_empty() => set.extend(addrs),
                Ok(_) => failures.push((name, "no addresses".to_string())),
                Err(e) => failures.push((name, e.to_string())),
            }
        }
        Resolved {
            addresses: set.into_iter().collect(),
            failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_and_dns_seeds_merge_and_bad_names_are_reported() {
        let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let seeds = Seeds::new()
            .address(a)
            .address(a)
            .dns("localhost", 7000)
            .dns("no-such-host.invalid", 7001);
        let r = seeds.resolve().await;
        assert_eq!(
            r.addresses.iter().filter(|x| **x == a).count(),
            1,
            "deduplicated"
        );
        assert_eq!(r.failures.len(), 1);
        assert!(r.failures[0].0.starts_with("no-such-host.invalid"));
    }

    #[test]
    fn seeds_load_from_toml() {
        let s: Seeds = toml::from_str(
            "addresses = [\"10.0.0.1:4369\"]\n[[dns]]\nhost = \"seed.svc\"\nport = 4369\n",
        )
        .unwrap();
        assert_eq!(s.addresses.len(), 1);
        assert_eq!(
            s.dns[0],
            DnsSeed {
                host: "seed.svc".into(),
                port: 4369
            }
        );
    }
}
