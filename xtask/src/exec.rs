//! Running programs: every command is printed before it runs, streams its output, and can be
//! shown as a shell line the user can paste to rerun it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::Error;

/// Where xtask runs: the workspace root and the cargo that started it.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The workspace root; every command runs here unless it names a subdirectory.
    pub root: PathBuf,
    /// `$CARGO` as cargo set it for xtask (falls back to `cargo` on PATH).
    pub cargo: OsString,
}

impl Ctx {
    /// The context of this process: the root is `CARGO_MANIFEST_DIR`'s parent.
    pub fn from_env() -> Ctx {
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest_dir.parent().map(Path::to_path_buf).unwrap_or(manifest_dir);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ctx { root, cargo }
    }

    /// The target directory cargo uses for the workspace (honours `CARGO_TARGET_DIR`).
    pub fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) => self.root.join(d),
            None => self.root.join("target"),
        }
    }
}

/// A program invocation, as data: built by the plans, shown to the user, then run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// `cargo` means the `$CARGO` of the [`Ctx`]; anything else is looked up on PATH.
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment, shown as `NAME=value` before the program.
    pub env: Vec<(String, String)>,
    /// Working directory relative to the workspace root (`None`: the root).
    pub dir: Option<PathBuf>,
}

impl Cmd {
    /// A command with its arguments, run from the workspace root.
    pub fn new<I, S>(program: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd { program: program.into(), args: args.into_iter().map(Into::into).collect(), env: Vec::new(), dir: None }
    }

    /// `cargo` with these arguments.
    pub fn cargo<I, S>(args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd::new("cargo", args)
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs in `dir` (relative to the workspace root) instead of the root.
    pub fn in_dir(mut self, dir: impl Into<PathBuf>) -> Cmd {
        self.dir = Some(dir.into());
        self
    }

    /// The command as a shell line (without the directory), e.g.
    /// `RUSTFLAGS='--cfg loom' cargo test -p loom-tests`.
    pub fn display(&self) -> String {
        let mut parts: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={}", shell_quote(v))).collect();
        parts.push(shell_quote(&self.program));
        parts.extend(self.args.iter().map(|a| shell_quote(a)));
        parts.join(" ")
    }

    /// The shell line to paste at the workspace root to run this again.
    pub fn rerun_line(&self) -> String {
        match &self.dir {
            Some(d) => format!("cd {} && {}", shell_quote(&d.to_string_lossy()), self.display()),
            None => self.display(),
        }
    }

    /// Prints `xtask: running ...` and runs the command, streaming its output.
    pub fn run(&self, ctx: &Ctx) -> Result<(), Error> {
        match &self.dir {
            Some(d) => println!("xtask: running (in {}) {}", d.display(), self.display()),
            None => println!("xtask: running {}", self.display()),
        }
        let status =
            self.command(ctx).status().map_err(|e| Error::new(format!("could not start `{}`: {e}", self.program)))?;
        check(status, &self.display())
    }

    /// Runs quietly and returns stdout; `Ok(None)` when the program is not installed.
    pub fn output(&self, ctx: &Ctx) -> Result<Option<String>, Error> {
        let out = match self.command(ctx).stdin(Stdio::null()).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::new(format!("could not start `{}`: {e}", self.program))),
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(Error::new(format!(
                "`{}` failed ({}): {}",
                self.display(),
                describe(out.status),
                stderr.trim()
            )));
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    fn command(&self, ctx: &Ctx) -> Command {
        let program: OsString = if self.program == "cargo" { ctx.cargo.clone() } else { self.program.clone().into() };
        let mut c = Command::new(program);
        c.args(&self.args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.current_dir(match &self.dir {
            Some(d) => ctx.root.join(d),
            None => ctx.root.clone(),
        });
        c
    }
}

/// Whether `program` can be started (it is on PATH).
pub fn on_path(program: &str) -> bool {
    match Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

fn check(status: ExitStatus, what: &str) -> Result<(), Error> {
    if status.success() {
        return Ok(());
    }
    Err(Error::new(format!("`{what}` failed ({})", describe(status))).with_code(status.code()))
}

/// "exit status 101" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    status.to_string()
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--workspace"), "--workspace");
        assert_eq!(shell_quote("--cfg loom"), "'--cfg loom'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn display_shows_env_and_directory() {
        let c =
            Cmd::cargo(["test", "-p", "loom-tests"]).env("RUSTFLAGS", "--cfg loom").env("LOOM_MAX_PREEMPTIONS", "2");
        assert_eq!(c.display(), "RUSTFLAGS='--cfg loom' LOOM_MAX_PREEMPTIONS=2 cargo test -p loom-tests");
        let c = Cmd::cargo(["build"]).in_dir("guests");
        assert_eq!(c.rerun_line(), "cd guests && cargo build");
    }
}
