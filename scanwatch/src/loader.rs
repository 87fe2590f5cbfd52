//! Loads the embedded eBPF object, applies sizes and settings, and attaches programs with a
//! fallback chain per hook. Every choice is reported so the operator knows what is running.
use std::path::Path;

use crate::config::XdpModeSetting;

use aya::{
    maps::Array,
    programs::{KProbe, TracePoint, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use scanwatch_common::{
    ProcConfig, XdpConfig, MAP_CONFIG, MAP_EVENTS, MAP_FINGERPRINTS, MAP_HONEYPORTS, MAP_PROCS,
    MAP_SOURCES, PROG_KP_CONNECT, PROG_TP_CONNECT, PROG_TP_CONNECT_EXIT, PROG_TP_SENDMMSG,
    PROG_TP_SENDMSG, PROG_TP_SENDTO, PROG_TP_SOCKET, PROG_TP_SOCK_STATE, PROG_TP_WRITE, PROG_XDP,
};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program `{0}` is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program `{name}`: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("map `{name}`: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("interface `{iface}`: XDP attach failed in every mode: {detail}")]
    XdpAttach { iface: String, detail: String },
    #[error(
        "interface `{iface}` is busy: another XDP program is attached ({attached}); stop the agent \
         that owns it or detach it (`ip link set dev {iface} xdp off`) and start again ({detail})"
    )]
    XdpBusy { iface: String, attached: String, detail: String },
    #[error("hook {hook}: no attach method worked: {detail}")]
    Hook { hook: &'static str, detail: String },
    #[error("tracefs is not mounted at /sys/kernel/tracing (mount -t tracefs nodev /sys/kernel/tracing)")]
    NoTracefs,
}

/// Sizes and settings applied before/at load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Per-source table entries (rounded down to whole sets of `SRC_WAYS`).
    pub max_sources: u32,
    /// Seed of the per-source table's set index (`src_set`); random by default (see
    /// [`random_seed`]), fixed where results must not depend on it (replay).
    pub source_seed: u32,
    pub max_fingerprints: u32,
    pub max_procs: u32,
    pub ringbuf_bytes: u32,
    pub enforce_blocklist: bool,
    pub xdp: XdpConfig,
    pub own_tgid: u32,
    /// Outbound events per process per `PROC_BUDGET_WINDOW_NS` (0 = no limit).
    pub proc_events_per_window: u32,
    /// Outbound pair window in ns (0 = every send reported).
    pub pair_window_ns: u64,
    pub honeyports_tcp: Vec<u16>,
    pub honeyports_udp: Vec<u16>,
    /// Sample first client payloads of connections to open ports (`depth.enabled`).
    pub first_payload: bool,
    /// Compile in the classification of forwarded packets (some interface in gateway / mirror
    /// mode; the runtime `cfgflag::FORWARDED` still gates it). Off: a host-mode agent's packets
    /// skip the per-packet settings copy it needs.
    pub gateway: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_sources: scanwatch_common::DEFAULT_MAX_SOURCES,
            source_seed: random_seed(),
            max_fingerprints: scanwatch_common::DEFAULT_MAX_FINGERPRINTS,
            max_procs: scanwatch_common::DEFAULT_MAX_PROCS,
            ringbuf_bytes: scanwatch_common::DEFAULT_RINGBUF_BYTES,
            enforce_blocklist: false,
            xdp: XdpConfig::default_config(),
            own_tgid: std::process::id(),
            proc_events_per_window: scanwatch_common::DEFAULT_PROC_EVENTS_PER_SEC / 10,
            pair_window_ns: scanwatch_common::DEFAULT_PAIR_WINDOW_NS,
            honeyports_tcp: Vec::new(),
            honeyports_udp: Vec::new(),
            first_payload: true,
            gateway: false,
        }
    }
}

/// Load the production object (programs are loaded lazily by `attach_*` or `load_program`).
pub fn load(opts: &LoadOptions) -> Result<Ebpf, LoaderError> {
    load_object(opts, crate::ebpf_object())
}

/// Load an object built from the same sources (the production object, or the benchmark's,
/// which adds only the bench entry points).
pub fn load_object(opts: &LoadOptions, object: &[u8]) -> Result<Ebpf, LoaderError> {
    // RLIMIT_MEMLOCK: kernels ≥ 5.11 account BPF memory to the memcg; raising it is best-effort.
    let rl = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rl) } != 0 {
        log::debug!("setrlimit(RLIMIT_MEMLOCK) failed; relying on memcg accounting");
    }
    let enforce: u32 = opts.enforce_blocklist.into();
    let sets = scanwatch_common::src_sets(opts.max_sources);
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(MAP_SOURCES, sets * scanwatch_common::SRC_WAYS)
        .map_max_entries(scanwatch_common::MAP_SRC_OCCUPIED, sets.div_ceil(8))
        .map_max_entries(MAP_FINGERPRINTS, opts.max_fingerprints)
        .map_max_entries(MAP_PROCS, opts.max_procs)
        .map_max_entries(MAP_EVENTS, opts.ringbuf_bytes)
        // must exist: a renamed or mangled global would silently leave enforcement off.
        .override_global("ENFORCE_BLOCKLIST", &enforce, true)
        .override_global("FIRST_PAYLOAD", &u32::from(opts.first_payload), true)
        .override_global("GATEWAY", &u32::from(opts.gateway), true)
        .override_global("SRC_SETS", &sets, true)
        .override_global("SRC_SEED", &opts.source_seed, true)
        .load(object)?;
    write_config(&mut ebpf, &opts.xdp)?;
    {
        let map = ebpf.map_mut("PROC_CONFIG").ok_or(LoaderError::MissingMap("PROC_CONFIG"))?;
        let mut arr: Array<_, ProcConfig> =
            Array::try_from(map).map_err(|source| LoaderError::Map { name: "PROC_CONFIG", source })?;
        let cfg = ProcConfig {
            own_tgid: opts.own_tgid,
            events_per_window: opts.proc_events_per_window,
            pair_window_ns: opts.pair_window_ns,
        };
        arr.set(0, cfg, 0)
            .map_err(|source| LoaderError::Map { name: "PROC_CONFIG", source })?;
    }
    {
        let map = ebpf.map_mut(MAP_HONEYPORTS).ok_or(LoaderError::MissingMap(MAP_HONEYPORTS))?;
        let mut hp: Array<_, u64> =
            Array::try_from(map).map_err(|source| LoaderError::Map { name: MAP_HONEYPORTS, source })?;
        for (slot, ports) in [(0u32, &opts.honeyports_tcp), (1024u32, &opts.honeyports_udp)] {
            for p in ports {
                let idx = slot + (u32::from(*p) >> 6);
                let word = hp.get(&idx, 0).map_err(|source| LoaderError::Map { name: MAP_HONEYPORTS, source })?;
                hp.set(idx, word | (1u64 << (p & 63)), 0)
                    .map_err(|source| LoaderError::Map { name: MAP_HONEYPORTS, source })?;
            }
        }
    }
    Ok(ebpf)
}

/// A seed from the kernel's random pool (getrandom(2)); the clock and pid if it fails.
pub fn random_seed() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 4 {
        return u32::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    t ^ std::process::id().rotate_left(16)
}

/// Write the runtime XDP settings (single-entry config map).
pub fn write_config(ebpf: &mut Ebpf, cfg: &XdpConfig) -> Result<(), LoaderError> {
    let map = ebpf.map_mut(MAP_CONFIG).ok_or(LoaderError::MissingMap(MAP_CONFIG))?;
    let mut arr: Array<_, XdpConfig> =
        Array::try_from(map).map_err(|source| LoaderError::Map { name: MAP_CONFIG, source })?;
    arr.set(0, *cfg, 0).map_err(|source| LoaderError::Map { name: MAP_CONFIG, source })
}

/// Load the XDP program (idempotent).
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoaderError> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .ok_or(LoaderError::MissingProgram(PROG_XDP))?
        .try_into()
        .map_err(|source| LoaderError::Program { name: PROG_XDP, source })?;
    if prog.fd().is_err() {
        prog.load().map_err(|source| LoaderError::Program { name: PROG_XDP, source })?;
    }
    Ok(prog)
}

/// Attach XDP to `iface`: native (driver) mode first, generic (SKB) mode as the fallback.
/// Returns the mode that attached ("native" / "generic") and, after a fallback, why the
/// preferred mode failed.
pub fn attach_xdp(ebpf: &mut Ebpf, iface: &str, choice: XdpModeSetting) -> Result<(&'static str, Option<String>), LoaderError> {
    let prog = xdp_program(ebpf)?;
    let order: &[(XdpMode, &'static str)] = match choice {
        XdpModeSetting::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        XdpModeSetting::Native => &[(XdpMode::Driver, "native")],
        XdpModeSetting::Skb => &[(XdpMode::Skb, "generic")],
    };
    let mut detail = String::new();
    for (mode, name) in order {
        match prog.attach(iface, *mode) {
            Ok(_) => return Ok((name, (!detail.is_empty()).then(|| detail.trim_end_matches("; ").to_string()))),
            Err(e) => detail.push_str(&format!("{name}: {}; ", error_chain(&e))),
        }
    }
    let detail = detail.trim_end_matches("; ").to_string();
    match attached_xdp(iface) {
        Some(attached) => Err(LoaderError::XdpBusy { iface: iface.to_string(), attached, detail }),
        None => Err(LoaderError::XdpAttach { iface: iface.to_string(), detail }),
    }
}

/// The XDP programs the kernel has attached to `iface`, described (`scanwatch_xdp, id 42, tag
/// 0123abcd, generic mode`), as iproute2 reads them from the kernel over netlink
/// (`ip -details -json link show`); None when none is attached or `ip` cannot tell.
pub fn attached_xdp(iface: &str) -> Option<String> {
    let out = std::process::Command::new("ip").args(["-details", "-json", "link", "show", "dev", iface]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    describe_attached_xdp(v.get(0)?.get("xdp")?)
}

/// The `xdp` object of `ip -details -json link show` in words.
pub fn describe_attached_xdp(xdp: &serde_json::Value) -> Option<String> {
    let mode_name = |m: Option<u64>| match m {
        Some(1) => "native mode",
        Some(2) => "generic mode",
        Some(3) => "offload mode",
        _ => "unknown mode",
    };
    let one = |mode: Option<u64>, prog: &serde_json::Value| -> Option<String> {
        let id = prog.get("id")?.as_u64()?;
        let name = prog.get("name").and_then(|n| n.as_str()).filter(|n| !n.is_empty()).unwrap_or("(no name)");
        let tag = prog.get("tag").and_then(|t| t.as_str()).unwrap_or("?");
        Some(format!("`{name}`, program id {id}, tag {tag}, {}", mode_name(mode)))
    };
    let mut found = Vec::new();
    if let Some(list) = xdp.get("attached").and_then(|a| a.as_array()) {
        for a in list {
            if let Some(p) = a.get("prog") {
                found.extend(one(a.get("mode").and_then(|m| m.as_u64()), p));
            }
        }
    }
    if found.is_empty() {
        if let Some(p) = xdp.get("prog") {
            found.extend(one(xdp.get("mode").and_then(|m| m.as_u64()), p));
        }
    }
    (!found.is_empty()).then(|| found.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_xdp_is_described_from_iproute2_json() {
        let single: serde_json::Value = serde_json::from_str(
            r#"{"mode":2,"prog":{"id":4242,"name":"scanwatch_xdp","tag":"0a1b2c3d4e5f6071","jited":1}}"#,
        )
        .expect("json");
        assert_eq!(
            describe_attached_xdp(&single).as_deref(),
            Some("`scanwatch_xdp`, program id 4242, tag 0a1b2c3d4e5f6071, generic mode")
        );
        let multi: serde_json::Value = serde_json::from_str(
            r#"{"mode":4,"attached":[{"mode":1,"prog":{"id":7,"name":"xdp_fw","tag":"aa"}},{"mode":2,"prog":{"id":8,"name":"","tag":"bb"}}]}"#,
        )
        .expect("json");
        assert_eq!(
            describe_attached_xdp(&multi).as_deref(),
            Some("`xdp_fw`, program id 7, tag aa, native mode; `(no name)`, program id 8, tag bb, generic mode")
        );
        assert_eq!(describe_attached_xdp(&serde_json::json!({})), None);
    }
}

/// An error with its sources (aya's messages often keep the errno in the source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One outbound hook and the methods it can use, in order of preference.
pub struct HookSpec {
    pub hook: &'static str,
    pub methods: &'static [Method],
}

#[derive(Clone, Copy, Debug)]
pub enum Method {
    /// kprobe program attached to each listed kernel function.
    Kprobe { prog: &'static str, functions: &'static [&'static str] },
    Tracepoint { prog: &'static str, category: &'static str, name: &'static str },
}

impl Method {
    pub fn describe(&self) -> String {
        match self {
            Method::Kprobe { functions, .. } => format!("kprobe:{}", functions.join("+")),
            Method::Tracepoint { category, name, .. } => format!("tracepoint:{category}:{name}"),
        }
    }
}

/// The kernel-compatibility table: per hook, the attach methods in order of preference.
/// (fentry would precede kprobe; it is not offered because programs are built without CO-RE.)
pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        hook: "connect",
        methods: &[
            Method::Kprobe { prog: PROG_KP_CONNECT, functions: &["tcp_v4_connect", "tcp_v6_connect"] },
            Method::Tracepoint { prog: PROG_TP_CONNECT, category: "syscalls", name: "sys_enter_connect" },
        ],
    },
    HookSpec {
        hook: "connect_result",
        methods: &[Method::Tracepoint { prog: PROG_TP_CONNECT_EXIT, category: "syscalls", name: "sys_exit_connect" }],
    },
    HookSpec {
        hook: "socket",
        methods: &[Method::Tracepoint { prog: PROG_TP_SOCKET, category: "syscalls", name: "sys_enter_socket" }],
    },
    HookSpec {
        hook: "sendto",
        methods: &[Method::Tracepoint { prog: PROG_TP_SENDTO, category: "syscalls", name: "sys_enter_sendto" }],
    },
    HookSpec {
        hook: "sendmsg",
        methods: &[Method::Tracepoint { prog: PROG_TP_SENDMSG, category: "syscalls", name: "sys_enter_sendmsg" }],
    },
    HookSpec {
        hook: "sendmmsg",
        methods: &[Method::Tracepoint { prog: PROG_TP_SENDMMSG, category: "syscalls", name: "sys_enter_sendmmsg" }],
    },
    HookSpec {
        hook: "tcp_outcome",
        methods: &[Method::Tracepoint { prog: PROG_TP_SOCK_STATE, category: "sock", name: "inet_sock_set_state" }],
    },
    HookSpec {
        hook: "write",
        methods: &[Method::Tracepoint { prog: PROG_TP_WRITE, category: "syscalls", name: "sys_enter_write" }],
    },
];

/// Whether the kernel can attach kprobes (perf kprobe PMU present).
pub fn kprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

pub fn tracefs_mounted() -> bool {
    tracefs_root().is_some()
}

/// Where tracefs is mounted (`/sys/kernel/tracing`, or the older debugfs location).
pub fn tracefs_root() -> Option<&'static Path> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].into_iter().map(Path::new).find(|p| p.join("events").exists())
}

/// Whether a method could be used on this kernel, without attaching anything.
pub fn method_available(m: &Method) -> bool {
    match m {
        Method::Kprobe { .. } => kprobes_available(),
        Method::Tracepoint { category, name, .. } => {
            Path::new(&format!("/sys/kernel/tracing/events/{category}/{name}")).exists()
                || Path::new(&format!("/sys/kernel/debug/tracing/events/{category}/{name}")).exists()
        }
    }
}

/// Load (verify) a program without attaching it. Used by tests and `check`.
pub fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoaderError> {
    let prog = ebpf.program_mut(name).ok_or(LoaderError::MissingProgram(name))?;
    let res = match prog {
        aya::programs::Program::KProbe(p) => p.load(),
        aya::programs::Program::TracePoint(p) => p.load(),
        aya::programs::Program::Xdp(p) => p.load(),
        _ => return Err(LoaderError::MissingProgram(name)),
    };
    res.map_err(|source| LoaderError::Program { name, source })
}

fn try_method(ebpf: &mut Ebpf, m: &Method) -> Result<(), String> {
    match *m {
        Method::Kprobe { prog, functions } => {
            if !kprobes_available() {
                return Err("kprobes not available (no kprobe PMU)".into());
            }
            let p: &mut KProbe = ebpf
                .program_mut(prog)
                .ok_or("program missing")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            if p.fd().is_err() {
                p.load().map_err(|e| format!("load: {e}"))?;
            }
            for f in functions {
                p.attach(f, 0).map_err(|e| format!("attach {f}: {e}"))?;
            }
            Ok(())
        }
        Method::Tracepoint { prog, category, name } => {
            let p: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or("program missing")?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            if p.fd().is_err() {
                p.load().map_err(|e| format!("load: {e}"))?;
            }
            p.attach(category, name).map_err(|e| format!("attach: {e}"))?;
            Ok(())
        }
    }
}

/// Load and attach one tracepoint program (no fallback chain: used for helpers of the inbound
/// program, such as the listening-port filter).
pub fn attach_tracepoint(ebpf: &mut Ebpf, prog: &'static str, category: &'static str, name: &'static str) -> Result<(), String> {
    if !tracefs_mounted() {
        return Err("tracefs is not mounted".into());
    }
    try_method(ebpf, &Method::Tracepoint { prog, category, name })
}

/// Attach every outbound hook, walking each hook's fallback chain. Returns (hook, method) pairs.
pub fn attach_outbound(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, String)>, LoaderError> {
    if !tracefs_mounted() {
        return Err(LoaderError::NoTracefs);
    }
    let mut chosen = Vec::new();
    for spec in HOOKS {
        let mut detail = String::new();
        let mut ok = None;
        for m in spec.methods {
            match try_method(ebpf, m) {
                Ok(()) => {
                    ok = Some(m.describe());
                    break;
                }
                Err(e) => detail.push_str(&format!("{}: {e}; ", m.describe())),
            }
        }
        match ok {
            Some(d) => {
                if !detail.is_empty() {
                    log::info!("hook {}: fell back to {d} ({detail})", spec.hook);
                }
                chosen.push((spec.hook, d));
            }
            None => return Err(LoaderError::Hook { hook: spec.hook, detail }),
        }
    }
    Ok(chosen)
}

/// The interface holding the default IPv4 route (from /proc/net/route).
pub fn default_route_interface() -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}
