//! `cargo xtask deb`: the agent as a Debian package, built with `dpkg-deb` alone.
//!
//! Contents: `/usr/bin/scanwatch`, `/lib/systemd/system/scanwatch.service`,
//! `/etc/scanwatch/scanwatch.toml` (a conffile: dpkg keeps local edits on upgrade),
//! `/usr/share/doc/scanwatch/{README.md,copyright}`. Maintainer scripts only talk to systemd when
//! it runs (`/run/systemd/system`): reload units after install/removal, stop the service before
//! removal; the service is not enabled or started by the package.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const POSTINST: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ \"$1\" = configure ]; then
    echo \"scanwatch installed: edit /etc/scanwatch/scanwatch.toml, then: systemctl enable --now scanwatch\"
fi
exit 0
";

const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
    systemctl stop scanwatch.service || true
    systemctl disable scanwatch.service || true
fi
exit 0
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/scanwatch /var/log/scanwatch
fi
exit 0
";

/// Debian architecture of this build.
fn deb_arch() -> Result<String> {
    let out = Command::new("dpkg").arg("--print-architecture").output().context("dpkg --print-architecture")?;
    if !out.status.success() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The newest glibc symbol version the binary needs (for `Depends: libc6 (>= …)`).
fn glibc_needed(bin: &[u8]) -> String {
    let mut best = (2u32, 17u32);
    let pat = b"GLIBC_2.";
    let mut i = 0;
    while let Some(p) = bin[i..].windows(pat.len()).position(|w| w == pat) {
        let start = i + p + pat.len();
        let digits: String = bin[start..].iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect();
        if let Ok(minor) = digits.parse::<u32>() {
            best = best.max((2, minor));
        }
        i = start;
    }
    format!("{}.{}", best.0, best.1)
}

fn put(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("mkdir {}", d.display()))?;
    }
    std::fs::write(&p, data).with_context(|| format!("write {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Build `out/scanwatch_<version>_<arch>.deb` from `bin` and the repository's packaging files.
pub fn build(root: &Path, bin: &Path, out: &Path) -> Result<PathBuf> {
    let binary = std::fs::read(bin).with_context(|| format!("reading {} (build it, or pass --binary)", bin.display()))?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = deb_arch()?;
    let name = format!("scanwatch_{version}_{arch}");
    let stage = out.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;
    put(&stage, "usr/bin/scanwatch", &binary, 0o755)?;
    let unit = std::fs::read(root.join("packaging/scanwatch.service")).context("packaging/scanwatch.service")?;
    put(&stage, "lib/systemd/system/scanwatch.service", &unit, 0o644)?;
    let conf = std::fs::read(root.join("packaging/scanwatch.toml")).context("packaging/scanwatch.toml")?;
    put(&stage, "etc/scanwatch/scanwatch.toml", &conf, 0o640)?;
    let readme = std::fs::read(root.join("README.md")).context("README.md")?;
    put(&stage, "usr/share/doc/scanwatch/README.md", &readme, 0o644)?;
    put(
        &stage,
        "usr/share/doc/scanwatch/copyright",
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: scanwatch\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    let size_kib = binary.len() / 1024 + unit.len() / 1024 + conf.len() / 1024 + readme.len() / 1024 + 4;
    let control = format!(
        "Package: scanwatch\nVersion: {version}\nArchitecture: {arch}\nMaintainer: scanwatch developers <scanwatch@localhost>\n\
         Installed-Size: {size_kib}\nDepends: libc6 (>= {glibc})\nSection: net\nPriority: optional\n\
         Description: eBPF/XDP network-scan detector with process attribution\n \
         Detects inbound scans in XDP and outbound scans tied to local processes; alerts to stdout,\n \
         files, syslog (alert/ECS/OCSF), Prometheus metrics, optional XDP blocking and evidence pcaps.\n",
        glibc = glibc_needed(&binary)
    );
    put(&stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(&stage, "DEBIAN/conffiles", b"/etc/scanwatch/scanwatch.toml\n", 0o644)?;
    put(&stage, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put(&stage, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put(&stage, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = out.join(format!("{name}.deb"));
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb)
        .status()
        .context("running dpkg-deb (package dpkg)")?;
    if !st.success() {
        bail!("dpkg-deb --build failed ({st})");
    }
    Ok(deb)
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_version_is_the_newest_referenced() {
        assert_eq!(super::glibc_needed(b"xxGLIBC_2.17\0GLIBC_2.34\0GLIBC_2.3.4\0"), "2.34");
        assert_eq!(super::glibc_needed(b"nothing"), "2.17");
    }
}
