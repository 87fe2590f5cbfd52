fn main() {
    // Re-run when bpf-linker changes so a toolchain update relinks the object.
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
