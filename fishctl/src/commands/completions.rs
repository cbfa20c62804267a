//! `fishctl completions bash|zsh|fish`: works without a config. The generated scripts
//! are checked in under `completions/` and a test keeps them current.

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionsArgs, ShellArg};

/// The completion script for `shell`.
pub fn generate(shell: ShellArg) -> Vec<u8> {
    let shell = match shell {
        ShellArg::Bash => Shell::Bash,
        ShellArg::Zsh => Shell::Zsh,
        ShellArg::Fish => Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fishctl", &mut buf);
    buf
}

/// Prints the script.
pub fn run(args: CompletionsArgs) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(&generate(args.shell))?;
    o.flush()?;
    Ok(())
}
