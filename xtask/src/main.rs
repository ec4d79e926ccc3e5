//! `cargo xtask`: the project's build, run, test and bench tasks (see docs/xtask.md).
//!
//! Plain std plus the workspace crates it drives (`vcpu-runtime` to validate scenarios and write
//! manifests, `hw-tests` for the QEMU command lines, `platform-sim` for timelines) and `flate2`
//! for compressed kernels: every task is a list of commands that xtask prints, runs from the
//! workspace root with the cargo that started it, and streams.
#![forbid(unsafe_code)]

mod cli;
mod demo;
mod exec;
mod linux;
mod live_bench;
mod manifest;
mod offload;
mod pathlen;
mod qemu;
mod setup;
mod tasks;

use std::fmt;
use std::process::ExitCode;

use cli::Command;
use exec::Ctx;

/// An xtask failure: a message for the user and the exit code to leave with.
#[derive(Debug)]
pub struct Error {
    msg: String,
    code: Option<i32>,
    usage: bool,
}

impl Error {
    /// A failure with this message.
    pub fn new(msg: impl Into<String>) -> Error {
        Error { msg: msg.into(), code: None, usage: false }
    }

    /// A wrong command line.
    pub fn usage(msg: impl Into<String>) -> Error {
        Error { usage: true, ..Error::new(msg) }
    }

    /// A failure already explained on the output; exits with `code` and prints nothing more.
    pub fn reported(code: i32) -> Error {
        Error { code: Some(code), ..Error::new("") }
    }

    /// Leaves with the exit code of a failed child, when it has one.
    pub fn with_code(mut self, code: Option<i32>) -> Error {
        self.code = code;
        self
    }

    fn exit_code(&self) -> ExitCode {
        let code = match (self.usage, self.code) {
            (true, _) => 2,
            (false, Some(c)) if (1..=255).contains(&c) => c,
            _ => 1,
        };
        ExitCode::from(code as u8)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

fn run(command: Command, ctx: &Ctx) -> Result<(), Error> {
    match command {
        Command::Help => {
            print!("{}", cli::help());
            Ok(())
        }
        Command::Test { quick } => tasks::test(ctx, quick),
        Command::Demo { scenario } => demo::demo(ctx, scenario.as_deref()),
        Command::Sim { scenario, args } => tasks::sim(ctx, &scenario, &args),
        Command::Bench { only } => tasks::bench(ctx, only),
        Command::Qemu(args) => qemu::qemu(ctx, &args),
        Command::Linux => linux::linux(ctx),
        Command::Offload => offload::offload(ctx),
    }
}

fn main() -> ExitCode {
    let result = cli::parse(std::env::args().skip(1)).and_then(|c| run(c, &Ctx::from_env()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.msg.is_empty() {
                eprintln!("xtask: error: {e}");
            }
            if e.usage {
                eprintln!("xtask: run `cargo xtask help` for the list of commands");
            }
            e.exit_code()
        }
    }
}
