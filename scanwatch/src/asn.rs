//! Attribution: an offline MaxMind-format ASN database (`enrich.asn_db`, e.g. GeoLite2-ASN.mmdb)
//! adds the source's autonomous system number and organisation to inbound findings (`asn`,
//! `org`). The file is read once into memory; SIGHUP re-reads it.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::alert::Alert;
use crate::control::AsnStatus;

#[derive(Debug, thiserror::Error)]
#[error("enrich.asn_db: {path}: {reason}")]
pub struct AsnError {
    pub path: PathBuf,
    pub reason: String,
}

/// The record fields of a GeoLite2-ASN database.
#[derive(Debug, Deserialize)]
struct AsnRecord<'a> {
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

pub struct AsnDb {
    reader: maxminddb::Reader<Vec<u8>>,
    pub path: PathBuf,
    pub stats: AsnStatus,
}

impl AsnDb {
    pub fn open(path: &Path) -> Result<AsnDb, AsnError> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| AsnError { path: path.to_path_buf(), reason: e.to_string() })?;
        let t = &reader.metadata.database_type;
        if !t.to_ascii_lowercase().contains("asn") {
            eprintln!("scanwatch: WARNING enrich.asn_db: {} is a {t:?} database; looking up ASN fields anyway", path.display());
        }
        Ok(AsnDb { reader, path: path.to_path_buf(), stats: AsnStatus { loaded: true, ..Default::default() } })
    }

    /// Number and organisation of `ip`'s autonomous system, if the database knows it.
    pub fn lookup(&self, ip: IpAddr) -> Option<(u32, Option<String>)> {
        let ip = crate::vocab::canonical_ip(ip);
        let r: AsnRecord = self.reader.lookup(ip).ok().flatten()?;
        Some((r.autonomous_system_number?, r.autonomous_system_organization.map(str::to_string)))
    }

    /// Add `asn` / `org` to an inbound finding.
    pub fn annotate(&mut self, a: &mut Alert) {
        let Some(ip) = a.source.ip else { return };
        match self.lookup(ip) {
            Some((asn, org)) => {
                a.annotations.asn = Some(asn);
                a.annotations.org = org;
                self.stats.hits += 1;
            }
            None => self.stats.misses += 1,
        }
    }
}
