//! Configuration: an embedded default TOML overlaid by the user's file, checked
//! strictly (unknown keys, wrong types and out-of-range values are errors that
//! name the key) before anything is loaded into the kernel.

use std::{path::Path, time::Duration};

use serde::Deserialize;
use thiserror::Error;

/// The defaults, compiled in so `sluice run` needs no file on disk.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config{}: {message}", origin.as_deref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Invalid { origin: Option<String>, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Auto,
    Fentry,
    Kprobe,
    Cgroup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ECS JSON lines.
    Json,
    Text,
    /// OCSF JSON lines (Network Activity, Detection Finding).
    Ocsf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Emit {
    Alerts,
    Flows,
    All,
}

impl Emit {
    pub fn flows(self) -> bool {
        matches!(self, Emit::Flows | Emit::All)
    }

    pub fn alerts(self) -> bool {
        matches!(self, Emit::Alerts | Emit::All)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: Agent,
    pub kernel: Kernel,
    pub flows: Flows,
    pub detect: Detect,
    pub state: StateConfig,
    pub destinations: Destinations,
    pub containers: Containers,
    pub output: Output,
    pub metrics: Metrics,
    pub respond: Respond,
}

/// What a rule's alert does beyond the record (`respond`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RespondMode {
    Off,
    /// The containment record, nothing dropped.
    DryRun,
    /// The process's sockets' packets dropped and its new sockets refused, for `ttl`.
    Enforce,
}

/// Containment, opt-in per rule (`respond`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// Rule id -> mode; a rule not named is off.
    pub rules: std::collections::BTreeMap<String, RespondMode>,
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// Executables (a path, or a file name) never contained, besides the built-in guard.
    pub guard: Vec<String>,
    /// End a contained process's TCP connections (sock_diag SOCK_DESTROY), not
    /// only drop their packets.
    pub abort: bool,
    /// Refuse contained processes' connects and sends with BPF LSM programs,
    /// where the kernel runs the BPF LSM.
    pub lsm: bool,
    /// A clean stop hands the containments in force to the next agent, which
    /// puts them back for what is left of their TTL (else all are lifted).
    pub keep: bool,
}

impl Respond {
    pub fn mode(&self, rule: &str) -> RespondMode {
        self.rules.get(rule).copied().unwrap_or(RespondMode::Off)
    }

    /// Whether any rule enforces: only then are the kernel's checks loaded.
    pub fn enforcing(&self) -> bool {
        self.rules.values().any(|m| *m == RespondMode::Enforce)
    }
}

/// Container and Kubernetes attribution (see `container`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Containers {
    pub enabled: bool,
    /// The kubelet's `/var/log/pods` ("" = not read).
    pub pod_logs: String,
    /// The kubelet's `/var/log/containers` ("" = not read).
    pub container_logs: String,
    /// A kubelet pod list URL over plain HTTP ("" = not asked).
    pub kubelet_url: String,
    /// Where each runtime keeps the files that name its containers ("" = not read).
    pub containerd_state: String,
    pub crio_state: String,
    pub podman_storage: String,
    pub docker_root: String,
}

impl Containers {
    pub fn runtime_roots(&self) -> crate::container::runtime_files::Roots {
        crate::container::runtime_files::Roots {
            containerd: self.containerd_state.clone(),
            crio: self.crio_state.clone(),
            podman: self.podman_storage.clone(),
            docker: self.docker_root.clone(),
        }
    }
}

/// Where records go: stdout, or a file rotated by size.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// "stdout" or "file:/path/to/alerts.json".
    pub to: String,
    #[serde(with = "byte_size")]
    pub rotate_size: u64,
    /// Rotated files kept (`<path>.1` is the newest).
    pub rotate_keep: u32,
    /// Records waiting for a slow consumer at most; beyond, they are counted and dropped.
    pub queue: usize,
}

impl Output {
    /// The file path of `file:PATH`, `None` for stdout.
    pub fn file(&self) -> Result<Option<&str>, String> {
        match self.to.as_str() {
            "stdout" | "-" => Ok(None),
            t => match t.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Some(p)),
                _ => Err(format!("output.to = {t:?}: expected \"stdout\" or \"file:PATH\"")),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// host:port for Prometheus `/metrics` and `/healthz` ("" = off).
    pub addr: String,
    /// Export `sluice_alerts_total` by rule; unset: only on a loopback address.
    #[serde(default)]
    pub alerts_by_rule: Option<bool>,
}

impl Destinations {
    /// The built-in catalog plus the configured file, if any.
    pub fn load_catalog(&self) -> Result<crate::services::Catalog, crate::services::CatalogError> {
        let path = (!self.catalog.is_empty()).then(|| Path::new(&self.catalog));
        crate::services::Catalog::load(path)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destinations {
    /// Extra catalog file ("" = the built-in catalog only).
    pub catalog: String,
    /// Addresses remembered from DNS answers at most.
    pub dns_cache_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub path: String,
    #[serde(with = "humantime_serde_compat")]
    pub save_every: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    #[serde(with = "humantime_serde_compat")]
    pub short_window: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub long_window: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub suppress: Duration,
    pub egress_only: bool,
    pub include_loopback: bool,
    pub allow_executables: Vec<String>,
    pub allow_users: Vec<u32>,
    pub allow_destinations: Vec<String>,
    /// Substrings of the sender's cgroup v2 path: containers (their id is in the
    /// path for every runtime) and systemd services.
    pub allow_cgroups: Vec<String>,
    /// Kubernetes namespaces whose pods never alert.
    pub allow_namespaces: Vec<String>,
    /// Informational event the first time an executable sends to a storage service.
    pub first_storage_destination: bool,
    pub exfil_tool_upload: FloorRule,
    pub exfil_tool_exec: Toggle,
    pub bulk_upload: FloorRule,
    pub storage_upload: FloorRule,
    pub suspicious_origin: FloorRule,
    pub dns_tunnel: DnsTunnelRule,
    pub watched_app_upload: FloorRule,
    pub archive_then_upload: ArchiveRule,
    pub volume_anomaly: AnomalyRule,
    pub slow_drip: FloorRule,
    pub quiet_program_upload: QuietRule,
    pub ratio_inversion: RatioRule,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatioRule {
    pub enabled: bool,
    #[serde(with = "byte_size")]
    pub floor: u64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietRule {
    pub enabled: bool,
    #[serde(with = "byte_size")]
    pub floor: u64,
    #[serde(with = "byte_size")]
    pub trickle: u64,
    #[serde(with = "humantime_serde_compat")]
    pub training: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsTunnelRule {
    pub enabled: bool,
    /// Distinct data-carrying names under one registered domain, per job.
    pub names: u64,
    #[serde(with = "humantime_serde_compat")]
    pub window: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloorRule {
    pub enabled: bool,
    #[serde(with = "byte_size")]
    pub floor: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRule {
    pub enabled: bool,
    #[serde(with = "byte_size")]
    pub floor: u64,
    #[serde(with = "humantime_serde_compat")]
    pub within: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyRule {
    pub enabled: bool,
    #[serde(with = "byte_size")]
    pub floor: u64,
    pub sigma: f64,
    pub min_samples: u64,
    #[serde(with = "humantime_serde_compat")]
    pub min_age: Duration,
    pub alpha: f64,
    pub sigma_floor: f64,
    pub max_daily_drift: f64,
    /// Standard deviations an upload command line adds to the score.
    pub cmdline_bonus: f64,
}

/// "10MiB", "500MB", "1GiB", "4096": byte sizes as people write them.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size like \"10MiB\" or \"500MB\""))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, KB, MB, GB, KiB, MiB, GiB)")),
    };
    Ok((n * mult) as u64)
}

mod byte_size {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => super::parse_bytes(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    #[serde(with = "humantime_serde_compat")]
    pub tick: Duration,
    pub probe: Probe,
    pub format: Format,
    pub emit: Emit,
    /// `host.name` on every record ("" = the kernel's hostname). In a pod, set
    /// it to the node's name (the DaemonSet passes the downward API's).
    pub host_name: String,
    /// The local control socket `sluice top` reads ("" = none).
    pub control_socket: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub flows_max: u32,
    pub sockets_max: u32,
    /// The host's cgroup v2 mount ("" = find it in /proc/self/mounts).
    pub cgroup_root: String,
    /// cgroup backend: re-own a socket to whoever sends on it (one hook per send call).
    pub owner_on_send: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flows {
    pub include_loopback: bool,
    #[serde(with = "humantime_serde_compat")]
    pub retire_after: Duration,
}

/// Durations are written as humans write them ("5s", "500ms", "1h").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"5s\" or \"500ms\": {e}")))
    }
}

impl Config {
    /// The embedded defaults alone.
    pub fn embedded() -> Config {
        Self::from_toml(DEFAULT_TOML, None).expect("embedded default config is valid")
    }

    /// Defaults overlaid by `path`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else { return Ok(Self::embedded()) };
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text, Some(path.display().to_string()))
    }

    /// Parse `text` as an overlay on the defaults and validate the result.
    pub fn from_toml(text: &str, origin: Option<String>) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { origin: origin.clone(), message };
        let mut merged: toml::Table = DEFAULT_TOML.parse().map_err(|e| invalid(format!("{e}")))?;
        let user: toml::Table = text.parse().map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        merge(&mut merged, user);
        let config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Check ranges and formats (also after command-line flags changed values).
    pub fn validate(&self) -> Result<(), String> {
        for rule in self.respond.rules.keys() {
            if !crate::detect::RULES.iter().any(|r| r.id == rule) {
                let known: Vec<&str> = crate::detect::RULES.iter().map(|r| r.id).collect();
                return Err(format!("respond.rules: no rule {rule:?} (rules: {})", known.join(", ")));
            }
        }
        let ttl = self.respond.ttl;
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(86_400) {
            return Err(format!("respond.ttl = {ttl:?}: allowed 1s to 24h"));
        }
        let tick = self.agent.tick;
        if tick < Duration::from_millis(100) || tick > Duration::from_secs(3600) {
            return Err(format!("agent.tick = {tick:?}: allowed 100ms to 1h"));
        }
        // A state write per tick would be an fsync storm; a day is the most a crash may lose.
        let every = self.state.save_every;
        if every < Duration::from_secs(1) || every > Duration::from_secs(86_400) {
            return Err(format!("state.save_every = {every:?}: allowed 1s to 24h"));
        }
        for (key, v) in [("kernel.flows_max", self.kernel.flows_max), ("kernel.sockets_max", self.kernel.sockets_max)] {
            if !(1024..=4_194_304).contains(&v) {
                return Err(format!("{key} = {v}: allowed 1024 to 4194304"));
            }
        }
        let d = &self.detect;
        if d.short_window < Duration::from_secs(1) || d.long_window < d.short_window {
            return Err(format!(
                "detect.short_window = {:?}, detect.long_window = {:?}: short must be at least 1s and long at least short",
                d.short_window, d.long_window
            ));
        }
        let floors = [
            ("exfil_tool_upload", d.exfil_tool_upload.floor),
            ("bulk_upload", d.bulk_upload.floor),
            ("storage_upload", d.storage_upload.floor),
            ("suspicious_origin", d.suspicious_origin.floor),
            ("watched_app_upload", d.watched_app_upload.floor),
            ("archive_then_upload", d.archive_then_upload.floor),
            ("volume_anomaly", d.volume_anomaly.floor),
            ("slow_drip", d.slow_drip.floor),
            ("quiet_program_upload", d.quiet_program_upload.floor),
            ("ratio_inversion", d.ratio_inversion.floor),
        ];
        if let Some((rule, _)) = floors.iter().find(|(_, f)| *f == 0) {
            return Err(format!("detect.{rule}.floor = 0: a floor of 0 would alert on every byte; give a size like \"5MiB\""));
        }
        if d.dns_tunnel.names == 0 {
            return Err("detect.dns_tunnel.names = 0: every query would be a tunnel; give a count like 200".into());
        }
        for (key, v) in [
            ("detect.suppress", d.suppress),
            ("detect.archive_then_upload.within", d.archive_then_upload.within),
            ("detect.dns_tunnel.window", d.dns_tunnel.window),
        ] {
            if v.is_zero() {
                return Err(format!("{key} = 0s: must be positive"));
            }
        }
        let a = &d.volume_anomaly;
        if !(a.alpha > 0.0 && a.alpha <= 1.0) {
            return Err(format!("detect.volume_anomaly.alpha = {}: allowed (0, 1]", a.alpha));
        }
        if !(a.sigma > 0.0 && a.sigma_floor > 0.0 && a.max_daily_drift > 0.0) {
            return Err("detect.volume_anomaly.sigma, sigma_floor and max_daily_drift must be > 0".into());
        }
        if self.flows.retire_after > Duration::from_secs(3600) {
            return Err(format!("flows.retire_after = {:?}: allowed up to 1h", self.flows.retire_after));
        }
        if !(16..=10_000_000).contains(&self.destinations.dns_cache_max) {
            return Err(format!("destinations.dns_cache_max = {}: allowed 16 to 10000000", self.destinations.dns_cache_max));
        }
        self.output.file()?;
        if self.output.rotate_size < 4096 || self.output.rotate_keep > 1000 {
            return Err(format!(
                "output.rotate_size = {}, output.rotate_keep = {}: the size must be at least 4KiB and at most 1000 files are kept",
                self.output.rotate_size, self.output.rotate_keep
            ));
        }
        if !(16..=1_048_576).contains(&self.output.queue) {
            return Err(format!("output.queue = {}: allowed 16 to 1048576", self.output.queue));
        }
        if !self.metrics.addr.is_empty() {
            self.metrics.addr.parse::<std::net::SocketAddr>().map_err(|e| {
                format!("metrics.addr = {:?}: {e} (expected an address and port like \"127.0.0.1:9464\")", self.metrics.addr)
            })?;
        }
        Ok(())
    }
}

/// Overlay `user` on `base`, table by table, so a file may set a single key.
fn merge(base: &mut toml::Table, user: toml::Table) {
    for (k, v) in user {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => merge(b, u),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let c = Config::embedded();
        assert_eq!(c.agent.tick, Duration::from_secs(5));
        assert_eq!(c.agent.probe, Probe::Auto);
        assert_eq!(c.agent.emit, Emit::Alerts);
    }

    #[test]
    fn overlay_keeps_other_defaults() {
        let c = Config::from_toml("[agent]\ntick = \"1s\"\n", None).unwrap();
        assert_eq!(c.agent.tick, Duration::from_secs(1));
        assert_eq!(c.agent.format, Format::Json);
        assert_eq!(c.kernel.flows_max, 65536);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[agent]\ntik = \"1s\"\n", Some("x.toml".into())).unwrap_err().to_string();
        assert!(e.contains("tik") && e.contains("x.toml"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1.5 GiB"), Ok(1_610_612_736));
        assert!(parse_bytes("lots").is_err() && parse_bytes("5 parsecs").is_err());
        let c = Config::from_toml("[detect.exfil_tool_upload]\nfloor = 123\n", None).unwrap();
        assert_eq!(c.detect.exfil_tool_upload.floor, 123);
        let e = Config::from_toml("[detect.slow_drip]\nfloor = \"9 furlongs\"\n", None).unwrap_err().to_string();
        assert!(e.contains("furlongs"), "{e}");
        let e = Config::from_toml("[detect.volume_anomaly]\nalpha = 2.0\n", None).unwrap_err().to_string();
        assert!(e.contains("alpha"), "{e}");
    }

    #[test]
    fn rule_keys_floors_and_windows_are_checked() {
        let e = Config::from_toml("[detect.bulk_upload]\nflor = \"1MiB\"\n", None).unwrap_err().to_string();
        assert!(e.contains("flor"), "{e}");
        let e = Config::from_toml("[detect.no_such_rule]\nenabled = true\n", None).unwrap_err().to_string();
        assert!(e.contains("no_such_rule"), "{e}");
        let e = Config::from_toml("[detect.storage_upload]\nfloor = 0\n", None).unwrap_err().to_string();
        assert!(e.contains("detect.storage_upload.floor = 0"), "{e}");
        let e = Config::from_toml("[detect]\nshort_window = \"-5s\"\n", None).unwrap_err().to_string();
        assert!(e.contains("-5s"), "{e}");
        let e = Config::from_toml("[detect]\nsuppress = \"0s\"\n", None).unwrap_err().to_string();
        assert!(e.contains("detect.suppress"), "{e}");
        let c = Config::embedded();
        assert!(c.detect.bulk_upload.enabled && c.detect.storage_upload.enabled && c.detect.exfil_tool_exec.enabled);
    }

    #[test]
    fn output_and_metrics_are_checked() {
        let c = Config::from_toml("[output]\nto = \"file:/var/log/sluice.json\"\n", None).unwrap();
        assert_eq!(c.output.file(), Ok(Some("/var/log/sluice.json")));
        assert_eq!(Config::embedded().output.file(), Ok(None));
        let e = Config::from_toml("[output]\nto = \"syslog\"\n", None).unwrap_err().to_string();
        assert!(e.contains("output.to") && e.contains("file:PATH"), "{e}");
        let e = Config::from_toml("[output]\nrotate_size = 10\n", None).unwrap_err().to_string();
        assert!(e.contains("rotate_size"), "{e}");
        let e = Config::from_toml("[metrics]\naddr = \"localhost\"\n", None).unwrap_err().to_string();
        assert!(e.contains("metrics.addr"), "{e}");
        assert!(Config::from_toml("[metrics]\naddr = \"0.0.0.0:9464\"\n", None).is_ok());
    }

    #[test]
    fn wrong_type_and_range_are_errors() {
        let e = Config::from_toml("[kernel]\nflows_max = \"lots\"\n", None).unwrap_err().to_string();
        assert!(e.contains("flows_max"), "{e}");
        let e = Config::from_toml("[kernel]\nflows_max = 10\n", None).unwrap_err().to_string();
        assert!(e.contains("kernel.flows_max = 10"), "{e}");
        let e = Config::from_toml("[agent]\ntick = \"soon\"\n", None).unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        let e = Config::from_toml("[agent]\nprobe = \"magic\"\n", None).unwrap_err().to_string();
        assert!(e.contains("magic") || e.contains("probe"), "{e}");
    }
}
