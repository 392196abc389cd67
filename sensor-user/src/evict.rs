//! One way to keep a table bounded. Tables here are keyed by names the
//! traffic or its senders control (executables, destinations, sockets), so a
//! full one must shed entries cheaply: the `n` oldest go in one pass
//! (`select_nth`, not a sort, and not one per insert, which made a full table
//! quadratic), so inserts stay amortized O(1).

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash},
};

/// Remove the `n` entries with the smallest `age`; entries `age` gives `None`
/// for (pinned keys) are never removed. Returns how many went.
pub fn oldest<K, V, S>(map: &mut HashMap<K, V, S>, n: usize, age: impl Fn(&K, &V) -> Option<f64>) -> usize
where
    K: Eq + Hash + Clone,
    S: BuildHasher,
{
    let mut by_age: Vec<(f64, K)> = map.iter().filter_map(|(k, v)| age(k, v).map(|a| (a, k.clone()))).collect();
    let n = n.min(by_age.len());
    if n == 0 {
        return 0;
    }
    by_age.select_nth_unstable_by(n - 1, |a, b| a.0.total_cmp(&b.0));
    for (_, k) in by_age.into_iter().take(n) {
        map.remove(&k);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_and_pinned_ones_stay() {
        let mut m: HashMap<&str, f64> = [("a", 1.0), ("b", 5.0), ("c", 2.0), ("d", 0.5)].into_iter().collect();
        assert_eq!(oldest(&mut m, 2, |k, t| (*k != "d").then_some(*t)), 2, "d is pinned");
        let mut left: Vec<_> = m.keys().copied().collect();
        left.sort();
        assert_eq!(left, ["b", "d"]);
        assert_eq!(oldest(&mut m, 10, |_, t| Some(*t)), 2, "at most what is there");
        assert_eq!(oldest(&mut m, 1, |_, t| Some(*t)), 0);
    }
}
