//! `fishctl completions bash|zsh|fish`: works without a config. The generated scripts
//! are checked in under `completions/` and a test keeps them current.
//!
//! clap's scripts are static: they know kinds and flags, not the objects on a server.
//! Each script gets a small wrapper ([`NAMES_BASH`], [`NAMES_ZSH`], [`NAMES_FISH`])
//! that asks `fishctl __complete` ([`super::complete`]) for the names that fit where
//! the cursor is, as kubectl does, and falls back to clap's completion elsewhere.

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
    let script = String::from_utf8_lossy(&buf).into_owned();
    let script = match shell {
        Shell::Bash => script + NAMES_BASH,
        // clap's `_fishctl` becomes `_fishctl_static`, and `_fishctl` (which the
        // script's end calls or registers, and `#compdef` autoloads) the wrapper.
        Shell::Zsh => script.replacen("\n_fishctl() {\n", "\n_fishctl_static() {\n", 1).replacen(
            ZSH_TAIL,
            &format!("{NAMES_ZSH}\n{ZSH_TAIL}"),
            1,
        ),
        _ => script + NAMES_FISH,
    };
    script.into_bytes()
}

/// Object names from the server for bash: `fishctl __complete` prints those that
/// fit after the words typed so far (nothing elsewhere); otherwise clap's completion.
pub const NAMES_BASH: &str = r#"
# Object names from the server where a name goes (fishctl __complete), else the above.
_fishctl_names() {
    local cur=${COMP_WORDS[COMP_CWORD]} names
    names=$("${COMP_WORDS[0]}" __complete -- "${COMP_WORDS[@]:1:COMP_CWORD-1}" 2>/dev/null)
    if [[ -n $names ]]; then
        COMPREPLY=($(compgen -W "$names" -- "$cur"))
        return 0
    fi
    _fishctl "$@"
}
complete -F _fishctl_names -o bashdefault -o default fishctl
"#;

/// How clap's zsh script ends ([`NAMES_ZSH`] goes before it).
const ZSH_TAIL: &str =
    "if [ \"$funcstack[1]\" = \"_fishctl\" ]; then\n    _fishctl \"$@\"\nelse\n    compdef _fishctl fishctl\nfi\n";

/// The zsh counterpart of [`NAMES_BASH`].
pub const NAMES_ZSH: &str = r#"
# Object names from the server where a name goes (fishctl __complete), else the above.
_fishctl() {
    local -a names
    names=(${(f)"$(${words[1]} __complete -- ${words[2,CURRENT-1]} 2>/dev/null)"})
    if (( ${#names} )); then
        compadd -a names
    else
        _fishctl_static "$@"
    fi
}"#;

/// The fish counterpart of [`NAMES_BASH`]: fish merges candidates, so an empty answer
/// adds nothing.
pub const NAMES_FISH: &str = r#"
# Object names from the server where a name goes (fishctl __complete).
complete -c fishctl -f -a '(fishctl __complete -- (commandline -opc)[2..-1] 2>/dev/null)'
"#;

/// Prints the script.
pub fn run(args: CompletionsArgs) -> Result<()> {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    o.write_all(&generate(args.shell))?;
    o.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_asks_the_server_for_names() {
        for shell in [ShellArg::Bash, ShellArg::Zsh, ShellArg::Fish] {
            let script = String::from_utf8(generate(shell)).expect("scripts are text");
            assert!(script.contains("__complete --"), "{shell:?} does not call fishctl __complete");
        }
        let zsh = String::from_utf8(generate(ShellArg::Zsh)).expect("text");
        assert!(zsh.contains("_fishctl_static() {"), "clap's zsh function was not renamed (its output changed?)");
        assert_eq!(zsh.matches("\n_fishctl() {").count(), 1, "one _fishctl: the wrapper");
    }
}
