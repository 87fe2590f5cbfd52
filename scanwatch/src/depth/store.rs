//! The actor store on disk: one JSON file, written atomically (temporary file + rename).
use std::io::Write;
use std::path::{Path, PathBuf};

use super::actors::{ActorStore, STORE_VERSION, STORE_VERSION_MIN};

/// Largest store file read (bytes): `max_actors` × 4 KiB plus slack, far above what the caps allow.
pub fn max_file_bytes(max_actors: u32) -> u64 {
    u64::from(max_actors) * 4096 + (1 << 20)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes exceeds the bound of {max} for depth.max_actors")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: line {line}, column {column}: {msg}")]
    Parse { path: PathBuf, line: usize, column: usize, msg: String },
    #[error("{path}: actor store version {found} is not one this agent reads (versions {STORE_VERSION_MIN} to {STORE_VERSION}); move the file away or set depth.store_path to start a new store")]
    Version { path: PathBuf, found: u32 },
}

/// Load the store; a missing file is an empty store.
pub fn load(path: &Path, max_actors: u32) -> Result<ActorStore, StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ActorStore::default()),
        Err(e) => return Err(io(e)),
    };
    let max = max_file_bytes(max_actors);
    if meta.len() > max {
        return Err(StoreError::TooLarge { path: path.to_path_buf(), size: meta.len(), max });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let mut s: ActorStore = serde_json::from_str(&text).map_err(|e| StoreError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    if !(STORE_VERSION_MIN..=STORE_VERSION).contains(&s.version) {
        return Err(StoreError::Version { path: path.to_path_buf(), found: s.version });
    }
    s.clamp(max_actors as usize);
    Ok(s)
}

/// Write the store atomically (creating the directory).
pub fn save(path: &Path, store: &ActorStore) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec(store).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&text).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::depth::actors::Actor;
    use crate::depth::Phase;

    #[test]
    fn round_trip_bad_files_and_bounds() {
        let dir = std::env::temp_dir().join(format!("scanwatch-store-{}", std::process::id()));
        let path = dir.join("actors.json");
        assert_eq!(load(&path, 10).expect("missing is empty"), ActorStore::default());
        let mut s = ActorStore::default();
        let mut a = Actor::default();
        for i in 0..20 {
            a.mark(Phase::Enumeration, 100.0 + f64::from(i), &format!("nmap:probe{i}{}", "x".repeat(100)));
        }
        s.actors.insert("198.51.100.7".into(), a);
        save(&path, &s).expect("save");
        let back = load(&path, 10).expect("load");
        let m = back.actors.values().next().and_then(|a| a.enumeration.clone()).expect("mark");
        assert_eq!((m.count, m.first, m.last), (20, 100.0, 119.0));
        assert!(m.evidence.len() <= crate::depth::actors::EVIDENCE_MAX);
        assert!(m.evidence.iter().all(|e| e.len() <= crate::depth::actors::LABEL_MAX));

        std::fs::write(&path, "{\"version\": 1, \"actors\": {\n  \"x\": 3}}").expect("write");
        let e = load(&path, 10).expect_err("bad json");
        assert!(matches!(e, StoreError::Parse { line: 2, .. }), "{e}");
        std::fs::write(&path, "{\"version\": 9, \"actors\": {}}").expect("write");
        let e = load(&path, 10).expect_err("future version");
        assert!(matches!(e, StoreError::Version { found: 9, .. }));
        assert!(e.to_string().contains("versions 1 to 2"), "{e}");
        // A version-1 file (source addresses only, the first format) loads and is upgraded.
        std::fs::write(
            &path,
            r#"{"version":1,"actors":{"198.51.100.7":{"discovery":{"first":100.0,"last":101.0,"count":2,"evidence":["vertical_scan"]},"probes":0,"silent_ports":[],"auth_times":[],"ja4":[],"sni":[],"alpn":[],"ports":[80],"last_seen":101.0}}}"#,
        )
        .expect("write");
        let v1 = load(&path, 10).expect("version 1 loads");
        assert_eq!(v1.version, STORE_VERSION);
        let a = v1.actors.get("198.51.100.7").expect("actor");
        assert_eq!(a.discovery.as_ref().map(|m| m.count), Some(2));
        assert!(a.cluster.is_none() && a.members.is_empty());
        std::fs::write(&path, vec![b' '; (max_file_bytes(1) + 1) as usize]).expect("write");
        assert!(matches!(load(&path, 1), Err(StoreError::TooLarge { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
