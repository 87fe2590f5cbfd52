//! NATS connection from `[fleet]`: credentials, TLS, reconnect notices on stderr, and a clear
//! error when authentication fails at start.
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};

use super::config::FleetConfig;

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("fleet: NATS authentication failed at {servers} (fleet.user / fleet.password / fleet.nkey_seed_file / TLS client certificate rejected): {detail}")]
    Auth { servers: String, detail: String },
    #[error("fleet: cannot connect to NATS at {servers}: {detail}")]
    Connect { servers: String, detail: String },
    #[error("fleet: cannot read {key} {path}: {source}")]
    File {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fleet: no servers configured (fleet.servers is empty)")]
    NoServers,
}

/// Connect; `who` names the client (`agent web-01`, `correlator 3f2a`). With `wait` false an
/// unreachable server is not an error: the client keeps trying in the background (agents must
/// start without NATS); authentication and TLS failures are always errors.
pub async fn connect(fc: &FleetConfig, who: &str, wait: bool) -> Result<Client, NatsError> {
    if fc.servers.is_empty() {
        return Err(NatsError::NoServers);
    }
    let servers = fc.servers.join(",");
    let opts = || -> Result<ConnectOptions, NatsError> {
        let label = who.to_string();
        let mut o = ConnectOptions::new()
            .name(format!("scanwatch {who}"))
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(move |ev| {
                let label = label.clone();
                async move {
                    match ev {
                        Event::Disconnected => eprintln!("scanwatch: fleet: {label}: disconnected from NATS, reconnecting"),
                        Event::Connected => eprintln!("scanwatch: fleet: {label}: connected to NATS"),
                        Event::ServerError(e) => eprintln!("scanwatch: fleet: {label}: NATS server error: {e}"),
                        Event::SlowConsumer(_) | Event::LameDuckMode | Event::Draining | Event::Closed | Event::ClientError(_) => {
                            eprintln!("scanwatch: fleet: {label}: NATS {ev}")
                        }
                    }
                }
            });
        if let (Some(u), p) = (&fc.user, &fc.password) {
            o = o.user_and_password(u.clone(), p.clone().unwrap_or_default());
        }
        if let Some(path) = &fc.nkey_seed_file {
            let seed = std::fs::read_to_string(path).map_err(|source| NatsError::File {
                key: "fleet.nkey_seed_file",
                path: path.display().to_string(),
                source,
            })?;
            o = o.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &fc.tls_ca {
            std::fs::metadata(ca).map_err(|source| NatsError::File { key: "fleet.tls_ca", path: ca.display().to_string(), source })?;
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(c), Some(k)) = (&fc.tls_cert, &fc.tls_key) {
            for (key, p) in [("fleet.tls_cert", c), ("fleet.tls_key", k)] {
                std::fs::metadata(p).map_err(|source| NatsError::File { key, path: p.display().to_string(), source })?;
            }
            o = o.add_client_certificate(c.clone(), k.clone()).require_tls(true);
        }
        Ok(o)
    };
    // First attempt without retry: tells an authentication failure from an absent server.
    match opts()?.connect(fc.servers.clone()).await {
        Ok(c) => Ok(c),
        Err(e) => match e.kind() {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                Err(NatsError::Auth { servers, detail: e.to_string() })
            }
            ConnectErrorKind::Tls | ConnectErrorKind::ServerParse => Err(NatsError::Connect { servers, detail: e.to_string() }),
            _ if wait => Err(NatsError::Connect { servers, detail: e.to_string() }),
            _ => {
                eprintln!("scanwatch: fleet: {who}: NATS at {servers} unreachable ({e}); retrying in the background");
                opts()?
                    .retry_on_initial_connect()
                    .connect(fc.servers.clone())
                    .await
                    .map_err(|e| NatsError::Connect { servers, detail: e.to_string() })
            }
        },
    }
}
