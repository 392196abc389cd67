//! User names for `user.name`, from the passwd file of the system the agent
//! runs on (the host's; a DaemonSet sees its own image's unless the host's
//! is mounted). Read again when the file changes, checked at most once a
//! minute: the tick asks for a name per record.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

const RECHECK: Duration = Duration::from_secs(60);
/// A passwd file past this size is not read (it is not one).
const MAX_BYTES: u64 = 16 << 20;

pub struct Users {
    path: PathBuf,
    names: HashMap<u32, String>,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Default for Users {
    fn default() -> Self {
        Self::new("/etc/passwd")
    }
}

impl Users {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), names: HashMap::new(), modified: None, checked: None }
    }

    /// Re-read the file if it changed (at most once per `RECHECK`).
    pub fn refresh(&mut self, now: Instant) {
        if self.checked.is_some_and(|t| now.duration_since(t) < RECHECK) {
            return;
        }
        self.checked = Some(now);
        let Ok(meta) = std::fs::metadata(&self.path) else {
            self.names.clear();
            return;
        };
        let modified = meta.modified().ok();
        if modified.is_some() && modified == self.modified || meta.len() > MAX_BYTES {
            return;
        }
        self.modified = modified;
        self.names = std::fs::read(&self.path).map(|b| parse(&String::from_utf8_lossy(&b))).unwrap_or_default();
    }

    pub fn name(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
    }
}

/// `name:x:uid:...` lines; the first name for a uid wins (as getpwuid does).
fn parse(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else { continue };
        let Ok(uid) = uid.parse::<u32>() else { continue };
        if !name.is_empty() && !name.starts_with('#') && !name.starts_with('+') && !name.starts_with('-') {
            names.entry(uid).or_insert_with(|| name.chars().take(64).collect());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_passwd_lines_and_junk_is_skipped() {
        let n = parse("root:x:0:0:root:/root:/bin/bash\n# comment:x:5\nbad line\n+nis::::\nalice:x:1000:1000::/home/a:/bin/sh\ntoor:x:0:0::/:/bin/sh\nbob:x:notanumber:1\n");
        assert_eq!(n.get(&0).map(String::as_str), Some("root"));
        assert_eq!(n.get(&1000).map(String::as_str), Some("alice"));
        assert_eq!(n.len(), 2);
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_missing_one_names_nobody() {
        let dir = std::env::temp_dir().join(format!("sluice-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("passwd");
        std::fs::write(&path, "alice:x:1000:1000::/:/bin/sh\n").unwrap();
        let mut u = Users::new(&path);
        let t0 = Instant::now();
        u.refresh(t0);
        assert_eq!(u.name(1000), Some("alice"));
        std::fs::write(&path, "carol:x:1000:1000::/:/bin/sh\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        u.refresh(t0 + Duration::from_secs(1));
        assert_eq!(u.name(1000), Some("alice"), "not re-checked within a minute");
        u.refresh(t0 + RECHECK);
        assert_eq!(u.name(1000), Some("carol"));
        std::fs::remove_dir_all(&dir).unwrap();
        u.refresh(t0 + 2 * RECHECK);
        assert_eq!(u.name(1000), None);
    }
}
