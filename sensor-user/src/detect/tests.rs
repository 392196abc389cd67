//! Replay-driven tests: synthetic ticks with simulated time, no kernel.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::config::Config;

pub(crate) const MIB: u64 = 1024 * 1024;

pub(crate) fn proc_(pid: u32, ppid: u32, exe: &str, args: &[&str]) -> ProcInfo {
    ProcInfo {
        pid,
        ppid,
        entity_id: format!("{pid}-1"),
        name: catalog::base(exe),
        executable: exe.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        uid: 1000,
        ancestors: vec![(ppid, "/bin/bash".into())],
        ..ProcInfo::default()
    }
}

/// `p` as a process of the job whose group leader is `leader` (pid = pgid).
pub(crate) fn in_job(mut p: ProcInfo, leader: u32, exe: &str, args: &[&str]) -> ProcInfo {
    p.job = Some(JobInfo {
        pgid: leader,
        pid: leader,
        entity_id: format!("{leader}-1"),
        executable: exe.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
    });
    p
}

pub(crate) fn flow(p: &ProcInfo, bytes_out: u64) -> FlowObs {
    FlowObs {
        process: p.clone(),
        remote_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        remote_port: 443,
        transport: "tcp".into(),
        direction: "egress".into(),
        scope: "public".into(),
        domain: None,
        domain_corroborated: false,
        via_proxy: None,
        cgroup: None,
        container: None,
        bytes_out,
        bytes_in: bytes_out / 100,
    }
}

pub(crate) fn tick(t: f64, flows: Vec<FlowObs>) -> TickInput {
    TickInput { t, window_s: 5.0, execs: vec![], dns: vec![], network_users: vec![], flows }
}

pub(crate) fn detector() -> Detector {
    Detector::new(Config::embedded().detect)
}

pub(crate) fn ids(alerts: &[Alert]) -> Vec<&'static str> {
    alerts.iter().map(|a| a.rule.id).collect()
}

#[test]
fn a_mega_client_fires_the_tick_it_crosses_the_floor() {
    let mut d = detector();
    let mega = proc_(4242, 100, "/usr/bin/mega-put", &["mega-put", "secrets.tar", "/Backups"]);
    assert!(d.tick(&tick(5.0, vec![flow(&mega, 3 * MIB)])).is_empty(), "3 MiB is under the 5 MiB floor");
    let a = d.tick(&tick(10.0, vec![flow(&mega, 3 * MIB)]));
    assert_eq!(ids(&a), [EXFIL_TOOL.id]);
    assert_eq!(a[0].bytes_out, 6 * MIB);
    assert!(a[0].reason.contains("mega-put (pid 4242, /usr/bin/mega-put) sent 6.0 MiB to 203.0.113.9:443 in the last 60 s"), "{}", a[0].reason);
    assert!(a[0].reason.contains("MEGAcmd"));
}

#[test]
fn the_megacmd_server_upload_names_the_client_command_that_asked_for_it() {
    let mut d = detector();
    let client = proc_(900, 800, "/usr/bin/mega-put", &["mega-put", "/srv/hr/salaries.xlsx", "/exfil"]);
    let server = proc_(700, 1, "/usr/bin/mega-cmd-server", &["mega-cmd-server"]);
    let mut t0 = tick(5.0, vec![]);
    t0.execs = vec![client];
    d.tick(&t0);
    let a = d.tick(&tick(10.0, vec![flow(&server, 50 * MIB)]));
    assert_eq!(ids(&a), [EXFIL_TOOL.id]);
    assert_eq!(a[0].process.pid, 700, "the server is the one sending");
    assert!(a[0].reason.contains("requested by `mega-put /srv/hr/salaries.xlsx /exfil` (pid 900)"), "{}", a[0].reason);
}

#[test]
fn a_renamed_tool_is_caught_by_argv0_and_rclone_command_lines_are_indicators() {
    let mut d = detector();
    let p = proc_(7, 1, "/tmp/.x/update", &["rclone", "copy", "/srv", "mega:loot", "--transfers", "8"]);
    let a = d.tick(&tick(5.0, vec![flow(&p, 20 * MIB)]));
    assert_eq!(ids(&a), [EXFIL_TOOL.id]);
    assert!(a[0].indicators.iter().any(|i| i.contains("mega remote")), "{:?}", a[0].indicators);
}

#[test]
fn bytes_of_unknown_direction_or_owner_are_judged_not_dropped() {
    let mut d = detector();
    let mega = proc_(1, 0, "/usr/bin/megasync", &["megasync"]);
    let mut f = flow(&mega, 100 * MIB);
    f.direction = "unknown".into();
    assert_eq!(ids(&d.tick(&tick(5.0, vec![f]))), [EXFIL_TOOL.id], "unknown direction is not a server answering");
    // An owner never found: one unknown process, judged on what all such bytes add up to.
    let mut d = detector();
    let nobody = ProcInfo { entity_id: "0-0".into(), ..ProcInfo::default() };
    let mut alerts = Vec::new();
    for i in 0..3 {
        let mut f = flow(&nobody, 40 * MIB);
        f.direction = "unknown".into();
        f.remote_ip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, i));
        alerts.extend(d.tick(&tick(5.0 + i as f64, vec![f])));
    }
    assert_eq!(ids(&alerts), [BULK_UPLOAD.id]);
    assert!(alerts[0].reason.starts_with("an unknown process (sockets older than sluice"), "{}", alerts[0].reason);
}

#[test]
fn uploads_that_are_not_uploads_are_out_of_scope() {
    let mut d = detector();
    let mega = proc_(1, 0, "/usr/bin/megasync", &["megasync"]);
    let mut served = flow(&mega, 100 * MIB);
    served.direction = "ingress".into();
    let mut local = flow(&mega, 100 * MIB);
    local.scope = "loopback".into();
    assert!(d.tick(&tick(5.0, vec![served, local])).is_empty());
}

#[test]
fn flows_no_rule_could_judge_still_teach_that_a_program_uses_the_network() {
    let mut d = detector();
    // What the agent hands over without a full observation (accepted or
    // loopback connections): the same facts make in_scope refuse them.
    assert!(!d.could_judge(100, "ingress", "public") && !d.could_judge(100, "egress", "loopback") && !d.could_judge(0, "egress", "public"));
    assert!(d.could_judge(1, "unknown", "public"));
    let mut t = tick(5.0, vec![]);
    t.network_users = vec!["/usr/sbin/nginx".into()];
    d.tick(&t);
    assert!(d.habits.by_exe.contains_key("/usr/sbin/nginx"));
}

#[test]
fn allowlists_silence_executables_users_and_destinations() {
    let mut cfg = Config::embedded().detect;
    cfg.allow_executables = vec!["rclone".into()];
    cfg.allow_destinations = vec!["backup.example.com".into()];
    let mut d = Detector::new(cfg);
    let rclone = proc_(1, 0, "/usr/bin/rclone", &["rclone", "sync", "/srv", "b2:bucket"]);
    assert!(d.tick(&tick(5.0, vec![flow(&rclone, 500 * MIB)])).is_empty());
    let mega = proc_(2, 0, "/usr/bin/megasync", &["megasync"]);
    let mut f = flow(&mega, 500 * MIB);
    f.domain = Some("eu.backup.example.com".into());
    f.domain_corroborated = true;
    assert!(d.tick(&tick(10.0, vec![f.clone()])).is_empty(), "a name DNS backs is allowlisted");
    // The same name claimed in the sender's own SNI, no DNS answer behind it: judged.
    f.domain_corroborated = false;
    assert_eq!(ids(&d.tick(&tick(15.0, vec![f]))), [EXFIL_TOOL.id], "a claimed name does not allowlist");
}

#[test]
fn a_watched_application_uploading_alerts() {
    let mut d = detector();
    let office = proc_(9, 1, "/usr/lib/libreoffice/program/soffice.bin", &["soffice.bin"]);
    let a = d.tick(&tick(5.0, vec![flow(&office, 2 * MIB)]));
    assert_eq!(ids(&a), [WATCHED_APP.id]);
    assert!(a[0].reason.contains("is not expected to upload"));
}

#[test]
fn archive_then_upload_in_one_pipeline_and_only_then() {
    // tar czf - dir | curl -T - ...: siblings under the shell (pid 500).
    let tar = proc_(501, 500, "/usr/bin/tar", &["tar", "czf", "-", "/home/u/docs"]);
    let curl = proc_(502, 500, "/usr/bin/curl", &["curl", "-T", "-", "https://x"]);
    let mut d = detector();
    let mut t0 = tick(5.0, vec![]);
    t0.execs = vec![tar.clone(), curl.clone()];
    assert!(d.tick(&t0).is_empty());
    let a = d.tick(&tick(10.0, vec![flow(&curl, 2 * MIB)]));
    assert_eq!(ids(&a), [ARCHIVE_THEN_UPLOAD.id]);
    assert!(a[0].reason.contains("tar czf - /home/u/docs"), "{}", a[0].reason);
    assert!(a[0].indicators.iter().any(|i| i.contains("curl upload")), "{:?}", a[0].indicators);

    // The same upload with no archiver in its tree: nothing.
    let mut d = detector();
    assert!(d.tick(&tick(10.0, vec![flow(&curl, 2 * MIB)])).is_empty());

    // An archiver long before (outside `within`): nothing.
    let mut d = detector();
    d.tick(&t0);
    assert!(d.tick(&tick(5.0 + 3600.0, vec![flow(&curl, 2 * MIB)])).is_empty());
}

#[test]
fn split_chunks_uploaded_by_many_short_lived_children_count_as_one() {
    // split -b then ten curl processes of 300 KiB each: each under the floor.
    let split = proc_(601, 600, "/usr/bin/split", &["split", "-b", "300k", "db.tar"]);
    let mut d = detector();
    let mut t0 = tick(5.0, vec![]);
    t0.execs = vec![split];
    d.tick(&t0);
    let mut alerts = Vec::new();
    for i in 0..10 {
        let c = proc_(610 + i, 600, "/usr/bin/curl", &["curl", "-T", "chunk", "https://x"]);
        alerts.extend(d.tick(&tick(10.0 + i as f64, vec![flow(&c, 300 * 1024)])));
    }
    assert_eq!(ids(&alerts), [ARCHIVE_THEN_UPLOAD.id], "one alert once the tree crossed 1 MiB");
}

/// 30 minutes of one tick a minute: `backup.py` sends ~3 MB a minute.
fn benign_history(d: &mut Detector, p: &ProcInfo) -> f64 {
    let mut t = 0.0;
    for i in 0..30u64 {
        t = 60.0 * (i + 1) as f64;
        let a = d.tick(&TickInput { t, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(p, 3_000_000 + (i % 5) * 150_000)] });
        assert!(a.is_empty(), "benign history raised {:?}", ids(&a));
    }
    t
}

#[test]
fn twenty_x_after_a_learned_history_is_an_anomaly_and_the_history_alone_is_not() {
    let p = proc_(77, 1, "/usr/bin/python3", &["python3", "backup.py"]);
    let mut d = detector();
    let t = benign_history(&mut d, &p);
    let a = d.tick(&TickInput { t: t + 60.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, 64_000_000)] });
    assert_eq!(ids(&a), [VOLUME_ANOMALY.id]);
    let b = a[0].baseline.expect("evidence");
    assert!(b.samples >= 20 && b.z > 3.0, "{b:?}");
    assert!(a[0].reason.contains("baseline is"), "{}", a[0].reason);

    // Same history, normal next minute: nothing.
    let mut d = detector();
    let t = benign_history(&mut d, &p);
    assert!(d.tick(&TickInput { t: t + 60.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, 3_100_000)] }).is_empty());
}

#[test]
fn a_cold_start_does_not_alert_and_an_alerting_window_does_not_train() {
    let p = proc_(77, 1, "/usr/bin/python3", &["python3", "backup.py"]);
    let mut d = detector();
    assert!(d.tick(&TickInput { t: 60.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, 64_000_000)] }).is_empty());

    let mut d = detector();
    let t = benign_history(&mut d, &p);
    let before = d.baselines.get(&identity(&p)).copied().unwrap();
    assert!(!d.tick(&TickInput { t: t + 60.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, 64_000_000)] }).is_empty());
    d.tick(&TickInput { t: t + 180.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![] });
    let after = d.baselines.get(&identity(&p)).copied().unwrap();
    assert_eq!(before.samples, after.samples, "the alerting window was not learned");
}

#[test]
fn a_slow_drip_under_every_per_window_bar_alerts_over_hours() {
    // sluice has watched this host for 7 h; then a new program drips 200 MB
    // over ~4 h: 1 MB every 72 s, never near the 50 MiB anomaly floor.
    let p = proc_(88, 1, "/usr/bin/python3", &["python3", "sync_notes.py"]);
    let other = proc_(5, 1, "/usr/sbin/chronyd", &["chronyd"]);
    let mut d = detector();
    d.tick(&tick(1.0, vec![flow(&other, 500)]));
    let t0 = 7.0 * 3600.0;
    let mut alerts = Vec::new();
    for i in 0..200u64 {
        alerts.extend(d.tick(&TickInput { t: t0 + 72.0 * (i + 1) as f64, window_s: 5.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, 1_000_000)] }));
    }
    assert_eq!(ids(&alerts), [SLOW_DRIP.id], "exactly one (deduplicated) drip alert");
    assert!(alerts[0].bytes_out >= 100 * MIB);
    assert!(alerts[0].reason.contains("without crossing any per-window bar"));
}

#[test]
fn a_steady_uploader_with_a_learned_baseline_is_not_a_drip() {
    // A log shipper running since sluice was installed: 1 MB a minute for 10 h.
    let p = proc_(99, 1, "/usr/bin/fluent-bit", &["fluent-bit", "-c", "/etc/fb.conf"]);
    let mut d = detector();
    let mut alerts = Vec::new();
    for i in 0..600u64 {
        alerts.extend(d.tick(&TickInput { t: 60.0 * (i + 1) as f64, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, 1_000_000)] }));
    }
    assert!(alerts.is_empty(), "{:?}", alerts.iter().map(|a| &a.reason).collect::<Vec<_>>());
}

#[test]
fn dedup_keeps_one_alert_per_period_and_counts_the_rest() {
    let mega = proc_(4242, 100, "/usr/bin/megasync", &["megasync"]);
    let mut d = detector();
    let mut all = Vec::new();
    for i in 0..120 {
        all.extend(d.tick(&tick(5.0 * (i + 1) as f64, vec![flow(&mega, 10 * MIB)])));
    }
    assert_eq!(all.len(), 1, "10 minutes of upload: one alert");
    let later = d.tick(&tick(3700.0, vec![flow(&mega, 10 * MIB)]));
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].suppressed, 119, "the next alert says how many were suppressed");
}

#[test]
fn replay_is_deterministic() {
    let run = || {
        let mut d = detector();
        let mut out = Vec::new();
        let tar = proc_(501, 500, "/usr/bin/tar", &["tar", "cf", "-", "."]);
        let curl = proc_(502, 500, "/usr/bin/curl", &["curl", "-T", "-", "x"]);
        let mega = proc_(9, 1, "/usr/bin/mega-put", &["mega-put"]);
        for i in 0..50u64 {
            let mut t = tick(5.0 * (i + 1) as f64, vec![flow(&curl, 300_000), flow(&mega, 1_000_000)]);
            if i == 3 {
                t.execs.push(tar.clone());
            }
            out.extend(d.tick(&t).into_iter().map(|a| (a.t, a.rule.id, a.bytes_out, a.reason)));
        }
        out
    };
    let a = run();
    assert!(!a.is_empty());
    assert_eq!(a, run());
}

#[test]
fn human_bytes_reads_well() {
    assert_eq!(human_bytes(512), "512 B");
    assert_eq!(human_bytes(1536), "1.5 KiB");
    assert_eq!(human_bytes(1_288_490_189), "1.2 GiB");
}

#[test]
fn a_program_that_never_used_the_network_uploading_alerts_after_training() {
    let mut cfg = Config::embedded().detect;
    cfg.quiet_program_upload.training = std::time::Duration::from_secs(3600);
    let mut d = Detector::new(cfg);
    let viewer = proc_(31, 1, "/usr/bin/shotwell", &["shotwell"]);
    // (The syncer's 180 MB in 90 min is no drip: sluice has not watched 6 h yet.)
    let chatty = proc_(32, 1, "/usr/bin/syncer", &["syncer"]);
    // An hour and a half: the viewer only trickles, the syncer moves 2 MB a minute.
    let mut start = tick(1.0, vec![]);
    start.execs = vec![viewer.clone(), chatty.clone()];
    d.tick(&start);
    for i in 1..=90u64 {
        let t = 60.0 * i as f64;
        let a = d.tick(&TickInput { t, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&viewer, 2_000), flow(&chatty, 2_000_000)] });
        assert!(a.is_empty(), "{:?}", ids(&a));
    }
    let t = 60.0 * 92.0;
    let a = d.tick(&TickInput { t, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&viewer, 30 * MIB), flow(&chatty, 30 * MIB)] });
    assert_eq!(ids(&a), [QUIET_PROGRAM.id], "only the quiet one");
    assert_eq!(a[0].process.pid, 31);
    assert!(a[0].reason.contains("never sent more than"), "{}", a[0].reason);
}

#[test]
fn no_quiet_alert_before_the_training_period_ends() {
    let mut d = detector(); // 7 days by default
    let viewer = proc_(31, 1, "/usr/bin/shotwell", &["shotwell"]);
    d.tick(&tick(1.0, vec![flow(&viewer, 1_000)]));
    assert!(d.tick(&tick(86_400.0, vec![flow(&viewer, 30 * MIB)])).is_empty());
}

#[test]
fn a_package_manager_that_uploads_is_inverted_and_one_that_downloads_is_not() {
    let mut d = detector();
    let apt = proc_(40, 39, "/usr/lib/apt/methods/https", &["/usr/lib/apt/methods/https"]);
    let mut normal = flow(&apt, 200_000);
    normal.bytes_in = 80 * MIB;
    assert!(d.tick(&tick(5.0, vec![normal])).is_empty());
    let mut d = detector();
    let mut upside_down = flow(&apt, 30 * MIB);
    upside_down.bytes_in = 100_000;
    let a = d.tick(&tick(5.0, vec![upside_down]));
    assert_eq!(ids(&a), [RATIO_INVERSION.id]);
    assert!(a[0].reason.contains("normally downloads"), "{}", a[0].reason);
}

#[test]
fn a_flood_of_distinct_programs_keeps_memory_bounded() {
    let mut d = detector();
    // More distinct identities than the entity cap, all live in the same minute.
    let n = super::memory::MAX_ENTITIES as u32 + 500;
    let flows: Vec<FlowObs> = (0..n).map(|i| flow(&proc_(i, 1, &format!("/tmp/f/{i}"), &["x"]), 10)).collect();
    d.tick(&tick(5.0, flows));
    assert!(d.short.map.len() <= super::memory::MAX_ENTITIES, "{}", d.short.map.len());
    assert!(d.long.map.len() <= super::memory::MAX_ENTITIES, "{}", d.long.map.len());
    assert!(d.habits.by_exe.len() <= super::memory::MAX_BASELINES, "{}", d.habits.by_exe.len());
}

#[test]
fn a_flood_of_distinct_destinations_and_jobs_keeps_the_level_tables_bounded_and_counted() {
    let mut d = detector();
    let n = super::memory::MAX_ENTITIES as u32 + 5_000;
    for chunk in 0..(n / 20_000 + 1) {
        let flows: Vec<FlowObs> = (chunk * 20_000..((chunk + 1) * 20_000).min(n))
            .map(|i| {
                let mut f = flow(&proc_(i, 1, &format!("/opt/f{i}"), &["x"]), 10);
                f.domain = Some(format!("h{i}.example{i}.com"));
                f
            })
            .collect();
        d.tick(&tick(5.0 + chunk as f64, flows));
    }
    assert!(d.levels.map.len() <= super::memory::MAX_ENTITIES, "{}", d.levels.map.len());
    assert!(d.evictions() > 0, "evictions are counted");
}

#[test]
fn an_interpreter_started_by_an_office_suite_uploads_for_it() {
    let mut d = detector();
    let mut py = proc_(51, 50, "/usr/bin/python3", &["python3", "-c", "..."]);
    py.ancestors = vec![(50, "/usr/lib/libreoffice/program/soffice.bin".into()), (1, "/sbin/init".into())];
    let a = d.tick(&tick(5.0, vec![flow(&py, 2 * MIB)]));
    assert_eq!(ids(&a), [WATCHED_APP.id]);
    assert!(a[0].reason.contains("started by soffice.bin (pid 50)"), "{}", a[0].reason);
}

#[test]
fn ten_children_of_a_tool_splitting_an_upload_count_as_the_tool() {
    // rclone starting helpers, each sending 1 MiB: each is under the 5 MiB floor.
    let mut d = detector();
    let mut all = Vec::new();
    for i in 0..10 {
        let mut c = proc_(700 + i, 600, "/usr/bin/curl", &["curl", "-T", "part", "https://x"]);
        c.ancestors = vec![(600, "/usr/bin/rclone".into())];
        all.extend(d.tick(&tick(5.0 + i as f64, vec![flow(&c, MIB)])));
    }
    assert_eq!(ids(&all), [EXFIL_TOOL.id], "one alert once the tree crossed the floor");
    assert!(all[0].reason.contains("started by rclone (pid 600)"), "{}", all[0].reason);
    assert!(all[0].bytes_out >= 5 * MIB);
}

#[test]
fn an_upload_command_line_lowers_the_anomaly_bar() {
    // A learned history, then a window at z = 2.5: under the 3σ bar alone.
    let run = |args: &[&str]| {
        let p = proc_(77, 1, "/usr/bin/curl", args);
        let mut d = detector();
        // 30 minutes of ~20 MB a minute.
        let mut t = 0.0;
        for i in 0..30u64 {
            t = 60.0 * (i + 1) as f64;
            let b = 20_000_000 + (i % 5) * 1_000_000;
            assert!(d.tick(&TickInput { t, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, b)] }).is_empty());
        }
        // Pick a volume with z = 2.5 against the model the rule consults first.
        let m = *d.baselines.get(&format!("{}|203.0.113.9", identity(&p))).unwrap();
        let sigma = m.var.sqrt().max(0.5);
        let bytes = ((m.mean + 2.5 * sigma).exp_m1()) as u64;
        assert!(bytes > 50 * MIB, "above the floor: {bytes}");
        d.tick(&TickInput { t: t + 60.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&p, bytes)] })
    };
    // Same argv shape both times (so the same baseline), only the flag differs.
    let quiet = run(&["curl", "-O", "backup", "https://x"]);
    assert!(quiet.is_empty(), "{:?}", quiet.iter().map(|a| (&a.reason, a.score)).collect::<Vec<_>>());
    let a = run(&["curl", "-T", "backup", "https://x"]);
    assert_eq!(ids(&a), [VOLUME_ANOMALY.id]);
    assert!(a[0].score >= 3.0 && a[0].indicators.iter().any(|i| i.contains("curl upload")), "{:?}", a[0]);
}

#[test]
fn a_restart_does_not_re_raise_what_was_already_alerted() {
    let mega = proc_(4242, 100, "/usr/bin/megasync", &["megasync"]);
    let mut before = detector();
    assert_eq!(before.tick(&tick(5.0, vec![flow(&mega, 10 * MIB)])).len(), 1);
    // Through the state file's serialization, as a restart would.
    let saved = serde_json::to_string(&before.alert_memory()).unwrap();
    let mut after = detector();
    after.restore_alert_memory(serde_json::from_str(&saved).unwrap());
    assert!(after.tick(&tick(65.0, vec![flow(&mega, 10 * MIB)])).is_empty(), "still inside the dedup period");
    let later = after.tick(&tick(3700.0, vec![flow(&mega, 10 * MIB)]));
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].suppressed, 1, "the suppressed count carried across the restart");
}

#[test]
fn a_new_program_is_judged_against_the_host_while_it_has_no_history() {
    // 30 minutes of the host's usual uploads (backup.py), then a never-seen
    // program sends 20x that in one window.
    let p = proc_(77, 1, "/usr/bin/python3", &["python3", "backup.py"]);
    let mut d = detector();
    let t = benign_history(&mut d, &p);
    let newcomer = proc_(99, 1, "/tmp/.cache/upd", &["upd"]);
    let a = d.tick(&TickInput { t: t + 60.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&newcomer, 64_000_000)] });
    assert_eq!(ids(&a), [VOLUME_ANOMALY.id]);
    assert!(a[0].reason.contains("its host baseline"), "{}", a[0].reason);
}

#[test]
fn a_new_argv_shape_of_a_known_executable_is_judged_against_the_executable() {
    // python3 backup.py has history; python3 with a new script sends 20x.
    let known = proc_(77, 1, "/usr/bin/python3", &["python3", "backup.py"]);
    let mut d = detector();
    let t = benign_history(&mut d, &known);
    let fresh = proc_(78, 1, "/usr/bin/python3", &["python3", "/tmp/x.py"]);
    let a = d.tick(&TickInput { t: t + 60.0, window_s: 60.0, execs: vec![], dns: vec![], network_users: vec![], flows: vec![flow(&fresh, 64_000_000)] });
    assert_eq!(ids(&a), [VOLUME_ANOMALY.id]);
    assert!(a[0].reason.contains("its executable baseline"), "{}", a[0].reason);
}

#[test]
fn a_renamed_mega_client_is_caught_by_where_it_sends() {
    let mut d = detector();
    let p = proc_(66, 1, "/tmp/.x/backupd", &["backupd", "--quiet"]);
    let mut f = flow(&p, 20 * MIB);
    f.domain = Some("gfs270n122.userstorage.mega.co.nz".into());
    let a = d.tick(&tick(5.0, vec![f]));
    assert_eq!(ids(&a), [EXFIL_TOOL.id]);
    assert!(a[0].reason.contains("belongs to MEGA's storage service") && a[0].reason.contains("userstorage.mega.co.nz"), "{}", a[0].reason);
}

#[test]
fn a_mega_upload_split_across_children_with_different_command_lines_adds_up_by_destination() {
    let mut d = detector();
    let mut alerts = Vec::new();
    // Eight helpers of one parent, 1 MiB each, every one its own identity.
    for i in 0..8u32 {
        let label = format!("part-{}", (b'a' + i as u8) as char);
        let p = proc_(700 + i, 699, "/tmp/.x/helper", &["helper", &label]);
        let mut f = flow(&p, MIB);
        f.domain = Some("gfs270n122.userstorage.mega.co.nz".into());
        alerts.extend(d.tick(&tick(5.0 + i as f64, vec![f])));
    }
    assert_eq!(ids(&alerts), [EXFIL_TOOL.id], "one alert once the parent's children crossed 5 MiB");
    assert!(alerts[0].bytes_out >= 5 * MIB && alerts[0].bytes_out <= 6 * MIB, "{}", alerts[0].bytes_out);
    // Another parent's single 1 MiB helper is not part of that tree.
    let other = proc_(800, 798, "/tmp/.x/helper", &["helper", "solo"]);
    let mut f = flow(&other, MIB);
    f.domain = Some("gfs270n122.userstorage.mega.co.nz".into());
    assert!(d.tick(&tick(20.0, vec![f])).is_empty());
}

#[test]
fn the_first_send_to_a_storage_service_is_an_informational_event_once() {
    let p = proc_(12, 1, "/usr/bin/python3", &["python3", "sync.py"]);
    let other = proc_(5, 1, "/usr/sbin/chronyd", &["chronyd"]);
    let mut d = detector();
    d.tick(&tick(1.0, vec![flow(&other, 100)]));
    let mut f = flow(&p, 100_000);
    f.domain = Some("content.dropboxapi.com".into());
    // During the warm-up (first long window) pairs are learned silently...
    let mut g = f.clone();
    g.process = proc_(13, 1, "/usr/bin/rsync", &["rsync"]);
    assert!(d.tick(&tick(600.0, vec![g.clone()])).is_empty());
    // ...after it, a new pair is an event, once.
    let t = 7.0 * 3600.0;
    let a = d.tick(&tick(t, vec![f.clone()]));
    assert_eq!(ids(&a), [FIRST_STORAGE.id]);
    assert_eq!(a[0].rule.severity, "low");
    assert!(a[0].reason.contains("Dropbox"), "{}", a[0].reason);
    assert!(d.tick(&tick(t + 4000.0, vec![f])).is_empty());
    assert!(d.tick(&tick(t + 5000.0, vec![g])).is_empty(), "learned during the warm-up");
}

#[test]
fn a_container_or_service_on_the_cgroup_allowlist_is_silent() {
    let mut cfg = Config::embedded().detect;
    cfg.allow_cgroups = vec!["cri-containerd-4f1d2e.scope".into()];
    let mut d = Detector::new(cfg);
    let mega = proc_(1, 0, "/usr/bin/megasync", &["megasync"]);
    let mut inside = flow(&mega, 100 * MIB);
    inside.cgroup = Some("/kubepods.slice/kubepods-pod1.slice/cri-containerd-4f1d2e.scope".into());
    assert!(d.tick(&tick(5.0, vec![inside])).is_empty());
    let mut elsewhere = flow(&mega, 100 * MIB);
    elsewhere.cgroup = Some("/user.slice/user-1000.slice".into());
    assert_eq!(ids(&d.tick(&tick(10.0, vec![elsewhere]))), [EXFIL_TOOL.id]);
}

#[test]
fn pods_of_an_allowlisted_namespace_are_silent_and_alerts_carry_the_pod() {
    use crate::container::{Container, Pod};
    let mut cfg = Config::embedded().detect;
    cfg.allow_namespaces = vec!["velero".into()];
    let mut d = Detector::new(cfg);
    let mega = proc_(1, 0, "/usr/bin/megasync", &["megasync"]);
    let in_ns = |ns: &str| Container {
        id: "c1".into(),
        runtime: "containerd".into(),
        name: Some("sync".into()),
        image: None,
        pod: Some(Pod { uid: "u1".into(), name: Some("sync-0".into()), namespace: Some(ns.into()) }),
    };
    let mut backup = flow(&mega, 100 * MIB);
    backup.container = Some(in_ns("velero"));
    assert!(d.tick(&tick(5.0, vec![backup])).is_empty());
    let mut other = flow(&mega, 100 * MIB);
    other.container = Some(in_ns("payments"));
    let a = d.tick(&tick(10.0, vec![other]));
    assert_eq!(ids(&a), [EXFIL_TOOL.id]);
    assert_eq!(a[0].container.as_ref().and_then(|c| c.pod.as_ref()).and_then(|p| p.name.as_deref()), Some("sync-0"));
}
