//! `--output file:PATH`: records appended to a file that is rotated by size,
//! as logrotate's `copytruncate`-free scheme does it: `PATH` -> `PATH.1` ->
//! `PATH.2` ... up to `keep`, the oldest deleted. The sink hands over whole
//! lines, one `write` each, so a rotation never splits a record.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

pub struct RotatingFile {
    path: PathBuf,
    max: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
    pub rotations: u64,
}

impl RotatingFile {
    /// Open `path` for appending (created 0640: alerts can name what users do).
    pub fn open(path: &Path, max: u64, keep: u32) -> Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self { path: path.to_path_buf(), max, keep, file: BufWriter::new(file), size, rotations: 0 })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| -> PathBuf {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            p.into()
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            // Oldest first, so nothing is overwritten before it moved.
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = BufWriter::new(open_append(&self.path).map_err(std::io::Error::other)?);
        self.size = 0;
        self.rotations += 1;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening the output file {}", path.display()))
}

impl Write for RotatingFile {
    /// Takes all of `buf` (one record line from the sink) or fails.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_line_boundaries_and_keeps_n() {
        let d = std::env::temp_dir().join(format!("sluice-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("alerts.json");
        let mut f = RotatingFile::open(&p, 100, 2).unwrap();
        let line = format!("{}\n", "x".repeat(39)); // 40 bytes: two lines per file
        for _ in 0..9 {
            f.write_all(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert_eq!(f.rotations, 4);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&p), line, "the newest record is in the current file");
        assert_eq!(read(&d.join("alerts.json.1")), line.repeat(2));
        assert_eq!(read(&d.join("alerts.json.2")), line.repeat(2));
        assert!(!d.join("alerts.json.3").exists(), "only `keep` rotated files");
        // Reopening appends to what is there.
        drop(f);
        let mut f = RotatingFile::open(&p, 100, 2).unwrap();
        f.write_all(line.as_bytes()).unwrap();
        f.flush().unwrap();
        assert_eq!(read(&p), line.repeat(2));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unwritable_path_is_a_clear_error() {
        let e = RotatingFile::open(Path::new("/proc/sluice-no/alerts.json"), 100, 1).err().unwrap();
        assert!(format!("{e:#}").contains("opening the output file /proc/sluice-no/alerts.json"), "{e:#}");
    }
}
