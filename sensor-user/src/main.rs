use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use sluice::{
    agent::Agent,
    check,
    cli::{Cli, Command, ConfigAction, RunArgs},
    config::{Config, DEFAULT_TOML},
    kernel::{
        backend::{self, Backend, Verdict},
        loader, privileges,
    },
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { config } => Config::load(config.as_deref()).map_err(Into::into).map(|c| {
            let (text, chosen) = check::report(&c);
            print!("{text}");
            if chosen.is_none() {
                std::process::exit(1);
            }
        }),
        Command::Config { action: ConfigAction::Print } => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Config { action: ConfigAction::Check { file } } => {
            Config::load(Some(&file)).map(|_| println!("{}: ok", file.display())).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice: error: {e:#}");
            if let Some(hint) = loader::explain(&e) {
                eprintln!("sluice: hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(p) = args.probe {
        config.agent.probe = p;
    }
    if let Some(f) = args.format {
        config.agent.format = f;
    }
    if let Some(e) = args.emit {
        config.agent.emit = e;
    }
    if let Some(t) = args.tick {
        config.agent.tick = t;
    }
    // One clear sentence instead of the same reason repeated per backend.
    privileges::check().map_err(anyhow::Error::msg)?;
    let chosen = match Backend::from_probe(config.agent.probe) {
        Some(b) => b,
        None => {
            let verdicts: Vec<Verdict> = Backend::PREFERENCE
                .iter()
                .map(|&b| Verdict { backend: b, usable: loader::probe(&config, b) })
                .collect();
            backend::choose(&verdicts).map_err(|why| anyhow::anyhow!("no probe backend works on this kernel: {why}"))?
        }
    };
    let sensor = loader::attach(&config, chosen).with_context(|| format!("starting the {chosen} backend"))?;
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let agent = Agent::new(config, sensor, stdout)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(agent.run())?;
    Ok(())
}
