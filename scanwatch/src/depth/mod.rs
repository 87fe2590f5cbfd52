//! Protocol depth: what the first client payload of a connection says about the client.
//!
//! * [`tls`]: TLS ClientHello parser → JA4 (FoxIO), SNI, ALPN.
//! * [`probes`]: nmap's service-detection probes, byte for byte.
//! * [`payload`]: the first-payload classifier (nmap probes, scanner user agents and NSE
//!   requests, banner grabs, exploit-shaped requests from `[depth.patterns.*]`, TLS, plain HTTP).
//! * [`store`]: the persisted actor store's file I/O (the engine's timeline is pure).
//!
//! Everything here but `store` is pure and total over any input (fuzz targets in `fuzz/`).
pub mod actors;
pub mod payload;
pub mod probes;
pub mod store;
pub mod tls;

pub use payload::{classify, Class, Phase, Verdict};
pub use tls::{parse_client_hello, ClientHello, TlsError};
