//! Cluster accounting: when the logic a cluster's cores share (L2, snoop control) is up, in a
//! cluster idle state, or off, derived from its cores' timelines.
//!
//! The cluster is **up** while any of its cores runs or rests in a state that keeps it up (WFI
//! or any core state but the deepest: the cluster can only power down once every core has
//! powered down, as PSCI's cluster states require). While every core rests in its deepest state
//! or is off, the cluster is **down**. A down stretch is booked as a whole when it ends:
//!
//! - every core off throughout: the cluster is **off** (PSCI powers a cluster down when its last
//!   core calls `CPU_OFF`);
//! - otherwise the deepest cluster idle state whose minimum residency the stretch covers, as an
//!   OS-initiated last-man selection with a correct prediction of the cluster's next wake-up
//!   would pick (the earliest of its cores' timers; the simulator's core predictions are those
//!   timers); a stretch shorter than every cluster state keeps the cluster up.
//!
//! Each entry into a cluster state or off costs its break-even energy, as a core's do: what the
//! state saves against the active cluster over its minimum residency (off: over the deepest
//! cluster state's).
//!
//! The cores' intervals arrive in time order per core, but the cores are not in step: a cluster
//! can be judged only up to the earliest point every core of it has reached, so the books keep
//! each core's intervals after that point until the others catch up. A hole in a core's
//! timeline counts as up.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use vcpu_runtime::ids::CoreId;
use vcpu_runtime::time::{Instant, Nanos};

use crate::energy::Energy;
use crate::model::{ClusterState, EnergyModel};

/// What a core's interval means for its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Running, or resting in a state that keeps the cluster up.
    Up,
    /// Resting in its deepest state: the cluster may go down.
    Rest,
    Off,
}

#[derive(Clone, Copy, Debug)]
struct Piece {
    from: Instant,
    to: Instant,
    hold: Hold,
}

/// One cluster's books.
#[derive(Clone, Debug)]
struct ClusterBook {
    /// Per core of the cluster (same order): intervals not yet swept.
    pending: Vec<VecDeque<Piece>>,
    /// Per core of the cluster: the end of its last interval.
    until: Vec<Instant>,
    /// The cluster's state is booked up to here.
    swept: Instant,
    /// A down stretch in progress: since when, and whether every core was off all along.
    down: Option<(Instant, bool)>,
    /// Slots: active, each cluster idle state, off.
    residency: Vec<Nanos>,
    entries: Vec<u64>,
}

/// The books of every cluster of a model.
#[derive(Clone, Debug)]
pub(crate) struct Clusters {
    books: Vec<ClusterBook>,
    /// Per core: its cluster and its position in that cluster's lists.
    place: Vec<(usize, usize)>,
}

impl Clusters {
    pub(crate) fn new(model: &EnergyModel, start: Instant) -> Clusters {
        let mut place = vec![(0, 0); model.core_count()];
        let books = (0..model.clusters().len())
            .map(|k| {
                let cores: Vec<usize> = model.cores_of_cluster(k).iter().map(|c| c.index()).collect();
                for (pos, &c) in cores.iter().enumerate() {
                    place[c] = (k, pos);
                }
                let slots = model.clusters()[k].idle_states.len() + 2;
                ClusterBook {
                    pending: vec![VecDeque::new(); cores.len()],
                    until: vec![start; cores.len()],
                    swept: start,
                    down: None,
                    residency: vec![Nanos::ZERO; slots],
                    entries: vec![0; slots],
                }
            })
            .collect();
        Clusters { books, place }
    }

    /// `core` was in a state that means `hold` for its cluster from `from` to `to` (after
    /// anything booked for it before).
    pub(crate) fn push(&mut self, model: &EnergyModel, core: CoreId, hold: Hold, from: Instant, to: Instant) {
        let (k, pos) = self.place[core.index()];
        let book = &mut self.books[k];
        if to > from {
            book.pending[pos].push_back(Piece { from, to, hold });
        }
        book.until[pos] = book.until[pos].max(to);
        book.sweep(model, k);
    }

    /// Time cluster `k` spent in `state` (a down stretch still open counts up to where the
    /// cluster is booked).
    pub(crate) fn residency(&self, model: &EnergyModel, k: usize, state: ClusterState) -> Nanos {
        let book = &self.books[k];
        let mut residency = book.residency.clone();
        let mut entries = book.entries.clone();
        book.close_into(model, k, book.swept, &mut residency, &mut entries);
        residency[slot(model, k, state)]
    }

    /// The energy of cluster `k`: each state's power over its residency and the break-even
    /// cost of every entry.
    pub(crate) fn energy(&self, model: &EnergyModel, k: usize) -> Energy {
        let book = &self.books[k];
        let mut residency = book.residency.clone();
        let mut entries = book.entries.clone();
        book.close_into(model, k, book.swept, &mut residency, &mut entries);
        let cluster = &model.clusters()[k];
        let active = u64::from(cluster.active_power_uw);
        let states = cluster.idle_states.len();
        let mut e = Energy::from_power(active, residency[0]);
        for (i, s) in cluster.idle_states.iter().enumerate() {
            let saved = active.saturating_sub(u64::from(s.power_uw));
            let break_even = Nanos::from_micros(u64::from(s.min_residency_us));
            e += Energy::from_power(u64::from(s.power_uw), residency[1 + i]);
            e += Energy(Energy::from_power(saved, break_even).0 * u128::from(entries[1 + i]));
        }
        let off = u64::from(cluster.off_power_uw);
        e += Energy::from_power(off, residency[states + 1]);
        e += Energy(
            Energy::from_power(active.saturating_sub(off), off_break_even(model, k)).0
                * u128::from(entries[states + 1]),
        );
        e
    }

    /// Where cluster `k` is booked up to.
    #[cfg(test)]
    pub(crate) fn swept(&self, k: usize) -> Instant {
        self.books[k].swept
    }
}

/// The break-even time of powering a cluster down and up: its deepest idle state's minimum
/// residency (a cluster without idle states: none known, 0).
fn off_break_even(model: &EnergyModel, k: usize) -> Nanos {
    model.clusters()[k].idle_states.last().map_or(Nanos::ZERO, |s| Nanos::from_micros(u64::from(s.min_residency_us)))
}

fn slot(model: &EnergyModel, k: usize, state: ClusterState) -> usize {
    let states = model.clusters()[k].idle_states.len();
    match state {
        ClusterState::Active => 0,
        ClusterState::Idle(i) => {
            assert!(i < states, "cluster {k} has no idle state {i}");
            1 + i
        }
        ClusterState::Off => states + 1,
    }
}

impl ClusterBook {
    /// Books the cluster from `swept` up to where every one of its cores has been booked.
    fn sweep(&mut self, model: &EnergyModel, k: usize) {
        let end = self.until.iter().copied().min().unwrap_or(self.swept);
        while self.swept < end {
            let at = self.swept;
            let mut seg_end = end;
            let mut up = false;
            let mut all_off = true;
            for q in &mut self.pending {
                while q.front().is_some_and(|p| p.to <= at) {
                    q.pop_front();
                }
                match q.front() {
                    Some(p) if p.from <= at => {
                        seg_end = seg_end.min(p.to);
                        match p.hold {
                            Hold::Up => up = true,
                            Hold::Rest => all_off = false,
                            Hold::Off => {}
                        }
                    }
                    // A hole before the next interval: up until it.
                    Some(p) => {
                        seg_end = seg_end.min(p.from);
                        up = true;
                    }
                    None => up = true,
                }
            }
            if up {
                if let Some((since, off)) = self.down.take() {
                    self.close(model, k, since, off, at);
                }
                self.residency[0] += seg_end - at;
            } else {
                self.down = Some(match self.down {
                    Some((since, off)) => (since, off && all_off),
                    None => (at, all_off),
                });
            }
            self.swept = seg_end;
        }
    }

    /// Books the down stretch from `since` to `to`.
    fn close(&mut self, model: &EnergyModel, k: usize, since: Instant, all_off: bool, to: Instant) {
        let (mut residency, mut entries) = (core::mem::take(&mut self.residency), core::mem::take(&mut self.entries));
        book_down(model, k, since, all_off, to, &mut residency, &mut entries);
        self.residency = residency;
        self.entries = entries;
    }

    /// Adds the open down stretch, if any, as if it ended at `to`.
    fn close_into(&self, model: &EnergyModel, k: usize, to: Instant, residency: &mut [Nanos], entries: &mut [u64]) {
        if let Some((since, all_off)) = self.down {
            book_down(model, k, since, all_off, to, residency, entries);
        }
    }
}

fn book_down(
    model: &EnergyModel,
    k: usize,
    since: Instant,
    all_off: bool,
    to: Instant,
    residency: &mut [Nanos],
    entries: &mut [u64],
) {
    let length = to - since;
    if length == Nanos::ZERO {
        return;
    }
    let s = if all_off {
        slot(model, k, ClusterState::Off)
    } else {
        match model.deepest_cluster_state_for(k, length) {
            Some(i) => slot(model, k, ClusterState::Idle(i)),
            None => {
                residency[0] += length;
                return;
            }
        }
    };
    residency[s] += length;
    entries[s] += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn at(ms: u64) -> Instant {
        Instant(ms * MS)
    }

    #[test]
    fn a_cluster_is_down_only_while_every_core_rests_deeply() {
        // phone-dual: cluster 47 mW, cluster-sleep 0 µW after 2.7 ms.
        let m = EnergyModel::builtin("phone-dual").unwrap();
        let mut c = Clusters::new(&m, Instant::ZERO);
        let (c0, c1) = (CoreId(0), CoreId(1));
        // Core 0 runs 0–2, rests deeply 2–10; core 1 rests deeply 0–6, is in WFI 6–7, deep 7–10.
        c.push(&m, c0, Hold::Up, at(0), at(2));
        c.push(&m, c1, Hold::Rest, at(0), at(6));
        assert_eq!(c.swept(0), at(2), "judged only as far as both cores are booked");
        c.push(&m, c1, Hold::Up, at(6), at(7));
        c.push(&m, c1, Hold::Rest, at(7), at(10));
        c.push(&m, c0, Hold::Rest, at(2), at(10));
        assert_eq!(c.swept(0), at(10));
        // Up 0–2 and 6–7; down 2–6 (4 ms: cluster-sleep) and 7–10 (3 ms: cluster-sleep).
        assert_eq!(c.residency(&m, 0, ClusterState::Active), Nanos::from_millis(3));
        assert_eq!(c.residency(&m, 0, ClusterState::Idle(0)), Nanos::from_millis(7));
        // 47 mW × 3 ms, and two entries that each cost 47 mW × 2.7 ms.
        assert_eq!(c.energy(&m, 0).as_nanojoules(), 141_000 + 2 * 126_900);
    }

    #[test]
    fn short_down_stretches_keep_the_cluster_up_and_all_off_is_off() {
        let m = EnergyModel::builtin("phone-dual").unwrap();
        let mut c = Clusters::new(&m, Instant::ZERO);
        // Both rest 0–2 ms: shorter than cluster-sleep's 2.7 ms.
        c.push(&m, CoreId(0), Hold::Rest, at(0), at(2));
        c.push(&m, CoreId(1), Hold::Rest, at(0), at(2));
        c.push(&m, CoreId(0), Hold::Up, at(2), at(3));
        c.push(&m, CoreId(1), Hold::Up, at(2), at(3));
        assert_eq!(c.residency(&m, 0, ClusterState::Active), Nanos::from_millis(3));
        // Both off 3–50: the cluster is off; the open stretch counts as far as it is booked.
        c.push(&m, CoreId(0), Hold::Off, at(3), at(50));
        c.push(&m, CoreId(1), Hold::Off, at(3), at(40));
        assert_eq!(c.residency(&m, 0, ClusterState::Off), Nanos::from_millis(37));
        // One core off, the other resting deeply: a cluster idle state, not off.
        c.push(&m, CoreId(1), Hold::Rest, at(40), at(60));
        c.push(&m, CoreId(0), Hold::Up, at(50), at(60));
        assert_eq!(c.residency(&m, 0, ClusterState::Off), Nanos::ZERO);
        assert_eq!(c.residency(&m, 0, ClusterState::Idle(0)), Nanos::from_millis(47));
        assert_eq!(c.residency(&m, 0, ClusterState::Active), Nanos::from_millis(13));
    }

    #[test]
    fn a_hole_counts_as_up() {
        let m = EnergyModel::builtin("phone-dual").unwrap();
        let mut c = Clusters::new(&m, Instant::ZERO);
        c.push(&m, CoreId(0), Hold::Rest, at(0), at(10));
        c.push(&m, CoreId(1), Hold::Rest, at(0), at(4));
        c.push(&m, CoreId(1), Hold::Rest, at(5), at(10));
        assert_eq!(c.residency(&m, 0, ClusterState::Active), Nanos::from_millis(1));
        assert_eq!(c.residency(&m, 0, ClusterState::Idle(0)), Nanos::from_millis(9));
    }
}
