//! Records leave through a writer thread and a bounded queue, so a slow or
//! stuck consumer of stdout (a paused `| less`, a wedged log shipper) never
//! stalls the tick loop that drains the kernel. When the queue is full, or the
//! output has failed (stdout closed), records are counted and dropped, and the
//! agent says so on stderr and in its metrics.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
}

/// The `Write` end the sink writes to: each `write` is one whole record.
pub struct Spool {
    tx: Option<SyncSender<Vec<u8>>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Spool {
    /// Start the writer thread over `out`, with room for `bound` records.
    pub fn start(out: Box<dyn Write + Send>, bound: usize) -> std::io::Result<Spool> {
        let (tx, rx) = sync_channel(bound);
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("sluice-output".into()).spawn(move || writer(out, rx, &s))?;
        Ok(Spool { tx: Some(tx), shared, thread: Some(thread) })
    }

    /// Records dropped so far (queue full or output failed).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Why the output failed, once it has.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().ok().and_then(|e| e.clone())
    }

    /// Stop taking records and give the writer up to `wait` to finish the queue
    /// (a consumer that never reads again must not hold up shutdown).
    pub fn close(&mut self, wait: Duration) -> bool {
        self.tx = None;
        let Some(t) = self.thread.take() else { return true };
        let deadline = Instant::now() + wait;
        while !t.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = t.join();
        true
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close(Duration::from_secs(2));
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Full (a slow consumer) or disconnected (the writer is gone): a drop.
        let queued = !self.shared.failed.load(Ordering::Relaxed)
            && self.tx.as_ref().is_some_and(|tx| tx.try_send(buf.to_vec()).is_ok());
        if !queued {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    /// The writer flushes whenever its queue runs empty.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn writer(mut out: Box<dyn Write + Send>, rx: Receiver<Vec<u8>>, s: &Shared) {
    let fail = |e: std::io::Error, s: &Shared| {
        s.failed.store(true, Ordering::Relaxed);
        if let Ok(mut slot) = s.error.lock() {
            slot.get_or_insert_with(|| e.to_string());
        }
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write what is queued, then flush once caught up: batched under load,
        // prompt when quiet.
        while let Some(line) = next.take() {
            if s.failed.load(Ordering::Relaxed) {
                s.dropped.fetch_add(1, Ordering::Relaxed);
            } else if let Err(e) = out.write_all(&line) {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                fail(e, s);
            }
            next = rx.try_recv().ok();
        }
        if !s.failed.load(Ordering::Relaxed) {
            if let Err(e) = out.flush() {
                fail(e, s);
            }
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until released, then fails or collects.
    struct Gate {
        open: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u8>>>,
        fail: bool,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            while !self.open.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            if self.fail {
                return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_consumer_costs_drops_not_a_stall() {
        let open = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut s = Spool::start(Box::new(Gate { open: open.clone(), got: got.clone(), fail: false }), 4).unwrap();
        let t = Instant::now();
        for i in 0..100 {
            s.write_all(format!("{i}\n").as_bytes()).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(5), "writes must not wait for the consumer");
        // The writer holds one record, the queue four: the rest are dropped.
        assert!((94..=96).contains(&s.dropped()), "dropped {}", s.dropped());
        open.store(true, Ordering::Relaxed);
        assert!(s.close(Duration::from_secs(5)));
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("0\n"), "{text}");
        assert_eq!(text.lines().count() as u64 + s.dropped(), 100);
    }

    #[test]
    fn a_closed_output_is_said_once_and_counted() {
        let open = Arc::new(AtomicBool::new(true));
        let mut s = Spool::start(Box::new(Gate { open, got: Default::default(), fail: true }), 64).unwrap();
        for _ in 0..10 {
            s.write_all(b"x\n").unwrap();
        }
        assert!(s.close(Duration::from_secs(5)));
        assert_eq!(s.dropped(), 10);
        assert!(s.error().unwrap().contains("roken pipe"), "{:?}", s.error());
    }

    #[test]
    fn shutdown_does_not_wait_forever_for_a_stuck_consumer() {
        let open = Arc::new(AtomicBool::new(false));
        let mut s = Spool::start(Box::new(Gate { open: open.clone(), got: Default::default(), fail: false }), 4).unwrap();
        s.write_all(b"x\n").unwrap();
        assert!(!s.close(Duration::from_millis(100)), "a stuck consumer is left behind");
        open.store(true, Ordering::Relaxed);
    }
}
