//! Operability: Prometheus metrics (`/metrics`, OpenMetrics text via the
//! `prometheus-client` crate) and liveness (`/healthz`) on one small HTTP
//! listener. The agent updates the metric handles (atomics) from its tick; the
//! server only reads them, so a slow scraper never delays the kernel side.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

/// Every metric sluice exports; cheap to clone (handles share their atomics).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub kernel_events: Counter,
    pub execs: Counter,
    pub kernel_events_per_second: Gauge<f64, AtomicU64>,
    pub malformed_events: Counter,
    /// The kernel's own drop and failure counters (ring buffer full, map
    /// inserts that failed, ...), by name.
    pub kernel_counters: Family<NameLabel, Counter>,
    pub ringbuf_drops: Counter,
    pub flows_evicted: Counter,
    /// Evicted entries the kernel created again before the agent read them
    /// (told apart by their creation stamp, and counted whole).
    pub flows_recreated: Counter,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    pub flows_tracked: Gauge,
    pub processes_tracked: Gauge,
    pub flow_records: Counter,
    pub alerts: Family<RuleLabel, Counter>,
    pub backend: Family<BackendLabel, Gauge>,
    pub ticks: Counter,
    pub tick_seconds: Histogram,
    pub last_tick_unix: Gauge<f64, AtomicU64>,
    pub output_dropped: Counter,
    /// Detector window entries dropped to stay bounded (floods of names).
    pub detector_evictions: Counter,
    /// Bytes sent whose owner stayed unknown after every lookup.
    pub ownerless_bytes: Counter,
    /// kprobe backend: returns a kretprobe missed (all instances in use), by function.
    pub kretprobe_missed: Family<NameLabel, Counter>,
    /// What naming parsed, could not parse, ignored or dropped, by name.
    pub naming: Family<NameLabel, Counter>,
    /// Background scans for unknown socket owners (sock_diag + /proc walk).
    pub socket_scan_seconds: Histogram,
    pub socket_scan_running: Gauge,
    pub socket_scan_waiting: Gauge,
    /// Containments made, by mode (`respond`).
    pub containments: Family<NameLabel, Counter>,
    /// Monotonic time of the last completed tick, for /healthz.
    last_tick: Arc<AtomicU64>,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Is the listener's address one only this host can reach? Per-rule alert
/// counts are exported there by default, not on an address pods can scrape:
/// a pod that reads `sluice_alerts_total{rule="..."}` move just after its
/// upload has learned which rule it tripped and how to stay under it.
pub fn is_loopback(addr: &str) -> bool {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr.rsplit_once(':').is_some_and(|(host, _)| host == "localhost"),
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_alerts_by_rule(true)
    }

    /// `alerts_by_rule` false: no alert counts at all on /metrics (a total
    /// would tell a pod as much, one alert at a time); the stream has them.
    pub fn with_alerts_by_rule(alerts_by_rule: bool) -> Self {
        let mut r = Registry::with_prefix("sluice");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            kernel_events: Counter::default(),
            kernel_events_per_second: Gauge::default(),
            malformed_events: Counter::default(),
            kernel_counters: Family::default(),
            ringbuf_drops: Counter::default(),
            execs: Counter::default(),
            flows_evicted: Counter::default(),
            flows_recreated: Counter::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            flows_tracked: Gauge::default(),
            processes_tracked: Gauge::default(),
            flow_records: Counter::default(),
            alerts: Family::default(),
            backend: Family::default(),
            ticks: Counter::default(),
            // 1 ms to ~4 s: a tick that takes seconds means the agent falls behind.
            tick_seconds: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0]),
            last_tick_unix: Gauge::default(),
            output_dropped: Counter::default(),
            detector_evictions: Counter::default(),
            ownerless_bytes: Counter::default(),
            naming: Family::default(),
            kretprobe_missed: Family::default(),
            // 10 ms to ~16 s: with 50,000 processes the /proc walk took seconds.
            socket_scan_seconds: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]),
            socket_scan_running: Gauge::default(),
            socket_scan_waiting: Gauge::default(),
            containments: Family::default(),
            last_tick: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
        };
        r.register("kernel_events", "Events read from the kernel ring buffer (exec, fork, exit, payload copies)", m.kernel_events.clone());
        r.register("execs", "Program executions seen (exec events read from the kernel)", m.execs.clone());
        r.register("kernel_events_per_second", "Kernel events per second over the last tick", m.kernel_events_per_second.clone());
        r.register("malformed_events", "Ring buffer records that did not decode (dropped)", m.malformed_events.clone());
        r.register("kernel_counter", "The kernel programs' drop and failure counters, by name", m.kernel_counters.clone());
        r.register("ringbuf_drops", "Events the kernel could not queue because the ring buffer was full", m.ringbuf_drops.clone());
        r.register("flows_evicted", "Flow entries the kernel's LRU map evicted before the agent read them", m.flows_evicted.clone());
        r.register(
            "flows_recreated",
            "Evicted flow entries created again between two reads (their bytes counted whole, by creation stamp)",
            m.flows_recreated.clone(),
        );
        r.register("map_entries", "Entries in a kernel map at its last read", m.map_entries.clone());
        r.register("map_capacity", "Capacity of a kernel map", m.map_capacity.clone());
        r.register("flows_tracked", "Flows in the kernel's flow map at the last tick", m.flows_tracked.clone());
        r.register("processes_tracked", "Processes in the agent's process table", m.processes_tracked.clone());
        r.register("flow_records", "Flow records written", m.flow_records.clone());
        if alerts_by_rule {
            r.register("alerts", "Alerts raised, by rule", m.alerts.clone());
        }
        r.register("backend_info", "The probe backend in use (value 1)", m.backend.clone());
        r.register("containments", "Containments made, by mode (enforce, dry-run)", m.containments.clone());
        r.register("ticks", "Ticks completed", m.ticks.clone());
        r.register("tick_duration_seconds", "Time the agent spent on one tick (drain, attribute, detect, write)", m.tick_seconds.clone());
        r.register("last_tick_timestamp_seconds", "Unix time of the last completed tick", m.last_tick_unix.clone());
        r.register("output_dropped_records", "Records that could not be written to the output", m.output_dropped.clone());
        r.register(
            "ownerless_bytes",
            "Bytes sent whose owner stayed unknown (still judged, as one unknown process)",
            m.ownerless_bytes.clone(),
        );
        r.register(
            "kretprobe_missed",
            "kprobe backend: send returns a kretprobe missed (every instance in use), whose bytes were not counted, by function",
            m.kretprobe_missed.clone(),
        );
        r.register(
            "naming",
            "Destination-naming inputs by outcome (names found, malformed, unsolicited DNS answers ignored, reassemblies evicted)",
            m.naming.clone(),
        );
        r.register(
            "socket_scan_duration_seconds",
            "Background scans for the owners of sockets no hook saw (sock_diag in every network namespace, then a /proc fd walk)",
            m.socket_scan_seconds.clone(),
        );
        r.register("socket_scan_running", "1 while a background socket-owner scan runs (ticks go on meanwhile)", m.socket_scan_running.clone());
        r.register(
            "socket_scan_waiting",
            "Sockets of unknown owner waiting for the running scan or the next (their bytes are held until it ends)",
            m.socket_scan_waiting.clone(),
        );
        r.register(
            "detector_evictions",
            "Detector windows (per job, executable, destination, ...) dropped to stay within bounds",
            m.detector_evictions.clone(),
        );
        Metrics { registry: Arc::new(r), ..m }
    }

    /// Note a completed tick (for /healthz) that took `took`.
    pub fn tick_done(&self, took: Duration, unix_now: f64) {
        self.ticks.inc();
        self.tick_seconds.observe(took.as_secs_f64());
        self.last_tick_unix.set(unix_now);
        self.last_tick.store(self.started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }

    /// Healthy while ticks keep completing: the last one is younger than
    /// `stale` (the first one is awaited for `stale` after start).
    pub fn healthy(&self, stale: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_tick.load(Ordering::Relaxed);
        let since = if last == 0 { now } else { now.saturating_sub(last) };
        since <= stale.as_millis() as u64
    }
}

/// The answer for one request line's method and path: (status, content type, body).
pub fn respond(m: &Metrics, method: &str, path: &str, stale: Duration) -> (u16, &'static str, String) {
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", m.render()),
        ("GET", "/healthz") | ("GET", "/readyz") => {
            if m.healthy(stale) {
                (200, "text/plain; charset=utf-8", "ok\n".into())
            } else {
                (503, "text/plain; charset=utf-8", format!("no tick completed in the last {stale:?}\n"))
            }
        }
        ("GET", _) => (404, "text/plain; charset=utf-8", "try /metrics or /healthz\n".into()),
        _ => (405, "text/plain; charset=utf-8", "GET only\n".into()),
    }
}

/// Bind the listener (before the runtime exists, so a bad address or a port in
/// use stops the start before anything is loaded into the kernel).
pub fn bind(addr: &str) -> anyhow::Result<std::net::TcpListener> {
    use anyhow::Context;
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("binding the metrics listener on {addr}"))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serve `/metrics` and `/healthz` from a thread of their own: a tick that
/// runs long (a /proc walk among 50,000 processes, a slow disk under a state
/// save) must not make the health check time out, only go stale when ticks
/// really stop completing (`stale`).
pub fn serve(l: std::net::TcpListener, m: Metrics, stale: Duration) -> anyhow::Result<std::net::SocketAddr> {
    let local = l.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("sluice-metrics".into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = TcpListener::from_std(l) else { return };
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // Out of fds, say: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let m = m.clone();
                tokio::spawn(async move {
                    // A client that does not finish its request in time is dropped.
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(conn, &m, stale)).await;
                });
            }
        })
    })?;
    Ok(local)
}

async fn handle(mut conn: tokio::net::TcpStream, m: &Metrics, stale: Duration) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Request heads are small; 16 KiB is plenty and bounds a hostile client.
    let (method, path) = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (req.method.unwrap_or("").to_string(), req.path.unwrap_or("").to_string());
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => continue,
            _ => {
                conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await?;
                return Ok(());
            }
        }
    };
    let (status, ctype, body) = respond(m, &method, &path, stale);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_metrics_and_moves() {
        let m = Metrics::new();
        m.backend.get_or_create(&BackendLabel { backend: "cgroup".into() }).set(1);
        m.kernel_events.inc_by(42);
        m.alerts.get_or_create(&RuleLabel { rule: "sluice.exfil_tool_upload".into() }).inc();
        m.tick_done(Duration::from_millis(3), 1.0);
        let text = m.render();
        for want in [
            "sluice_kernel_events_total 42",
            "sluice_alerts_total{rule=\"sluice.exfil_tool_upload\"} 1",
            "sluice_backend_info{backend=\"cgroup\"} 1",
            "sluice_ticks_total 1",
            "sluice_tick_duration_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn alert_counts_only_where_pods_cannot_scrape_them() {
        let m = Metrics::with_alerts_by_rule(false);
        m.alerts.get_or_create(&RuleLabel { rule: "sluice.exfil_tool_upload".into() }).inc();
        let text = m.render();
        assert!(!text.contains("alerts") && !text.contains("exfil"), "{text}");
        assert!(text.contains("sluice_ticks_total"), "the rest is exported");
        for (addr, local) in [("127.0.0.1:9464", true), ("[::1]:9464", true), ("localhost:9464", true), ("0.0.0.0:9464", false), ("10.1.2.3:9464", false), ("[::]:9464", false), ("node:9464", false)] {
            assert_eq!(is_loopback(addr), local, "{addr}");
        }
    }

    #[test]
    fn health_follows_ticks() {
        let m = Metrics::new();
        assert!(m.healthy(Duration::from_secs(60)), "grace before the first tick");
        assert!(!m.healthy(Duration::ZERO) || m.started.elapsed() < Duration::from_millis(1));
        m.tick_done(Duration::from_millis(1), 0.0);
        assert_eq!(respond(&m, "GET", "/healthz", Duration::from_secs(60)).0, 200);
        assert_eq!(respond(&m, "GET", "/metrics?x=1", Duration::from_secs(60)).0, 200);
        assert_eq!(respond(&m, "GET", "/nope", Duration::from_secs(60)).0, 404);
        assert_eq!(respond(&m, "POST", "/metrics", Duration::from_secs(60)).0, 405);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(respond(&m, "GET", "/healthz", Duration::from_millis(1)).0, 503);
    }
}
