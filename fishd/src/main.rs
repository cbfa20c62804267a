//! `fishd`: parse flags, install the crypto provider and logging, run the node.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// The Aquarium daemon: serves the API, reconciles applications, runs drivers.
#[derive(Parser, Debug)]
#[command(name = "fishd", version, about)]
struct Args {
    /// fish.yml; flags override it.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Where state, keys and fishctl.yaml live [default: ./fish-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API address [default: 127.0.0.1:8001].
    #[arg(long)]
    api: Option<SocketAddr>,
    /// Node name [default: the host name].
    #[arg(long)]
    node_name: Option<String>,
    /// On SIGTERM, deallocate every application of this node before exiting.
    #[arg(long)]
    drain_and_deallocate: bool,
    /// Join the cluster through this member (`HOST:PORT`) on the first start.
    #[arg(long, value_name = "HOST:PORT", requires = "join_token")]
    join: Option<String>,
    /// The join token an admin made with `fishctl create join-token`.
    #[arg(long, value_name = "TOKEN", requires = "join")]
    join_token: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

/// What fishd does instead of running a node.
#[derive(Subcommand, Debug)]
enum Sub {
    /// Make a new data directory from a backup (`fishctl backup`); refuses a non-empty one.
    /// Copy the TLS material (ca.crt, ca.key) and fishctl.yaml of the old node into it
    /// before its first start, so clients keep trusting it (see README, Backup and restore).
    Restore {
        /// The data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup file, or - for stdin.
        file: PathBuf,
    },
}

/// `fishd restore`: one line on stdout saying what was restored.
fn restore(data_dir: &std::path::Path, file: &std::path::Path) -> ExitCode {
    let result = if file.as_os_str() == "-" {
        fishd::store::backup::restore(data_dir, std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => fishd::store::backup::restore(data_dir, std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("fishd: cannot read {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    };
    match result {
        Ok(sum) => {
            println!(
                "restored revision {} into {}: {} labels, {} applications, {} users, {} nodes",
                sum.revision,
                data_dir.display(),
                sum.labels,
                sum.applications,
                sum.users,
                sum.nodes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fishd: restore failed: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}

/// jemalloc rather than glibc's malloc: in the 3-node burst glibc's allocator (malloc,
/// free, its consolidation passes) was ~12 % of fishd's CPU, spread over everything that
/// builds a request, a frame, an event or a record. jemalloc cut CPU per application by
/// 10 % on the cluster and 13 % on a single node (issue 12, session 16). It costs ~3 MB
/// of idle RSS, which the release profile's LTO (Cargo.toml) more than pays back.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Sub::Restore { data_dir, file }) = &args.command {
        return restore(data_dir, file);
    }
    // Exactly one rustls provider in the process: ring (see reference/crates.md).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `RUST_LOG` as `level` or `target=level,...` (tracing-subscriber's `Targets`: the
    // regex-based EnvFilter cost the first build ~5% of its CPU for span filters nobody
    // used); unset or unreadable means info.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org):
    // a log file must not fill with escape codes.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour);
    if args.log_json {
        tracing_subscriber::registry().with(layer.json()).with(filter).init();
    } else {
        tracing_subscriber::registry().with(layer).with(filter).init();
    }
    let overrides = fishd::runtime::Overrides {
        config: args.config,
        data_dir: args.data_dir,
        api: args.api,
        node_name: args.node_name,
        drain_and_deallocate: args.drain_and_deallocate,
        join: args.join,
        join_token: args.join_token,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fishd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fishd::runtime::run(overrides)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = e.hint();
            eprintln!("fishd: {:#}", anyhow::Error::from(e));
            if let Some(hint) = hint {
                eprintln!("fishd: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
