//! Builds the eBPF object (scanwatch-ebpf) with Debian's rustc-web toolchain and embeds it.
//! See ../shared/TOOLCHAIN.md: rustc-web 1.96 + rust-web-src + bpf-linker (LLVM 22).
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../scanwatch-common/src");
    // `-Z build-std=core` on the stable rustc-web needs RUSTC_BOOTSTRAP=1; aya-build reads it
    // from this process's environment and the child cargo inherits it. The userspace build is
    // unaffected (it is already running).
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = format!("{manifest}/../scanwatch-ebpf");
    aya_build::build_ebpf(
        // `bench` adds the second binary, `scanwatch-bench` (the production object is unchanged).
        [Package { name: "scanwatch-ebpf", root_dir: &root, features: &["bench"], ..Default::default() }],
        Toolchain::Custom("rust-web"),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             (the toolchain is installed by `cargo xtask setup`: rustc-web, rust-web-src, \
             bpf-linker, `rustup toolchain link rust-web /usr`)"
        )
    })
}
