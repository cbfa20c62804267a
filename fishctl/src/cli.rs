//! The command line, as clap derive types.
//!
//! Everything a user can type is declared here and nowhere else, so that `--help`,
//! the shell completions in `completions/` and the parser can never disagree.

use std::path::PathBuf;
use std::time::Duration;

use api_types::{Phase, Role};
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::kind::{Kind, KindOrAll};

/// fishctl — the Aquarium CLI: apply manifests, watch applications, manage nodes and users.
#[derive(Debug, Parser)]
#[command(name = "fishctl", version, max_term_width = 100)]
pub struct Cli {
    /// Config file [default: $FISHCTL_CONFIG, else ~/.config/fishctl/config.yaml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Context of the config file to use instead of its current_context
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update labels, applications and users from manifests
    Apply(ApplyArgs),
    /// List objects of a kind, or show one; --watch follows changes
    Get(GetArgs),
    /// Show one object in detail
    Describe(DescribeArgs),
    /// Ask fishd to release the resources of applications
    Deallocate(DeallocateArgs),
    /// Delete a label or a user, remove a node from the cluster, or deallocate an application
    Delete(DeleteArgs),
    /// Create a user (prints its token once) or a cluster join token
    Create(CreateArgs),
    /// Put a node into maintenance (no new applications) or take it out
    Maintenance(MaintenanceArgs),
    /// Print the output of an application's resource
    Logs(LogsArgs),
    /// Show the user the current context authenticates as
    Whoami,
    /// Print the fishctl version
    Version,
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Show or switch contexts of the config file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Show what apply would change, as a unified diff (exit 0: none, 1: changes, >1: error)
    Diff(DiffArgs),
    /// Save a consistent backup of the whole store (admin); restore with `fishd restore`
    Backup {
        /// Where to write it (- for stdout)
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Make a new API token for yourself (updates the config file), or for USER as admin
    Rotate {
        /// token
        what: RotateWhat,
        /// The user [default: yourself]
        user: Option<String>,
    },
    /// Show capacity used of total, allocated applications and queue per node
    Top {
        /// nodes
        what: TopWhat,
    },
}

/// What `rotate` renews.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RotateWhat {
    Token,
}

/// What `top` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopWhat {
    #[value(name = "nodes", aliases = ["node", "no"])]
    Nodes,
}

/// The manifests and applyset flags `apply` and `diff` share.
#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Manifest file, directory (*.yaml, *.yml, *.json) or - for stdin; may be repeated
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", required = true)]
    pub files: Vec<PathBuf>,
    /// Also read the subdirectories of a directory
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Record the labels and users applied as members of this applyset (admin)
    #[arg(long, value_name = "NAME")]
    pub applyset: Option<String>,
    /// Delete labels and users of the applyset that are no longer in the files
    #[arg(long, requires = "applyset")]
    pub prune: bool,
}

/// `diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,
}

/// `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub manifests: ManifestArgs,
    /// Check everything and print what would happen; nothing is written
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until every applied application is ALLOCATED
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Output formats of `get`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// labels, applications (app), nodes, users, gates, or all
    pub kind: KindOrAll,
    /// Show only this object
    pub name: Option<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Keep running and show changes as they happen
    #[arg(short, long)]
    pub watch: bool,
    /// Applications only: show those in this phase
    #[arg(long, value_name = "PHASE", value_parser = parse_phase)]
    pub phase: Option<Phase>,
    /// Applications only: show those of this label
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
}

/// Kinds `describe` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DescribeKind {
    #[value(name = "label", aliases = ["labels", "lbl"])]
    Label,
    #[value(name = "application", aliases = ["applications", "app", "apps"])]
    Application,
    #[value(name = "node", aliases = ["nodes", "no"])]
    Node,
    #[value(name = "gate", aliases = ["gates"])]
    Gate,
}

/// `describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// label, application (app), node or gate
    pub kind: DescribeKind,
    /// The object's name (or uid)
    pub name: String,
}

/// Only applications can be deallocated; the kind is still spelled out, kubectl-style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeallocateKind {
    #[value(name = "application", aliases = ["applications", "app", "apps"])]
    Application,
}

/// `deallocate`.
#[derive(Debug, Args)]
pub struct DeallocateArgs {
    /// application (app)
    pub kind: DeallocateKind,
    /// Names (or uids) of the applications
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Wait until every one is DEALLOCATED
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Kinds `delete` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeleteKind {
    #[value(name = "label", aliases = ["labels", "lbl"])]
    Label,
    #[value(name = "application", aliases = ["applications", "app", "apps"])]
    Application,
    #[value(name = "user", aliases = ["users"])]
    User,
    /// Remove a node from the cluster (refused while it holds applications)
    #[value(name = "node", aliases = ["nodes", "no"])]
    Node,
}

/// `delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// label, application (app), user or node
    pub kind: DeleteKind,
    /// The object's name
    pub name: String,
    /// Labels only: delete this version instead of every version
    #[arg(long, value_name = "N")]
    pub version: Option<u32>,
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub what: CreateCommand,
}

/// What `create` makes.
#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Create a user and print its API token (shown this once)
    User {
        /// The user's name
        name: String,
        /// Its role
        #[arg(long, value_enum, default_value_t = RoleArg::User)]
        role: RoleArg,
    },
    /// Create a one-time token for a new node to join the cluster (prints it alone)
    JoinToken {
        /// How long it may be used (e.g. 30m, 1h, 2d; at most 7d)
        #[arg(long, default_value = "1h")]
        ttl: api_types::HumanDuration,
    },
}

/// `--role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Admin,
    User,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::User => Role::User,
        }
    }
}

/// `maintenance`.
#[derive(Debug, Args)]
pub struct MaintenanceArgs {
    /// on or off
    pub state: OnOff,
    /// The node's name
    pub node: String,
}

/// `on` / `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// [application] NAME: the application's name (or uid); the kind may be left out
    #[arg(value_name = "NAME", num_args = 1..=2, required = true)]
    pub target: Vec<String>,
    /// Keep printing new output until the resource ends
    #[arg(short, long)]
    pub follow: bool,
}

/// `completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh or fish
    pub shell: ShellArg,
}

/// Shells we ship completions for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

/// `config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// List the contexts of the config file
    GetContexts,
    /// Make a context the current one
    UseContext {
        /// The context's name
        name: String,
    },
    /// Print the name of the current context
    CurrentContext,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write it like 30s, 10m or 2h)"))
}

fn parse_phase(s: &str) -> Result<Phase, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("fishctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kinds_take_aliases() {
        for (alias, kind) in [
            ("app", Kind::Application),
            ("apps", Kind::Application),
            ("application", Kind::Application),
            ("applications", Kind::Application),
            ("label", Kind::Label),
            ("labels", Kind::Label),
            ("lbl", Kind::Label),
            ("no", Kind::Node),
            ("node", Kind::Node),
            ("nodes", Kind::Node),
            ("user", Kind::User),
            ("users", Kind::User),
        ] {
            let Command::Get(g) = parse(&["get", alias]).command else { panic!("not get") };
            assert_eq!(g.kind, KindOrAll::Kind(kind), "{alias}");
        }
    }

    #[test]
    fn get_flags() {
        let Command::Get(g) =
            parse(&["get", "apps", "-o", "wide", "-w", "--phase", "allocated", "--label", "x"]).command
        else {
            panic!("not get")
        };
        assert_eq!(g.output, OutputFormat::Wide);
        assert!(g.watch);
        assert_eq!(g.phase, Some(Phase::Allocated));
        assert_eq!(g.label.as_deref(), Some("x"));
    }

    #[test]
    fn apply_flags() {
        let Command::Apply(a) = parse(&["apply", "-f", "m/", "-f", "-", "-R", "--wait", "--timeout", "90s"]).command
        else {
            panic!("not apply")
        };
        assert_eq!(a.manifests.files, [PathBuf::from("m/"), PathBuf::from("-")]);
        assert!(a.manifests.recursive && a.wait);
        assert_eq!(a.timeout, Duration::from_secs(90));
    }

    #[test]
    fn usage_errors_are_rejected() {
        assert!(Cli::try_parse_from(["fishctl", "get", "pods"]).is_err());
        assert!(Cli::try_parse_from(["fishctl", "apply"]).is_err());
        assert!(Cli::try_parse_from(["fishctl", "deallocate", "app"]).is_err());
        assert!(Cli::try_parse_from(["fishctl", "get", "apps", "--phase", "RUNNING"]).is_err());
    }
}
