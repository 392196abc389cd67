//! The command line (contract in DESIGN.md: run, check, config print; top,
//! record and replay arrive with the detector).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Emit, Format, Probe};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "eBPF sensor that attributes every outbound byte to its process and flags exfiltration")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and stream records to stdout (diagnostics go to stderr).
    Run(RunArgs),
    /// Report what this kernel supports and which backend `auto` picks, with reasons.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run like `run`, and also write every tick's detector input to FILE.
    Record {
        file: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the detector over a record file offline, deterministically, and print its alerts.
    Replay {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Containment in force on the running agent: list it, or lift one early.
    Respond {
        #[command(subcommand)]
        action: RespondAction,
        /// The agent's socket (default: agent.control_socket of the embedded config).
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
    },
    /// Live view of the top uploaders, read from the running agent's control socket.
    Top {
        /// The agent's socket (default: agent.control_socket of --config, else the embedded default).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Refresh interval, e.g. "1s".
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        interval: std::time::Duration,
        /// Print the plain table this many times, then exit.
        #[arg(long)]
        count: Option<u64>,
        /// Plain text even on a terminal (it is the default when stdout is not one).
        #[arg(long)]
        plain: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RespondAction {
    /// The containments in force (one JSON array).
    List,
    /// Lift containment ID now (at the agent's next tick) instead of at its TTL.
    Lift { id: u32 },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the embedded default configuration.
    Print,
    /// Validate a configuration file (and the catalog it names) and exit.
    Check { file: PathBuf },
    /// Print the built-in destination catalog (domain suffixes -> services).
    Catalog,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file (TOML), overlaid on the embedded defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum)]
    pub probe: Option<Probe>,
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Tick length, e.g. "5s" or "500ms" (overrides agent.tick).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub tick: Option<std::time::Duration>,
    /// State file for learned baselines (overrides state.path; "" keeps nothing).
    #[arg(long)]
    pub state: Option<String>,
    /// Where records go: "stdout" or "file:PATH" (rotated by size; overrides output.to).
    #[arg(long)]
    pub output: Option<String>,
    /// Serve Prometheus /metrics and /healthz on HOST:PORT (overrides metrics.addr).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// host.name on every record (overrides agent.host_name; in a pod, the node's name).
    #[arg(long)]
    pub host_name: Option<String>,
    /// The local socket `sluice top` reads (overrides agent.control_socket; "" = none).
    #[arg(long)]
    pub control_socket: Option<String>,
}
