//! The service and the package (root): the .deb built by `cargo xtask deb` is inspected with
//! `dpkg-deb -c`, installed on this system, its unit checked with `systemd-analyze verify`, then
//! purged; the agent starts with exactly the unit's capability set and fails without each of
//! CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use scanwatch_tests::{assert_ok, lab_lock, scanwatch_bin, Lab};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// The unit's `CapabilityBoundingSet=` as setpriv capability names (`bpf`, `net_admin`, ...).
fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(root().join("packaging/scanwatch.service")).expect("unit");
    let line = unit.lines().find(|l| l.starts_with("CapabilityBoundingSet=")).expect("CapabilityBoundingSet in the unit");
    line["CapabilityBoundingSet=".len()..]
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect()
}

#[test]
fn deb_installs_the_binary_unit_and_config_then_purges() {
    assert!(Path::new("/usr/bin/dpkg-deb").exists(), "dpkg-deb missing");
    let installed_before = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "scanwatch"]));
    assert!(
        !String::from_utf8_lossy(&installed_before.stdout).contains("install ok installed"),
        "a scanwatch package is already installed on this machine; this test installs and purges its own"
    );
    let out = std::env::temp_dir().join(format!("scanwatch-deb-{}", std::process::id()));
    let xtask = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["run", "-q", "-p", "xtask", "--", "deb", "--binary"])
        .arg(scanwatch_bin())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("cargo xtask deb");
    assert_ok(&xtask, "cargo xtask deb");
    let deb = PathBuf::from(String::from_utf8_lossy(&xtask.stdout).trim().lines().last().expect("deb path"));
    assert!(deb.exists(), "{}", deb.display());

    let c = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert_ok(&c, "dpkg-deb -c");
    let listing = String::from_utf8_lossy(&c.stdout);
    for (path, mode) in [
        ("./usr/bin/scanwatch", "-rwxr-xr-x root/root"),
        ("./lib/systemd/system/scanwatch.service", "-rw-r--r-- root/root"),
        ("./etc/scanwatch/scanwatch.toml", "-rw-r----- root/root"),
        ("./usr/share/doc/scanwatch/README.md", "-rw-r--r-- root/root"),
    ] {
        assert!(listing.lines().any(|l| l.starts_with(mode) && l.ends_with(path)), "{path} ({mode}) in:\n{listing}");
    }
    let info = run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).args(["Package", "Depends", "Architecture"]));
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: scanwatch") && info.contains("Depends: libc6 (>= 2."), "{info}");
    let conffiles = run(Command::new("dpkg-deb").args(["-I"]).arg(&deb).arg("conffiles"));
    assert_eq!(String::from_utf8_lossy(&conffiles.stdout).trim(), "/etc/scanwatch/scanwatch.toml");

    // Install on this system; purge whatever happens next.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "scanwatch"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
    let i = run(Command::new("dpkg").arg("-i").arg(&deb));
    let _purge = Purge;
    assert_ok(&i, "dpkg -i");
    let v = run(Command::new("/usr/bin/scanwatch").arg("--version"));
    assert_ok(&v, "installed scanwatch --version");
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("scanwatch "));
    let chk = run(Command::new("/usr/bin/scanwatch").args(["config", "check", "/etc/scanwatch/scanwatch.toml"]));
    assert_ok(&chk, "the packaged configuration validates");
    let verify = run(Command::new("systemd-analyze").args(["verify", "/lib/systemd/system/scanwatch.service"]));
    assert_ok(&verify, "systemd-analyze verify");
    let warnings = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(
        !warnings.lines().any(|l| l.contains("scanwatch.service")),
        "systemd-analyze has remarks on the unit:\n{warnings}"
    );
    let p = run(Command::new("dpkg").args(["--purge", "scanwatch"]));
    assert_ok(&p, "dpkg --purge");
    for f in ["/usr/bin/scanwatch", "/lib/systemd/system/scanwatch.service", "/etc/scanwatch/scanwatch.toml"] {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Start the agent on the lab veth under a capability bounding set; returns (started, stderr).
fn start_with_caps(lab: &Lab, caps: &[String]) -> (bool, String) {
    let set = format!("-all,{}", caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(","));
    let o = run(Command::new("setpriv")
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(scanwatch_bin())
        .args(["run", "--interface", &lab.root_veth, "--duration", "1"])
        .current_dir("/"));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    (o.status.success() && err.contains("scanwatch: ready"), err)
}

#[test]
fn the_agent_runs_with_exactly_the_units_capabilities() {
    let _g = lab_lock();
    let lab = Lab::new();
    let caps = unit_caps();
    assert_eq!(caps, ["bpf", "net_admin", "perfmon", "sys_ptrace", "net_raw"]);
    let (ok, err) = start_with_caps(&lab, &caps);
    assert!(ok, "with the unit's capabilities the agent starts:\n{err}");
    for missing in ["bpf", "net_admin", "perfmon"] {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let (ok, err) = start_with_caps(&lab, &fewer);
        assert!(!ok, "without CAP_{} the agent must not start:\n{err}", missing.to_uppercase());
    }
}
