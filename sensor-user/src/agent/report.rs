//! What each tick tells the operator besides records: kernel-side drop and
//! failure counters, kretprobe misses, evicted and recreated flows, output
//! drops and naming totals, to stderr when they move and to the metrics.

use crate::{metrics, naming::Namer};
use sensor_common::counter;
use std::time::Duration;

use super::Agent;

impl Agent {
    /// Bring the metrics up to date with this tick's stats.
    pub(super) fn publish(&mut self, flows: usize, window: Duration) {
        let (m, s, p) = (&self.metrics, &self.stats, &mut self.published);
        // Events since the last publish: those of this tick.
        let events = s.events - p.events;
        m.kernel_events.inc_by(events);
        m.malformed_events.inc_by(s.decode_errors - p.decode_errors);
        m.flow_records.inc_by(s.flow_records - p.flow_records);
        m.kernel_events_per_second.set(events as f64 / window.as_secs_f64().max(1e-3));
        m.flows_tracked.set(flows as i64);
        m.map_entries.get_or_create(&metrics::MapLabel { map: "flows".into() }).set(flows as i64);
        m.processes_tracked.set(self.procs.len() as i64);
        m.socket_scan_running.set(self.owners.scanning().into());
        m.socket_scan_waiting.set(self.owners.waiting() as i64);
        for took in self.owners.take_scan_times() {
            m.socket_scan_seconds.observe(took.as_secs_f64());
        }
        *p = s.clone();
    }

    /// Kernel-side drops and failures, summed over CPUs; reported when they move.
    pub(super) fn report_counters(&mut self) {
        let mut moved = Vec::new();
        for i in 0..counter::LEN {
            let Ok(per_cpu) = self.counters.get(&i, 0) else { continue };
            let total: u64 = per_cpu.iter().sum();
            let prev = self.last_counters[i as usize];
            if total != prev {
                let delta = total.saturating_sub(prev);
                let name = counter::NAMES[i as usize];
                self.metrics.kernel_counters.get_or_create(&metrics::NameLabel { name: name.to_string() }).inc_by(delta);
                if name.starts_with("ringbuf_drop") {
                    self.metrics.ringbuf_drops.inc_by(delta);
                }
                moved.push(format!("{}={} (+{})", counter::NAMES[i as usize], total, total.saturating_sub(prev)));
                self.last_counters[i as usize] = total;
            }
        }
        if self.tracker.vanished > 0 {
            self.metrics.flows_evicted.inc_by(self.tracker.vanished);
            moved.push(format!("flows_evicted={}", self.tracker.vanished));
            self.tracker.vanished = 0;
        }
        let profile = self.sensor.retprobes.first().map(|(_, p)| crate::kernel::retprobe::Retprobe::profile(p.tracefs())).unwrap_or_default();
        for (func, probe) in &mut self.sensor.retprobes {
            let missed = probe.newly_missed(&profile);
            if missed > 0 {
                // Each miss is a send whose return (its byte count) was not seen.
                self.metrics.kretprobe_missed.get_or_create(&metrics::NameLabel { name: func.to_string() }).inc_by(missed);
                moved.push(format!("kretprobe_missed_{func}={missed} (sends whose bytes were not counted)"));
            }
        }
        if self.tracker.recreated > 0 {
            self.metrics.flows_recreated.inc_by(self.tracker.recreated);
            moved.push(format!("flows_recreated={}", self.tracker.recreated));
            self.tracker.recreated = 0;
        }
        if !moved.is_empty() {
            eprintln!("sluice: kernel counters: {}", moved.join(" "));
        }
        let out = self.sink.get_ref();
        let dropped = out.dropped();
        if dropped != self.output_dropped {
            let why = out.error().map(|e| format!("the output failed ({e})")).unwrap_or_else(|| "the output is not keeping up".into());
            eprintln!(
                "sluice: {why}: dropped {} records this tick, {dropped} in all; detection and learning go on",
                dropped - self.output_dropped
            );
            self.metrics.output_dropped.inc_by(dropped - self.output_dropped);
            self.output_dropped = dropped;
        }
        if self.namer.stats != self.last_naming {
            for ((name, now), (_, before)) in self
                .namer
                .stats
                .named()
                .into_iter()
                .zip(self.last_naming.named())
            {
                if now > before {
                    self.metrics
                        .naming
                        .get_or_create(&metrics::NameLabel {
                            name: name.to_string(),
                        })
                        .inc_by(now - before);
                }
            }
            self.last_naming = self.namer.stats.clone();
            eprintln!("sluice: naming: {}", naming_summary(&self.namer));
        }
    }
}

/// What naming saw so far, for stderr: parsed, unnamed and dropped inputs.
fn naming_summary(n: &Namer) -> String {
    let (heads, sockets, addresses) = n.tracked();
    let counts: Vec<String> = n
        .stats
        .named()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{} (tracking {heads} stream starts, {sockets} named sockets, {addresses} DNS addresses)",
        counts.join(" ")
    )
}
