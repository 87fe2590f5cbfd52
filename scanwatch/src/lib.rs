//! scanwatch agent library: loader, collector, detection, alerts.

pub mod alert;
pub mod baseline;
pub mod bench;
pub mod check;
pub mod cli;
pub mod collector;
pub mod config;
pub mod detect;
pub mod enrich;
pub mod first_contact;
pub mod hunt;
pub mod loader;
pub mod packet;
pub mod response;
pub mod sinks;
pub mod sketch;

/// The compiled eBPF object (built by build.rs), 8-byte aligned for the ELF parser.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scanwatch"))
}
