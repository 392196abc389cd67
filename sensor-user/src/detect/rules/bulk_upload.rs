//! Minute one, no learning: fires when a job (the command a user, service or
//! container started, with every helper it runs), an executable (all its
//! command lines), a destination site (a registered domain, or an address,
//! across all senders) or the whole host sends more than the floor in the
//! short window, counting only senders whose executable has no mature
//! baseline yet (once it has, `volume_anomaly` judges it against that). A new
//! install sees a bulk upload the minute it happens, and splitting it over
//! children, command lines, executables or destinations does not hide it:
//! the next level up adds the parts together.

use super::{Finding, Rule};
use crate::{
    detect::{
        reason::{human_bytes, where_to, who},
        subject::{Level, Subject},
        Detector,
    },
    services::is_upload_category,
};

pub const RULE: Rule = Rule {
    id: "sluice.bulk_upload",
    name: "Bulk upload by a program with no upload history",
    severity: "medium",
    severity_num: 47,
    techniques: &[("T1567", "Exfiltration Over Web Service"), ("T1048", "Exfiltration Over Alternative Protocol"), ("T1030", "Data Transfer Size Limits")],
};

pub fn check(d: &mut Detector, s: &Subject) -> Option<Finding> {
    let r = d.cfg.bulk_upload.clone();
    if !r.enabled || s.learned {
        return None;
    }
    // Bytes to a storage service or an exfil tool's are judged by those
    // rules, at lower floors, and would make a second alert for one upload.
    if s.service.as_ref().is_some_and(|svc| svc.exfil_tool || is_upload_category(&svc.category)) {
        return None;
    }
    // Each level's sum of bytes from senders without a learned baseline.
    let mut crossed = None;
    for level in Level::ALL {
        let (out, inb) = d.bulk.bump(s.level_key(level), s.f, s.t, s.bucket, s.short_s);
        if crossed.is_none() && out >= r.floor {
            crossed = Some((level, out, inb));
        }
    }
    let (level, out, inb) = crossed?;
    let key = format!("bulk|{}", s.level_key(level));
    let scope = match level {
        Level::Job => "this job".to_string(),
        Level::Executable => format!("all runs of {}", s.f.process.executable),
        Level::Destination => format!("all programs to {}", s.site.trim_start_matches("site:")),
        Level::Host => "all programs on this host".to_string(),
    };
    let reason = format!(
        "{} sent {} to {}; {scope} sent {} in the last {} s, over the {} bulk floor for programs sluice has not yet learned a \
         normal upload volume for (this one never had one), which is what exfiltration from a new or unusual program looks like",
        who(&s.f.process),
        human_bytes(s.f.bytes_out),
        where_to(s.f),
        human_bytes(out),
        s.short_s,
        human_bytes(r.floor)
    );
    let mut ind = s.indicators.clone();
    ind.push(format!("level: {}", level.as_str()));
    Some(Finding::over_floor(RULE, &key, (out, inb), s, reason, ind))
}

#[cfg(test)]
mod tests {
    use crate::detect::{
        tests::{detector, flow, ids, in_job, proc_, tick, MIB},
        FlowObs,
    };

    #[test]
    fn thirty_processes_of_one_job_with_different_command_lines_add_up() {
        let mut d = detector();
        let mut alerts = Vec::new();
        for i in 0..30u32 {
            let label = format!("--part={}", (b'a' + (i % 26) as u8) as char);
            let p = in_job(proc_(700 + i, 600, "/usr/bin/python3", &["python3", "-c", "up", &label]), 600, "/usr/bin/python3", &["python3", "driver.py"]);
            alerts.extend(d.tick(&tick(1.0 + i as f64, vec![flow(&p, 10 * MIB)])));
        }
        assert_eq!(ids(&alerts), [super::RULE.id]);
        assert!(alerts[0].reason.starts_with("`python3 driver.py` (pid 600) through python3"), "{}", alerts[0].reason);
        assert!(alerts[0].reason.contains("this job sent 100.0 MiB in the last 60 s"), "{}", alerts[0].reason);
    }

    #[test]
    fn jobs_split_apart_still_add_up_by_executable_then_destination_then_host() {
        // Each its own job (setsid): the executable adds them up.
        let mut d = detector();
        let a: Vec<_> = (0..11u32).flat_map(|i| d.tick(&tick(1.0 + i as f64, vec![flow(&proc_(800 + i, 1, "/usr/bin/python3", &["python3", &format!("x{i}")]), 10 * MIB)]))).collect();
        assert_eq!(ids(&a), [super::RULE.id]);
        assert!(a[0].reason.contains("all runs of /usr/bin/python3"), "{}", a[0].reason);
        // Each its own executable copy: the destination adds them up.
        let mut d = detector();
        let a: Vec<_> = (0..11u32).flat_map(|i| d.tick(&tick(1.0 + i as f64, vec![flow(&proc_(800 + i, 1, &format!("/opt/c{i}/py"), &["py"]), 10 * MIB)]))).collect();
        assert!(a[0].reason.contains("all programs to 203.0.113.9"), "{}", a[0].reason);
        // Each to its own address too: the host adds them up.
        let mut d = detector();
        let a: Vec<_> = (0..11u32)
            .flat_map(|i| {
                let mut f: FlowObs = flow(&proc_(800 + i, 1, &format!("/opt/c{i}/py"), &["py"]), 10 * MIB);
                f.remote_ip = format!("198.51.100.{i}").parse().unwrap();
                d.tick(&tick(1.0 + i as f64, vec![f]))
            })
            .collect();
        assert!(a[0].reason.contains("all programs on this host"), "{}", a[0].reason);
    }

    #[test]
    fn a_program_with_a_learned_baseline_is_left_to_the_learned_rules() {
        let mut d = detector();
        let backup = proc_(77, 1, "/usr/bin/restic", &["restic", "backup", "/srv"]);
        // 30 minutes of 120 MiB a minute: a bulk alert at first, then learned.
        let mut first = Vec::new();
        for i in 0..30u64 {
            let t = 60.0 * (i + 1) as f64;
            let a = d.tick(&crate::detect::TickInput { t, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&backup, 120 * MIB)] });
            first.extend(a.into_iter().map(|a| (t, a.rule.id)));
        }
        assert_eq!(first, [(60.0, super::RULE.id)], "one alert in the first minute, none once learned");
    }
}
