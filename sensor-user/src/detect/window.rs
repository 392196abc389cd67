//! Sliding sums over time in fixed buckets: bounded memory per key whatever the
//! traffic (span / bucket entries), and a running total that is current at every
//! tick, so a threshold fires the tick it is crossed, not when a window closes.

use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq)]
pub struct SlidingSum {
    bucket_s: f64,
    span_s: f64,
    /// (bucket start, total, time of its latest record) oldest first. A record at
    /// time t carries bytes observed up to t (a tick's end), so a bucket leaves
    /// the span once its latest record is at or before `now - span`.
    buckets: VecDeque<(f64, u64, f64)>,
    total: u64,
    /// Largest single bucket still inside the span.
    pub peak_bucket: u64,
}

impl SlidingSum {
    pub fn new(bucket_s: f64, span_s: f64) -> Self {
        Self { bucket_s: bucket_s.max(0.001), span_s, buckets: VecDeque::new(), total: 0, peak_bucket: 0 }
    }

    /// Drop buckets that fell out of the span ending at `now`.
    pub fn expire(&mut self, now: f64) {
        let mut changed = false;
        while let Some(&(_, v, last)) = self.buckets.front() {
            if last <= now - self.span_s {
                self.buckets.pop_front();
                self.total -= v;
                changed = true;
            } else {
                break;
            }
        }
        if changed {
            self.peak_bucket = self.buckets.iter().map(|b| b.1).max().unwrap_or(0);
        }
    }

    pub fn add(&mut self, now: f64, v: u64) {
        self.expire(now);
        let start = (now / self.bucket_s).floor() * self.bucket_s;
        match self.buckets.back_mut() {
            Some(b) if b.0 == start => {
                b.1 += v;
                b.2 = now;
            }
            _ => self.buckets.push_back((start, v, now)),
        }
        self.total += v;
        self.peak_bucket = self.peak_bucket.max(self.buckets.back().map(|b| b.1).unwrap_or(0));
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_the_span_and_forgets_the_rest() {
        let mut w = SlidingSum::new(5.0, 60.0);
        w.add(0.0, 100);
        w.add(30.0, 50);
        assert_eq!(w.total(), 150);
        w.add(59.9, 1);
        assert_eq!(w.total(), 151, "recorded at 0, inside (-0.1, 59.9]: kept");
        w.add(60.0, 1);
        assert_eq!(w.total(), 52, "recorded at 0, outside (0, 60]: dropped");
        w.expire(1000.0);
        assert_eq!(w.total(), 0);
        assert!(w.is_empty());
    }

    #[test]
    fn a_tick_as_long_as_the_window_sums_only_itself() {
        // 60 s ticks, 60 s window: each tick's total is the window's.
        let mut w = SlidingSum::new(60.0, 60.0);
        w.add(60.0, 20);
        w.add(120.0, 90);
        assert_eq!(w.total(), 90);
    }

    #[test]
    fn memory_is_bounded_by_span_over_bucket() {
        let mut w = SlidingSum::new(300.0, 6.0 * 3600.0);
        for t in 0..100_000 {
            w.add(t as f64, 1);
        }
        assert!(w.buckets.len() <= 73, "{}", w.buckets.len());
        assert_eq!(w.peak_bucket, 300);
    }
}
