use std::{process::ExitCode, sync::Arc};

use anyhow::{Context, Result};
use clap::Parser;
use sluice::{
    agent::Agent,
    check,
    cli::{Cli, Command, ConfigAction, RunArgs},
    config::{Config, Format, DEFAULT_TOML},
    detect::Detector,
    metrics, output, record,
    rotate::RotatingFile,
    spool::Spool,
    kernel::{
        backend::{self, Backend, Verdict},
        loader, privileges,
    },
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args, None),
        Command::Record { file, run: args } => run(args, Some(file)),
        Command::Replay { file, config, format } => replay(&file, config.as_deref(), format),
        Command::Top { socket, config, interval, count, plain } => top(socket, config, interval, count, plain),
        Command::Respond { action, socket } => respond(action, socket),
        Command::Check { config } => Config::load(config.as_deref()).map_err(Into::into).and_then(|c| {
            if !c.kernel.cgroup_root.is_empty() {
                sluice::kernel::mounts::set_cgroup_root(&c.kernel.cgroup_root)?;
            }
            let (text, chosen) = check::report(&c);
            print!("{text}");
            if chosen.is_none() {
                std::process::exit(1);
            }
            Ok(())
        }),
        Command::Config { action: ConfigAction::Print } => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Config { action: ConfigAction::Check { file } } => (|| -> Result<()> {
            let c = Config::load(Some(&file))?;
            let catalog = c.destinations.load_catalog()?;
            println!("{}: ok ({} services in the destination catalog)", file.display(), catalog.len());
            Ok(())
        })(),
        Command::Config { action: ConfigAction::Catalog } => {
            print!("{}", sluice::services::BUILTIN);
            Ok(())
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

fn replay(file: &std::path::Path, config: Option<&std::path::Path>, format: Option<Format>) -> Result<()> {
    let config = Config::load(config)?;
    let f = std::fs::File::open(file).with_context(|| format!("opening record file {}", file.display()))?;
    let (header, ticks) = record::read(std::io::BufReader::new(f)).with_context(|| format!("reading {}", file.display()))?;
    let ctx = output::Context { host_name: header.host, backend: "replay", agent_id: header.agent_id };
    let catalog = Arc::new(config.destinations.load_catalog()?);
    let mut detector = Detector::new(config.detect).with_catalog(catalog);
    let mut sink = output::Sink::new(std::io::BufWriter::new(std::io::stdout().lock()), format.unwrap_or(config.agent.format));
    let mut n = 0u64;
    for t in &ticks {
        for a in detector.tick(t) {
            let json = if sink.format == sluice::config::Format::Ocsf { sluice::ocsf::alert(&ctx, &a) } else { output::alert_json(&ctx, &a) };
            sink.record(&json, || output::alert_text(&a))?;
            n += 1;
        }
    }
    sink.flush()?;
    eprintln!("sluice: replayed {} ticks from {}: {n} alerts", ticks.len(), file.display());
    Ok(())
}

fn respond(action: sluice::cli::RespondAction, socket: Option<std::path::PathBuf>) -> Result<()> {
    let socket = socket.unwrap_or_else(|| Config::load(None).map(|c| c.agent.control_socket.into()).unwrap_or_default());
    let request = match action {
        sluice::cli::RespondAction::List => "containments".to_string(),
        sluice::cli::RespondAction::Lift { id } => format!("lift {id}"),
    };
    let reply = sluice::control::request(&socket, &request)?;
    let v: serde_json::Value = serde_json::from_str(reply.trim()).with_context(|| format!("the agent's answer: {:.200}", reply.trim()))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("the agent says: {e}");
    }
    println!("{v}");
    Ok(())
}

fn top(socket: Option<std::path::PathBuf>, config: Option<std::path::PathBuf>, interval: std::time::Duration, count: Option<u64>, plain: bool) -> Result<()> {
    let socket = match socket {
        Some(s) => s,
        None => Config::load(config.as_deref())?.agent.control_socket.into(),
    };
    sluice::top::run(sluice::top::Options { socket: &socket, interval, count, plain })
}

fn run(args: RunArgs, record_to: Option<std::path::PathBuf>) -> Result<()> {
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
    if let Some(s) = args.state {
        config.state.path = s;
    }
    if let Some(o) = args.output {
        config.output.to = o;
    }
    if let Some(a) = args.metrics_addr {
        config.metrics.addr = a;
    }
    if let Some(h) = args.host_name {
        config.agent.host_name = h;
    }
    if let Some(c) = args.control_socket {
        config.agent.control_socket = c;
    }
    config
        .validate()
        .map_err(|message| sluice::config::ConfigError::Invalid { origin: Some("the command line".into()), message })?;
    let catalog = Arc::new(config.destinations.load_catalog()?);
    if !config.kernel.cgroup_root.is_empty() {
        sluice::kernel::mounts::set_cgroup_root(&config.kernel.cgroup_root)?;
    }
    // One agent per state file (see state::lock); held until we exit.
    let _lock = match config.state.path.as_str() {
        "" => None,
        p => {
            let lock = sluice::state::lock(std::path::Path::new(p)).map_err(anyhow::Error::msg)?;
            if lock.is_none() {
                // Said now, not at the first save minutes later.
                eprintln!("sluice: warning: cannot write next to the state file {p}: learned baselines will be kept in memory only and lost on restart");
            }
            lock
        }
    };
    // Output and listener first: a file we cannot write or a port in use is
    // reported before anything is loaded into the kernel.
    let out: Box<dyn std::io::Write + Send> = match config.output.file().map_err(anyhow::Error::msg)? {
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
        Some(path) => Box::new(RotatingFile::open(std::path::Path::new(path), config.output.rotate_size, config.output.rotate_keep)?),
    };
    let out = Spool::start(out, config.output.queue).context("starting the output thread")?;
    let metrics_listener = match config.metrics.addr.as_str() {
        "" => None,
        a => Some(metrics::bind(a)?),
    };
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
    let sensor = loader::attach(&config, chosen).with_context(|| format!("starting the {chosen} backend (`sluice check` shows what this kernel allows)"))?;
    // /healthz fails when ticks stop completing for this long.
    let stale = config.agent.tick * 3 + std::time::Duration::from_secs(10);
    let agent = Agent::new(config, catalog, sensor, out, record_to.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let signals = sluice::agent::Signals::install()?;
        if let Some(l) = metrics_listener {
            let local = metrics::serve(l, agent.metrics.clone(), stale)?;
            eprintln!("sluice: metrics on http://{local}/metrics, health on http://{local}/healthz");
        }
        agent.run(signals).await
    })?;
    Ok(())
}
