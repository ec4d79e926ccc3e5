//! A private apt for arm64 Debian packages: its own configuration, sources, package lists and
//! cache under `target/linux/apt/`, chosen with `APT_CONFIG`, so that `apt-get update` and
//! `apt-get download` never read or change the machine's own apt configuration and state, and
//! need no root.
//!
//! apt reads the file named by `APT_CONFIG` before anything else, and that file moves every
//! other configuration file (`Dir::Etc::*`) into the private directory: the machine's
//! `/etc/apt/apt.conf.d` and sources are never read.

use std::path::{Path, PathBuf};

use crate::exec::{Cmd, Ctx};
use crate::Error;

/// The archives and suites packages come from: the ones a Debian bookworm machine uses.
/// Kernel packages of the newest point release and security fixes are in `bookworm-security`.
pub const SOURCES: &[(&str, &str)] = &[
    ("http://deb.debian.org/debian", "bookworm"),
    ("http://deb.debian.org/debian", "bookworm-updates"),
    ("http://deb.debian.org/debian-security", "bookworm-security"),
];

/// The keys the archives are signed with (package `debian-archive-keyring`).
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The architecture of the packages.
pub const ARCH: &str = "arm64";

/// A package version apt would download: the candidate of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub package: String,
    pub version: String,
    /// The `Depends:` field, as written.
    pub depends: String,
}

impl Candidate {
    /// The file `apt-get download` writes: `NAME_VERSION_ARCH.deb`, with the epoch's `:`
    /// written `%3a`.
    pub fn deb_file_name(&self) -> String {
        format!("{}_{}_{ARCH}.deb", self.package, self.version.replace(':', "%3a"))
    }
}

/// The private apt under `dir` (an absolute path).
#[derive(Debug)]
pub struct PrivateApt {
    dir: PathBuf,
    updated: bool,
}

impl PrivateApt {
    /// Writes the configuration and makes the directories apt expects; fetches nothing.
    pub fn create(dir: &Path) -> Result<PrivateApt, Error> {
        let io = |what: &Path, e: std::io::Error| Error::new(format!("cannot write {}: {e}", what.display()));
        for sub in ["etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "etc/trusted.gpg.d"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
        for sub in ["state/lists/partial", "cache/archives/partial", "log"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        }
        let status = dir.join("state/status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(|e| io(&status, e))?;
        }
        let sources = dir.join("etc/sources.list");
        std::fs::write(&sources, sources_list()).map_err(|e| io(&sources, e))?;
        let config = dir.join("apt.conf");
        std::fs::write(&config, apt_config(dir)).map_err(|e| io(&config, e))?;
        Ok(PrivateApt { dir: dir.to_path_buf(), updated: false })
    }

    /// `apt-get update`, once per xtask run.
    pub fn update(&mut self, ctx: &Ctx) -> Result<(), Error> {
        if !self.updated {
            println!("xtask: linux: fetching the arm64 package lists (private apt state in {})", self.dir.display());
            self.cmd("apt-get", ["update"]).run(ctx)?;
            self.updated = true;
        }
        Ok(())
    }

    /// The version of `package` apt would download, with its dependencies.
    pub fn candidate(&mut self, ctx: &Ctx, package: &str) -> Result<Candidate, Error> {
        self.update(ctx)?;
        let record = self
            .cmd("apt-cache", ["show", "--no-all-versions", package])
            .output(ctx)?
            .ok_or_else(|| Error::new("apt-cache is not on PATH"))?;
        parse_record(&record).ok_or_else(|| Error::new(format!("apt-cache show {package}: no package record")))
    }

    /// Downloads `candidate` (that exact version) into `dir`, unless the file is already there;
    /// returns the file.
    pub fn download(&mut self, ctx: &Ctx, candidate: &Candidate, dir: &Path) -> Result<PathBuf, Error> {
        let file = dir.join(candidate.deb_file_name());
        if file.is_file() {
            println!("xtask: linux: {} is already downloaded", file.display());
            return Ok(file);
        }
        self.update(ctx)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
        let pinned = format!("{}={}", candidate.package, candidate.version);
        self.cmd("apt-get", ["download", pinned.as_str()]).in_dir(dir).run(ctx)?;
        if !file.is_file() {
            return Err(Error::new(format!("apt-get download ended, but {} is not there", file.display())));
        }
        Ok(file)
    }

    /// `program args` with this apt's configuration.
    pub fn cmd<const N: usize>(&self, program: &str, args: [&str; N]) -> Cmd {
        Cmd::new(program, args).env("APT_CONFIG", &self.dir.join("apt.conf").to_string_lossy())
    }
}

/// The sources: [`SOURCES`], arm64 only, checked against [`KEYRING`].
pub fn sources_list() -> String {
    let mut s = String::from("# Written by cargo xtask linux (xtask/src/linux/apt.rs).\n");
    for (uri, suite) in SOURCES {
        s.push_str(&format!("deb [arch={ARCH} signed-by={KEYRING}] {uri} {suite} main\n"));
    }
    s
}

/// The apt configuration `APT_CONFIG` names: every directory apt reads or writes is under
/// `dir`, the architecture is arm64 only, and no translations are fetched.
pub fn apt_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "// Written by cargo xtask linux (xtask/src/linux/apt.rs): a private apt for arm64 packages.
Dir::Etc \"{d}/etc\";
Dir::Etc::main \"{d}/apt.conf\";
Dir::Etc::Parts \"{d}/etc/apt.conf.d\";
Dir::Etc::SourceList \"{d}/etc/sources.list\";
Dir::Etc::SourceParts \"{d}/etc/sources.list.d\";
Dir::Etc::Preferences \"{d}/etc/preferences\";
Dir::Etc::PreferencesParts \"{d}/etc/preferences.d\";
Dir::Etc::Trusted \"{d}/etc/trusted.gpg\";
Dir::Etc::TrustedParts \"{d}/etc/trusted.gpg.d\";
Dir::State \"{d}/state\";
Dir::State::status \"{d}/state/status\";
Dir::Cache \"{d}/cache\";
Dir::Log \"{d}/log\";
APT::Architecture \"{ARCH}\";
APT::Architectures {{ \"{ARCH}\"; }};
Acquire::Languages \"none\";
// No lock files: the state is ours alone, and a normal user may not lock /var/lib/apt.
Debug::NoLocking \"true\";
// As root, apt would hand downloads to the `_apt` user, who cannot write to this directory.
APT::Sandbox::User \"root\";
"
    )
}

/// The package, version and dependencies of one `apt-cache show` record.
pub fn parse_record(record: &str) -> Option<Candidate> {
    let field = |name: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    Some(Candidate {
        package: field("Package")?,
        version: field("Version")?,
        depends: field("Depends").unwrap_or_default(),
    })
}

/// The first dependency whose name starts with `prefix` (a meta-package's concrete package:
/// `linux-image-cloud-arm64` depends on `linux-image-6.1.0-NN-cloud-arm64 (= VERSION)`).
pub fn dependency_with_prefix(depends: &str, prefix: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with(prefix))
        .map(|name| name.split(':').next().unwrap_or(name).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_stays_in_its_directory() {
        let config = apt_config(Path::new("/w/target/linux/apt"));
        for line in config.lines().filter(|l| l.starts_with("Dir::")) {
            assert!(line.contains("\"/w/target/linux/apt/"), "{line}");
        }
        for key in ["Dir::Etc::SourceList", "Dir::Etc::SourceParts", "Dir::State ", "Dir::Cache ", "Dir::Etc::Parts"] {
            assert!(config.contains(key), "{key}");
        }
        assert!(config.contains("APT::Architecture \"arm64\";"));
        assert!(config.contains("APT::Architectures { \"arm64\"; };"));
        let sources = sources_list();
        assert!(sources.contains(
            "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian-security bookworm-security main"
        ));
        assert_eq!(sources.lines().filter(|l| l.starts_with("deb ")).count(), SOURCES.len());
    }

    #[test]
    fn records_and_dependencies() {
        let record = "Package: linux-image-cloud-arm64\nSource: linux-signed-arm64 (6.1.192+2)\n\
                      Version: 6.1.192-2\nArchitecture: arm64\n\
                      Depends: linux-image-6.1.0-56-cloud-arm64 (= 6.1.192-2)\nDescription: x\n\n";
        let c = parse_record(record).unwrap();
        assert_eq!((c.package.as_str(), c.version.as_str()), ("linux-image-cloud-arm64", "6.1.192-2"));
        assert_eq!(
            dependency_with_prefix(&c.depends, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-56-cloud-arm64")
        );
        assert_eq!(
            dependency_with_prefix("libc6 (>= 2), linux-image-x:arm64 | y", "linux-image-").unwrap(),
            "linux-image-x"
        );
        assert_eq!(dependency_with_prefix("libc6", "linux-image-"), None);
        assert_eq!(parse_record("Description: nothing\n"), None);
        let bb =
            Candidate { package: "busybox-static".into(), version: "1:1.35.0-4+deb12u1+b1".into(), depends: "".into() };
        assert_eq!(bb.deb_file_name(), "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb");
    }
}
