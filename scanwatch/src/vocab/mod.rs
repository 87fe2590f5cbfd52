//! Shared vocabulary at the bottom of the agent: every stage may use these modules, and they
//! use nothing of the agent's own.
pub mod net;
pub mod process;
pub mod severity;
pub mod time;

pub use net::{canonical_ip, ip_to_key, is_internal, key_to_ip, Cidr};
pub use process::{Ancestor, ProcessAnchor, ProcessInfo};
pub use severity::{Direction, Severity};
pub use time::{format_duration, monotonic, parse_duration, rfc3339, rfc3339_from_unix};
