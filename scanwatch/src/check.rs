//! `scanwatch check`: what this kernel offers and which hook each program would use.
//! Read-only: probes load tiny test programs/maps (aya feature probes) but attach nothing.
use std::{io::Write, path::Path};

use aya::{maps::MapType, programs::ProgramType};

use crate::loader::{self, HOOKS};

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// XDP native support is a driver property: report the driver and whether it is one with a
/// native XDP implementation we know of (the agent falls back to generic mode otherwise).
fn xdp_native_guess(iface: &str) -> (String, bool) {
    let drv = std::fs::read_link(format!("/sys/class/net/{iface}/device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    let drv = drv.unwrap_or_else(|| {
        // Virtual devices have no device/driver link; veth's uevent/type tells.
        if Path::new(&format!("/sys/class/net/{iface}/lower_veth")).exists() { "veth".into() } else { "virtual".into() }
    });
    let native = [
        "veth", "virtio_net", "ixgbe", "i40e", "ice", "mlx4_core", "mlx5_core", "bnxt_en", "nfp", "ena", "igb", "igc",
        "tun", "qede", "thunder", "sfc", "hv_netvsc",
    ]
    .contains(&drv.as_str());
    (drv, native)
}

pub fn print_report(out: &mut impl Write, cfg: &crate::config::Config) -> anyhow::Result<()> {
    writeln!(out, "kernel: {}", std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim())?;
    writeln!(out, "BTF (/sys/kernel/btf/vmlinux): {}", yes(Path::new("/sys/kernel/btf/vmlinux").exists()))?;
    writeln!(out, "tracefs mounted: {}", yes(loader::tracefs_mounted()))?;
    if let Some(root) = loader::tracefs_root() {
        match crate::source::live::tracepoints::check_all(root) {
            Ok(n) => writeln!(out, "tracepoint layouts: match ({n} tracepoints, {} fields)", scanwatch_common::tp::ALL.len())?,
            Err(e) => writeln!(out, "tracepoint layouts: MISMATCH: {e}")?,
        }
    }
    writeln!(out, "bpffs mounted (/sys/fs/bpf): {}", yes(is_bpffs("/sys/fs/bpf")))?;
    writeln!(out, "kprobes (kprobe PMU): {}", yes(loader::kprobes_available()))?;
    let probe = |t: ProgramType| aya::sys::is_program_supported(t).map(yes).unwrap_or("unknown");
    writeln!(out, "program type XDP: {}", probe(ProgramType::Xdp))?;
    writeln!(out, "program type tracepoint: {}", probe(ProgramType::TracePoint))?;
    writeln!(out, "program type kprobe (load): {}", probe(ProgramType::KProbe))?;
    writeln!(out, "program type tracing (fentry/fexit): {}", probe(ProgramType::Tracing))?;
    writeln!(
        out,
        "ring buffer map: {}",
        aya::sys::is_map_supported(MapType::RingBuf).map(yes).unwrap_or("unknown")
    )?;
    writeln!(out, "LRU hash map: {}", aya::sys::is_map_supported(MapType::LruHash).map(yes).unwrap_or("unknown"))?;
    writeln!(out, "fentry attach: not used (the programs are built without CO-RE; kprobe is the preferred hook)")?;
    if let Some(i) = loader::default_route_interface() {
        let (drv, native) = xdp_native_guess(&i);
        writeln!(
            out,
            "default-route interface: {i} (driver {drv}): XDP tries native then generic; native {}",
            if native {
                "supported by this driver (may still need free TX queues / a smaller MTU; the agent falls back and says why)"
            } else {
                "not implemented by this driver (generic mode)"
            }
        )?;
    }
    let mut ifaces = cfg.agent.interfaces.clone();
    if ifaces.is_empty() {
        ifaces.extend(loader::default_route_interface());
    }
    writeln!(out, "interface modes (host: socket table; gateway: forwarded traffic judged by replies; mirror: all by replies):")?;
    for m in crate::source::live::ifmode::resolve(&ifaces, &cfg.agent.interface_modes) {
        writeln!(out, "  {m}")?;
    }
    writeln!(out, "hooks (first available method is used):")?;
    for spec in HOOKS {
        let chosen = spec.methods.iter().find(|m| loader::method_available(m));
        let all: Vec<String> = spec
            .methods
            .iter()
            .map(|m| format!("{}{}", m.describe(), if loader::method_available(m) { "" } else { " (unavailable)" }))
            .collect();
        writeln!(
            out,
            "  {:<15} -> {:<40} [{}]",
            spec.hook,
            chosen.map(|m| m.describe()).unwrap_or_else(|| "NONE".into()),
            all.join(" > ")
        )?;
    }
    Ok(())
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(path) && l.split_whitespace().nth(2) == Some("bpf")))
        .unwrap_or(false)
}
