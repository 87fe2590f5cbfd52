//! Tracepoint layouts checked against the running kernel. The outbound programs read fields at
//! the offsets in `scanwatch_common::tp`; a kernel whose `format` file puts a field elsewhere (or
//! drops it) would hand them garbage, so the agent reads each format file before attaching and
//! refuses with the tracepoint and field named.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scanwatch_common::tp::{self, Field};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("tracepoint {category}:{event}: cannot read {path}: {reason}")]
    Unreadable { category: &'static str, event: &'static str, path: PathBuf, reason: String },
    #[error("tracepoint {category}:{event}: field `{field}` is missing from the kernel's format")]
    Missing { category: &'static str, event: &'static str, field: &'static str },
    #[error(
        "tracepoint {category}:{event}: field `{field}` is at offset {actual_offset} (size {actual_size}) in this kernel; the programs read it at offset {offset} (size {size})"
    )]
    Moved {
        category: &'static str,
        event: &'static str,
        field: &'static str,
        offset: usize,
        size: usize,
        actual_offset: usize,
        actual_size: usize,
    },
}

/// Fields of one format file: name → (offset, size).
pub fn parse_format(text: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        let mut decl = None;
        let (mut offset, mut size) = (None, None);
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.trim().parse().ok();
            } else if decl.is_none() && !part.is_empty() && !part.starts_with("signed:") {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else { continue };
        // The name is the last identifier of the declaration, before any array suffix.
        let name = decl.split('[').next().unwrap_or(decl).trim();
        let name = name.rsplit(|c: char| c.is_whitespace() || c == '*').next().unwrap_or(name);
        out.insert(name.to_string(), (offset, size));
    }
    out
}

/// Check one field against a parsed format.
pub fn check_field(f: &Field, fields: &BTreeMap<String, (usize, usize)>) -> Result<(), LayoutError> {
    match fields.get(f.name) {
        None => Err(LayoutError::Missing { category: f.category, event: f.event, field: f.name }),
        Some(&(offset, size)) if offset != f.offset || size < f.size => Err(LayoutError::Moved {
            category: f.category,
            event: f.event,
            field: f.name,
            offset: f.offset,
            size: f.size,
            actual_offset: offset,
            actual_size: size,
        }),
        Some(_) => Ok(()),
    }
}

/// Check every field the programs read against the format files under `tracefs`
/// (`/sys/kernel/tracing`). Returns the number of tracepoints checked.
pub fn check_all(tracefs: &Path) -> Result<usize, LayoutError> {
    let mut parsed: BTreeMap<(&str, &str), BTreeMap<String, (usize, usize)>> = BTreeMap::new();
    for f in tp::ALL.iter() {
        let fields = match parsed.entry((f.category, f.event)) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let path = tracefs.join("events").join(f.category).join(f.event).join("format");
                let text = std::fs::read_to_string(&path).map_err(|err| LayoutError::Unreadable {
                    category: f.category,
                    event: f.event,
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
                e.insert(parse_format(&text))
            }
        };
        check_field(f, fields)?;
    }
    Ok(parsed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCK_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s\"
";

    fn state_fields() -> Vec<Field> {
        tp::ALL.iter().copied().filter(|f| f.event == "inet_sock_set_state").collect()
    }

    #[test]
    fn the_6_18_layout_passes() {
        let fields = parse_format(SOCK_STATE);
        assert_eq!(fields.get("daddr_v6"), Some(&(56, 16)));
        assert_eq!(fields.get("skaddr"), Some(&(8, 8)));
        for f in state_fields() {
            check_field(&f, &fields).expect("6.18 layout");
        }
    }

    #[test]
    fn a_moved_field_is_refused_by_name() {
        // A kernel that grew `saddr` by 4 bytes moves everything after it.
        let moved = SOCK_STATE.replace("daddr[4];\toffset:36", "daddr[4];\toffset:40");
        let fields = parse_format(&moved);
        let errs: Vec<_> = state_fields().iter().filter_map(|f| check_field(f, &fields).err()).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let msg = errs[0].to_string();
        assert!(msg.contains("sock:inet_sock_set_state") && msg.contains("`daddr`"), "{msg}");
        assert!(msg.contains("offset 40") && msg.contains("offset 36"), "{msg}");
    }

    #[test]
    fn a_missing_field_is_refused_by_name() {
        let gone = SOCK_STATE.replace("\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n", "");
        let fields = parse_format(&gone);
        let err = state_fields().iter().find_map(|f| check_field(f, &fields).err()).expect("refused");
        assert_eq!(
            err,
            LayoutError::Missing { category: "sock", event: "inet_sock_set_state", field: "protocol" }
        );
    }

    #[test]
    fn a_tree_of_format_files_is_checked_and_a_missing_file_named() {
        let dir = std::env::temp_dir().join(format!("sw-tp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Only the sock tracepoint present: the first syscall one is reported unreadable.
        let p = dir.join("events/sock/inet_sock_set_state");
        std::fs::create_dir_all(&p).expect("mkdir");
        std::fs::write(p.join("format"), SOCK_STATE).expect("write");
        let err = check_all(&dir).expect_err("syscall formats missing");
        assert!(matches!(err, LayoutError::Unreadable { category: "syscalls", .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
