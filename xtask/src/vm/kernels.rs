//! Debian cloud kernels through apt, without touching the system's apt state.
//!
//! For a suite we write a private sources list (the mirror the system's own apt sources name),
//! `apt-get update` into a private lists dir, pick the newest cloud-amd64 image package with
//! `apt-cache`, `apt-get download` it, `dpkg-deb -x` it and keep only its vmlinuz (and config).
//! Layout under `target/vm-cache/<suite>/`:
//!
//! ```text
//! sources.list  status  lists/  archives/        private apt state
//! kernel/<package>/{vmlinuz,config,release}      the cached kernel
//! console-<backend>.log                          written by `super::runs`
//! ```

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, output, run};

pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const LIST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const STAMP: &str = ".cfstrace-updated";

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub suite: String,
    /// The Debian package it came from, e.g. `linux-image-6.1.0-50-cloud-amd64-unsigned`.
    pub package: String,
    /// `uname -r`, e.g. `6.1.0-50-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The package's `config-<release>`, when it ships one.
    pub config: Option<PathBuf>,
}

impl Kernel {
    /// `CONFIG_NAME` from the kernel's config file: Some("y"), Some("m"), Some("") if unset.
    pub fn config_value(&self, name: &str) -> Option<String> {
        let text = fs::read_to_string(self.config.as_ref()?).ok()?;
        let set = format!("{name}=");
        let unset = format!("# {name} is not set");
        for l in text.lines() {
            if let Some(v) = l.strip_prefix(&set) {
                return Some(v.trim_matches('"').to_string());
            }
            if l == unset {
                return Some(String::new());
            }
        }
        Some(String::new())
    }
}

/// The cache dir of one suite.
pub fn suite_dir(suite: &str) -> PathBuf {
    cmd::target_dir().join("vm-cache").join(suite)
}

/// Fetch (or reuse) the newest cloud kernel of `suite`.
pub fn fetch(suite: &str, keep: bool) -> Result<Kernel> {
    let dir = suite_dir(suite);
    let apt = PrivateApt::new(suite, &dir)?;
    if let Err(e) = apt.update_if_stale() {
        // Offline or mirror trouble: a kernel we already have is better than none.
        if let Some(k) = cached_kernels(suite, &dir).into_iter().next() {
            println!(
                "warning: {suite}: apt-get update failed ({e:#}); using cached {}",
                k.package
            );
            return Ok(k);
        }
        return Err(e);
    }
    let package = apt.newest_kernel_package()?;
    let kdir = dir.join("kernel").join(&package);
    if let Some(k) = load_cached(suite, &kdir) {
        return Ok(k);
    }
    println!("{suite}: downloading {package}");
    let k = apt.download_kernel(&package, &kdir, keep)?;
    // Keep only the newest kernel of a suite.
    if let Ok(rd) = fs::read_dir(dir.join("kernel")) {
        for e in rd.flatten() {
            if e.file_name() != package.as_str() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(k)
}

fn load_cached(suite: &str, kdir: &Path) -> Option<Kernel> {
    let vmlinuz = kdir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return None;
    }
    let release = fs::read_to_string(kdir.join("release"))
        .ok()?
        .trim()
        .to_string();
    let config = Some(kdir.join("config")).filter(|c| c.is_file());
    Some(Kernel {
        suite: suite.to_string(),
        package: kdir.file_name()?.to_string_lossy().into_owned(),
        release,
        vmlinuz,
        config,
    })
}

/// Cached kernels of a suite, newest first.
fn cached_kernels(suite: &str, dir: &Path) -> Vec<Kernel> {
    let mut ks: Vec<Kernel> = fs::read_dir(dir.join("kernel"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| load_cached(suite, &e.path()))
        .collect();
    ks.sort_by(|a, b| version_cmp(&b.release, &a.release));
    ks
}

/// apt pointed at a private sources list, lists dir, archives dir and (empty) dpkg status.
struct PrivateApt {
    suite: String,
    dir: PathBuf,
    opts: Vec<String>,
}

impl PrivateApt {
    fn new(suite: &str, dir: &Path) -> Result<Self> {
        if !Path::new(KEYRING).is_file() {
            bail!("{KEYRING} is missing: install debian-archive-keyring");
        }
        for d in ["lists/partial", "archives/partial", "kernel"] {
            fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let mirror = debian_mirror()?;
        let sources = format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n");
        write_if_changed(&dir.join("sources.list"), &sources)?;
        // An empty dpkg status, so packages installed on the host never look like candidates.
        write_if_changed(&dir.join("status"), "")?;
        let p = |rel: &str| dir.join(rel).display().to_string();
        let mut opts = vec![
            format!("Dir::Etc::sourcelist={}", p("sources.list")),
            "Dir::Etc::sourceparts=-".to_string(),
            format!("Dir::State::Lists={}", p("lists")),
            format!("Dir::State::status={}", p("status")),
            format!("Dir::Cache::archives={}", p("archives")),
            "Dir::Cache::pkgcache=".to_string(),
            "Dir::Cache::srcpkgcache=".to_string(),
            "APT::Get::List-Cleanup=0".to_string(),
            "Acquire::Languages=none".to_string(),
        ];
        if cmd::is_root() {
            // Our cache dir is not readable by the _apt sandbox user: download as root, quietly.
            opts.push("APT::Sandbox::User=root".to_string());
        }
        Ok(PrivateApt {
            suite: suite.to_string(),
            dir: dir.to_path_buf(),
            opts,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for o in &self.opts {
            c.arg("-o").arg(o);
        }
        c
    }

    /// `apt-get update` unless the lists were refreshed less than a day ago.
    fn update_if_stale(&self) -> Result<()> {
        let stamp = self.dir.join("lists").join(STAMP);
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LIST_MAX_AGE);
        let have_lists = fs::read_dir(self.dir.join("lists"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"));
        if fresh && have_lists {
            return Ok(());
        }
        let mut c = self.command("apt-get");
        c.args(["update", "-q"]);
        let out = c.output().context("running apt-get update")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // apt-get update exits 0 on some fetch errors; "E:", "Err:" and "Failed to fetch" tell.
        let failed_line =
            |l: &str| l.starts_with("E:") || l.starts_with("Err:") || l.contains("Failed to fetch");
        if !out.status.success() || text.lines().any(failed_line) {
            let hint = if text.contains("NO_PUBKEY") || text.contains("not signed") {
                format!(
                    " ({KEYRING} has no key for {}: update debian-archive-keyring)",
                    self.suite
                )
            } else {
                String::new()
            };
            bail!("`{}` failed{hint}:\n{}", cmd::display(&c), text.trim());
        }
        fs::write(&stamp, "").with_context(|| format!("writing {}", stamp.display()))?;
        Ok(())
    }

    /// The newest cloud-amd64 kernel image package of the suite.
    fn newest_kernel_package(&self) -> Result<String> {
        let mut c = self.command("apt-cache");
        c.args(["search", "--names-only", "^linux-(image|binary)-"]);
        let out = output(&mut c)?;
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .map(str::trim)
            .collect();
        pick_kernel_package(&names).with_context(|| {
            format!(
                "no linux-image-*-cloud-amd64 package in {} ({} linux packages listed)",
                self.suite,
                names.len()
            )
        })
    }

    fn download_kernel(&self, package: &str, kdir: &Path, keep: bool) -> Result<Kernel> {
        let archives = self.dir.join("archives");
        let mut c = self.command("apt-get");
        c.args(["download", "-q", package]).current_dir(&archives);
        run(&mut c)?;
        let deb = fs::read_dir(&archives)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let n = p.file_name().unwrap_or_default().to_string_lossy();
                n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {package}_*.deb in {}",
                    archives.display()
                )
            })?;

        let extract = self.dir.join("extract").join(package);
        let _ = fs::remove_dir_all(&extract);
        fs::create_dir_all(&extract)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extract))?;

        let mut found = Vec::new();
        walk(&extract, &mut |p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("vmlinuz") && p.is_file() {
                found.push(p.to_path_buf());
            }
        })?;
        found.sort();
        let Some(vmlinuz) = found.first().cloned() else {
            bail!(
                "{package}: no vmlinuz* in the package (looked under {})",
                extract.display()
            );
        };
        let release = release_of(&vmlinuz, &extract).with_context(|| {
            format!("cannot tell the kernel release from {}", vmlinuz.display())
        })?;
        let mut config = None;
        walk(&extract, &mut |p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if config.is_none()
                && (name == format!("config-{release}") || name == "config")
                && p.is_file()
            {
                config = Some(p.to_path_buf());
            }
        })?;

        fs::create_dir_all(kdir)?;
        fs::copy(&vmlinuz, kdir.join("vmlinuz"))?;
        if let Some(c) = &config {
            fs::copy(c, kdir.join("config"))?;
        }
        fs::write(kdir.join("release"), format!("{release}\n"))?;
        if keep {
            println!(
                "{}: kept {} and {}",
                self.suite,
                deb.display(),
                extract.display()
            );
        } else {
            let _ = fs::remove_dir_all(&extract);
            let _ = fs::remove_file(&deb);
        }
        load_cached(&self.suite, kdir).context("kernel cache incomplete after download")
    }
}

/// `boot/vmlinuz-<rel>` or `usr/lib/modules/<rel>/vmlinuz*`.
fn release_of(vmlinuz: &Path, root: &Path) -> Option<String> {
    let name = vmlinuz.file_name()?.to_string_lossy();
    if let Some(rel) = name.strip_prefix("vmlinuz-") {
        return Some(rel.to_string());
    }
    let parent = vmlinuz.parent()?;
    let grand = parent.parent()?;
    if grand.file_name()? == "modules" && parent.starts_with(root) {
        return Some(parent.file_name()?.to_string_lossy().into_owned());
    }
    None
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(&p, f)?;
        } else {
            f(&p);
        }
    }
    Ok(())
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        // A changed sources list makes the lists stale.
        if path.file_name().is_some_and(|n| n == "sources.list")
            && let Some(dir) = path.parent()
        {
            let _ = fs::remove_file(dir.join("lists").join(STAMP));
        }
    }
    Ok(())
}

/// Package name kinds, best first: unsigned image, sid's unsigned binary, signed binary, signed image.
fn classify(name: &str) -> Option<(usize, &str)> {
    const FLAVOUR: &str = "-cloud-amd64";
    let (prio, ver) = if let Some(v) = name
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix("-cloud-amd64-unsigned"))
    {
        (0, v)
    } else if let Some(v) = name
        .strip_prefix("linux-binary-unsigned-")
        .and_then(|r| r.strip_suffix(FLAVOUR))
    {
        (1, v)
    } else if let Some(v) = name
        .strip_prefix("linux-binary-")
        .and_then(|r| r.strip_suffix(FLAVOUR))
    {
        (2, v)
    } else if let Some(v) = name
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_suffix(FLAVOUR))
    {
        (3, v)
    } else {
        return None;
    };
    // Meta packages (linux-image-cloud-amd64) have no version.
    ver.starts_with(|c: char| c.is_ascii_digit())
        .then_some((prio, ver))
}

/// The newest version; among packages of that version the best kind.
pub fn pick_kernel_package(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| classify(n).map(|(prio, ver)| (prio, ver, *n)))
        .max_by(|a, b| version_cmp(a.1, b.1).then(b.0.cmp(&a.0)))
        .map(|(_, _, n)| n.to_string())
}

/// Natural order: digit runs compare as numbers, everything else bytewise.
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (trim_zeros(&a[..na]), trim_zeros(&b[..nb]));
                let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&c| c == b'0').count();
    &d[n.min(d.len().saturating_sub(1))..]
}

/// The Debian mirror the system's apt sources use (not -security).
/// `CFSTRACE_DEBIAN_MIRROR` overrides it.
pub fn debian_mirror() -> Result<String> {
    if let Some(m) = std::env::var("CFSTRACE_DEBIAN_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
    {
        return Ok(m);
    }
    let mut texts = Vec::new();
    let mut parts: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    parts.sort();
    for p in parts {
        let name = p.to_string_lossy().into_owned();
        if (name.ends_with(".sources") || name.ends_with(".list"))
            && let Ok(t) = fs::read_to_string(&p)
        {
            texts.push((name, t));
        }
    }
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(("/etc/apt/sources.list".into(), t));
    }
    for (name, text) in &texts {
        let found = if name.ends_with(".sources") {
            mirror_from_deb822(text)
        } else {
            mirror_from_one_line(text)
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    bail!(
        "no Debian mirror in /etc/apt/sources.list{{,.d/*.sources,.d/*.list}}: \
         set CFSTRACE_DEBIAN_MIRROR=http://deb.debian.org/debian"
    )
}

const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "stable",
    "testing",
    "unstable",
    "oldstable",
    "oldoldstable",
];

fn is_debian_suite(s: &str) -> bool {
    let base = s.split('-').next().unwrap_or(s);
    DEBIAN_SUITES.contains(&base) && !s.ends_with("-security")
}

fn usable(uri: &str, suites: &[&str]) -> bool {
    !uri.contains("security") && suites.iter().any(|s| is_debian_suite(s))
}

/// deb822 `.sources`: the first enabled `Types: deb` stanza with a Debian suite that is not -security.
pub fn mirror_from_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let mut types = "";
        let mut uris = "";
        let mut suites = "";
        let mut enabled = true;
        for l in stanza.lines() {
            if l.trim_start().starts_with('#') {
                continue;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "types" => types = v,
                "uris" => uris = v,
                "suites" => suites = v,
                "enabled" => enabled = v != "no",
                _ => {}
            }
        }
        let suites: Vec<&str> = suites.split_whitespace().collect();
        if enabled
            && types.split_whitespace().any(|t| t == "deb")
            && let Some(uri) = uris.split_whitespace().find(|u| usable(u, &suites))
        {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

/// One-line style: `deb [opts] URI suite components...`.
pub fn mirror_from_one_line(text: &str) -> Option<String> {
    for l in text.lines() {
        let l = l.trim();
        let Some(rest) = l.strip_prefix("deb ").or_else(|| l.strip_prefix("deb\t")) else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = if rest.starts_with('[') {
            rest.split_once(']')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("")
        } else {
            rest
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if usable(uri, &[suite]) {
            return Some(uri.trim_end_matches('/').to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_newest_unsigned_image() {
        let names = [
            "linux-image-6.1.0-47-cloud-amd64-unsigned",
            "linux-image-6.1.0-50-cloud-amd64-unsigned",
            "linux-image-6.1.0-50-cloud-amd64",
            "linux-image-6.1.0-50-cloud-amd64-dbg",
            "linux-image-cloud-amd64",
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
        ];
        assert_eq!(
            pick_kernel_package(&names).as_deref(),
            Some("linux-image-6.1.0-50-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn picks_sid_binary_package() {
        let names = [
            "linux-binary-unsigned-7.2.13+deb14-cloud-amd64",
            "linux-image-7.2.13+deb14-cloud-amd64-dbg",
            "linux-binary-7.2.13+deb14-cloud-amd64",
            "linux-image-7.2.13+deb14-cloud-amd64",
            "linux-image-cloud-amd64",
        ];
        assert_eq!(
            pick_kernel_package(&names).as_deref(),
            Some("linux-binary-unsigned-7.2.13+deb14-cloud-amd64")
        );
        let trixie = [
            "linux-image-6.12.107+deb13-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb13-cloud-amd64-unsigned",
        ];
        assert_eq!(
            pick_kernel_package(&trixie).as_deref(),
            Some("linux-image-6.12.117+deb13-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn natural_version_order() {
        assert_eq!(version_cmp("6.1.0-9", "6.1.0-10"), Ordering::Less);
        assert_eq!(
            version_cmp("6.12.117+deb13", "6.12.107+deb13"),
            Ordering::Greater
        );
        assert_eq!(version_cmp("5.10.0-32", "6.1.0-1"), Ordering::Less);
        assert_eq!(version_cmp("6.1.0-050", "6.1.0-50"), Ordering::Equal);
    }

    #[test]
    fn mirror_from_deb822_skips_security() {
        let text = "Types: deb\n# http://snapshot.debian.org/archive/debian-security/x\n\
                    URIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
                    Components: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian/\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let third_party =
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n";
        assert_eq!(mirror_from_deb822(third_party), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a/debian\nSuites: sid\n";
        assert_eq!(mirror_from_deb822(disabled), None);
    }

    #[test]
    fn mirror_from_sources_list() {
        let text = "# comment\ndeb http://security.debian.org/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/x.gpg] http://ftp.de.debian.org/debian/ bookworm main\n";
        assert_eq!(
            mirror_from_one_line(text).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
        assert_eq!(
            mirror_from_one_line(
                "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main"
            ),
            None
        );
    }
}
