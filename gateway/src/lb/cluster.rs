//! Which cluster serves an outbound call, best first. A pinned target (a per-cluster name, or an
//! honoured `x-isthmus-cluster`) gets only its cluster. Else the first pick is drawn either from
//! the policy's split (its healthy clusters, by split weight) or, without a healthy split
//! cluster, by failover tiers (this cluster, the caller's region, other regions; Envoy's priority
//! load); the rest of the order is retry candidates, unhealthy clusters last (panic mode).
//!
//! One [`Choice`] is the start of both [`cluster_order`] (the request path draws from it) and
//! [`first_pick_shares`] (explain reports its exact probabilities), so the two agree by
//! construction. Pure: the verdicts and the random source come in as arguments.

use crate::health::Verdict;
use crate::policy::ServicePolicy;
use crate::table::{Backend, Target};

use super::weighted_index;

/// Failover tiers: this cluster, the caller's region, other regions.
const TIERS: usize = 3;

/// Whether a cluster can be tried at all: it has a gateway and its exporter reports a healthy
/// endpoint.
pub fn usable(b: &Backend, my_cluster: &str) -> bool {
    (!b.gateways.is_empty() || &*b.cluster == my_cluster) && b.healthy > 0
}

/// The failover tier of a cluster: 0 this cluster, 1 the caller's region, 2 other regions.
pub fn tier(b: &Backend, my_cluster: &str, my_region: &str) -> usize {
    if &*b.cluster == my_cluster {
        0
    } else if &*b.region == my_region {
        1
    } else {
        2
    }
}

/// The share of traffic each tier takes, tier 0 first (pure; Envoy's priority load with an
/// explicit threshold). A tier whose healthy share (slow-start factors count fractionally) is
/// at least `threshold` takes everything still unassigned; below it, it takes
/// `share / threshold` of what is left and the rest spills to the next tier. When even the
/// last tier cannot take it all, the loads are scaled up to sum to 1 over the healthy tiers.
pub fn tier_loads(shares: &[f64], threshold: f64) -> Vec<f64> {
    let mut loads = Vec::with_capacity(shares.len());
    let mut left = 1.0;
    for &share in shares {
        let take = if threshold <= 0.0 || share >= threshold {
            1.0
        } else {
            share / threshold
        };
        let load = left * take;
        loads.push(load);
        left -= load;
    }
    let total: f64 = loads.iter().sum();
    if total > 0.0 && total < 1.0 {
        for l in &mut loads {
            *l /= total;
        }
    }
    loads
}

/// A weight as drawn: `weight × factor` in thousandths, never 0 (a cluster in a pool is never
/// impossible, only unlikely).
fn draw_weight(weight: u32, factor: f64) -> u64 {
    ((f64::from(weight) * factor * 1000.0) as u64).max(1)
}

/// A cluster that may be chosen (usable, inside the fence, not dropped).
#[derive(Debug, Clone, Copy)]
struct Candidate<'a> {
    backend: &'a Backend,
    verdict: Verdict,
    tier: usize,
    /// The policy's split weight for it (0: not in the split).
    split: u32,
}

impl Candidate<'_> {
    /// Its weight among the clusters of its tier: healthy ones by slow-start factor, unhealthy
    /// ones (panic mode) at full weight.
    fn tier_weight(&self) -> u64 {
        let factor = if self.verdict.healthy {
            self.verdict.factor
        } else {
            1.0
        };
        draw_weight(self.backend.weight, factor)
    }

    fn split_weight(&self) -> u64 {
        draw_weight(self.split, self.verdict.factor)
    }
}

/// How the first pick is drawn.
#[derive(Debug)]
enum FirstPick {
    /// Among these healthy split clusters (indices of candidates), by split weight.
    Split(Vec<usize>),
    /// A tier by these loads, then by exporter weight within it; when every load is zero
    /// (nothing healthy), the first non-empty retry group (panic mode).
    Tiers([f64; TIERS]),
}

/// A pool to draw from: `(candidate index, weight)`.
type Group = Vec<(usize, u64)>;

/// The clusters that may be chosen for one call and how the first is drawn.
#[derive(Debug)]
struct Choice<'a> {
    candidates: Vec<Candidate<'a>>,
    first: FirstPick,
}

impl<'a> Choice<'a> {
    fn new(
        target: &'a Target,
        my_cluster: &str,
        my_region: &str,
        policy: &ServicePolicy,
        verdict: impl Fn(&Backend) -> Verdict,
    ) -> Self {
        let fenced_in = |b: &Backend| !policy.fences_out(&b.region);
        let candidates: Vec<Candidate<'a>> = target
            .import
            .backends
            .iter()
            .filter(|b| usable(b, my_cluster) && fenced_in(b))
            .map(|b| Candidate {
                backend: b,
                verdict: verdict(b),
                tier: tier(b, my_cluster, my_region),
                split: policy
                    .split
                    .as_ref()
                    .and_then(|s| s.weight(&b.cluster))
                    .unwrap_or(0),
            })
            .filter(|c| !c.verdict.dropped)
            .collect();
        let split: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].verdict.healthy && candidates[i].split > 0)
            .collect();
        if !split.is_empty() {
            return Self {
                candidates,
                first: FirstPick::Split(split),
            };
        }
        let mut shares = [0.0f64; TIERS];
        let mut sizes = [0usize; TIERS];
        for c in &candidates {
            sizes[c.tier] += 1;
            if c.verdict.healthy {
                shares[c.tier] += c.verdict.factor;
            }
        }
        for t in 0..TIERS {
            if sizes[t] > 0 {
                shares[t] /= sizes[t] as f64;
            }
        }
        let mut loads = [0.0; TIERS];
        loads.copy_from_slice(&tier_loads(&shares, policy.threshold));
        Self {
            candidates,
            first: FirstPick::Tiers(loads),
        }
    }

    /// The split clusters the first pick is drawn from, by split weight.
    fn split_group(&self, pool: &[usize]) -> Group {
        pool.iter()
            .map(|&i| (i, self.candidates[i].split_weight()))
            .collect()
    }

    /// The clusters of one tier with this health, by tier weight.
    fn tier_group(&self, t: usize, healthy: bool) -> Group {
        (0..self.candidates.len())
            .filter(|&i| {
                let c = &self.candidates[i];
                c.tier == t && c.verdict.healthy == healthy
            })
            .map(|i| (i, self.candidates[i].tier_weight()))
            .collect()
    }

    /// What follows the first pick: the healthy clusters in tier order, then the unhealthy ones
    /// in tier order (panic mode: a mesh-wide false alarm never becomes a total outage).
    fn retry_groups(&self) -> impl Iterator<Item = Group> + '_ {
        [true, false]
            .into_iter()
            .flat_map(move |healthy| (0..TIERS).map(move |t| self.tier_group(t, healthy)))
    }

    /// The probability that each candidate is the first pick.
    fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.candidates.len()];
        let mut spread = |mass: f64, group: &Group| {
            let total: u64 = group.iter().map(|(_, w)| w).sum();
            for (i, w) in group {
                shares[*i] += mass * *w as f64 / total as f64;
            }
        };
        match &self.first {
            FirstPick::Split(pool) => spread(1.0, &self.split_group(pool)),
            FirstPick::Tiers(loads) if loads.iter().any(|l| *l > 0.0) => {
                for (t, load) in loads.iter().enumerate() {
                    if *load > 0.0 {
                        spread(*load, &self.tier_group(t, true));
                    }
                }
            }
            FirstPick::Tiers(_) => {
                if let Some(group) = self.retry_groups().find(|g| !g.is_empty()) {
                    spread(1.0, &group);
                }
            }
        }
        shares
    }

    /// Lays the candidates out group by group, each group's members (not placed yet) in the
    /// order `pick` draws them (`pick` gets what remains of the group, answers an index).
    fn arrange(
        &self,
        groups: impl Iterator<Item = Group>,
        mut pick: impl FnMut(&[(usize, u64)]) -> usize,
    ) -> Vec<&'a Backend> {
        let mut placed = vec![false; self.candidates.len()];
        let mut out = Vec::with_capacity(self.candidates.len());
        for group in groups {
            let mut pool: Group = group.into_iter().filter(|(i, _)| !placed[*i]).collect();
            while !pool.is_empty() {
                let at = pick(&pool).min(pool.len() - 1);
                let (i, _) = pool.swap_remove(at);
                placed[i] = true;
                out.push(self.candidates[i].backend);
            }
        }
        out
    }
}

/// The backends a pinned target may use: its cluster, when usable.
fn pinned<'a>(target: &'a Target, cluster: &str, my_cluster: &str) -> Vec<&'a Backend> {
    target
        .import
        .backends
        .iter()
        .filter(|b| &*b.cluster == cluster && usable(b, my_cluster))
        .collect()
}

/// The clusters to try for `target`, best first. A pinned target gets only its cluster. Else:
/// clusters outside the policy's fence are never chosen; the first pick is drawn from the
/// policy's healthy split clusters by split weight × slow-start factor (renormalised over the
/// healthy ones), or — with no split, or none of its clusters healthy — by the tier loads and,
/// within a tier, the exporters' weights times the slow-start factor. The rest follow as retry
/// candidates: the other split clusters, then the healthy ones in tier order, then the
/// unhealthy ones (panic mode).
pub fn cluster_order<'a>(
    target: &'a Target,
    my_cluster: &str,
    my_region: &str,
    policy: &ServicePolicy,
    verdict: impl Fn(&Backend) -> Verdict,
    mut rand: impl FnMut() -> u64,
) -> Vec<&'a Backend> {
    if let Some(cluster) = &target.pinned {
        return pinned(target, cluster, my_cluster);
    }
    let choice = Choice::new(target, my_cluster, my_region, policy, verdict);
    if choice.candidates.is_empty() {
        return Vec::new();
    }
    let first: Option<Group> = match &choice.first {
        FirstPick::Split(pool) => Some(choice.split_group(pool)),
        FirstPick::Tiers(loads) => {
            let mut point = super::unit(rand());
            let mut drawn = None;
            for (t, load) in loads.iter().enumerate() {
                if *load > 0.0 && point < *load {
                    drawn = Some(t);
                    break;
                }
                point -= load;
            }
            // Rounding may leave the point just past the last load.
            drawn
                .or_else(|| loads.iter().rposition(|l| *l > 0.0))
                .map(|t| choice.tier_group(t, true))
        }
    };
    choice.arrange(first.into_iter().chain(choice.retry_groups()), |pool| {
        weighted_index(pool.iter().map(|(_, w)| *w), rand()).unwrap_or(0)
    })
}

/// The exact probability that the next call's first pick is each cluster (those that may be
/// chosen at all; the others never are). Shares sum to 1 unless nothing may be chosen.
pub fn first_pick_shares<'a>(
    target: &'a Target,
    my_cluster: &str,
    my_region: &str,
    policy: &ServicePolicy,
    verdict: impl Fn(&Backend) -> Verdict,
) -> Vec<(&'a Backend, f64)> {
    if let Some(cluster) = &target.pinned {
        return pinned(target, cluster, my_cluster)
            .into_iter()
            .map(|b| (b, 1.0))
            .collect();
    }
    let choice = Choice::new(target, my_cluster, my_region, policy, verdict);
    let shares = choice.shares();
    choice
        .candidates
        .iter()
        .zip(shares)
        .map(|(c, s)| (c.backend, s))
        .collect()
}

/// The most likely order: the cluster with the largest first-pick share, then the retry
/// candidates as [`cluster_order`] lays them out, heaviest first within each group.
pub fn likely_order<'a>(
    target: &'a Target,
    my_cluster: &str,
    my_region: &str,
    policy: &ServicePolicy,
    verdict: impl Fn(&Backend) -> Verdict,
) -> Vec<&'a Backend> {
    if let Some(cluster) = &target.pinned {
        return pinned(target, cluster, my_cluster);
    }
    let choice = Choice::new(target, my_cluster, my_region, policy, verdict);
    let shares = choice.shares();
    // The first of the largest shares (ties keep the table's order).
    let Some(top) = (0..shares.len())
        .filter(|&i| shares[i] > 0.0)
        .reduce(|a, b| if shares[b] > shares[a] { b } else { a })
    else {
        return choice.arrange(choice.retry_groups(), heaviest);
    };
    let c = &choice.candidates[top];
    let own_group = match &choice.first {
        FirstPick::Split(pool) if c.split > 0 && c.verdict.healthy => choice.split_group(pool),
        _ => choice.tier_group(c.tier, c.verdict.healthy),
    };
    let groups = [vec![(top, 1)], own_group]
        .into_iter()
        .chain(choice.retry_groups());
    choice.arrange(groups, heaviest)
}

/// The index of the heaviest member (the first of equals).
fn heaviest(pool: &[(usize, u64)]) -> usize {
    (0..pool.len())
        .reduce(|a, b| if pool[b].1 > pool[a].1 { b } else { a })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::collections::BTreeMap;

    use super::*;
    use crate::lb::random;
    use crate::policy::Split;
    use crate::table::Import;

    fn backend(cluster: &str, region: &str, weight: u32, healthy: u32, stale: bool) -> Backend {
        Backend::for_test(cluster, region, "127.0.0.1:1", weight, healthy, stale)
    }

    fn target(backends: Vec<Backend>, pinned: Option<&str>) -> Target {
        Target {
            import: Arc::new(Import::new("cart.shop".into(), vec![], backends)),
            pinned: pinned.map(Into::into),
        }
    }

    fn order(t: &Target, region: &str) -> Vec<String> {
        let mut n = 0u64;
        let policy = ServicePolicy::default();
        cluster_order(
            t,
            "here",
            region,
            &policy,
            |_| Verdict::HEALTHY,
            || {
                n += 1;
                n
            },
        )
        .iter()
        .map(|b| b.cluster.to_string())
        .collect()
    }

    #[test]
    fn tiers_this_cluster_then_same_region_then_others_and_unusable_never() {
        let mut no_gateway = backend("north", "eu", 1, 3, false);
        no_gateway.gateways.clear();
        type Case<'a> = (Vec<Backend>, Option<&'a str>, &'a str, Vec<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (
                vec![
                    backend("west", "us", 1, 1, false),
                    backend("south", "sa", 1, 1, false),
                    backend("east", "eu", 1, 1, false),
                ],
                None,
                "eu",
                vec!["east", "*", "*"],
            ),
            (
                vec![
                    backend("west", "us", 1, 1, true),
                    backend("south", "sa", 1, 1, false),
                ],
                None,
                "us",
                vec!["west", "south"],
            ),
            (
                vec![backend("west", "us", 1, 0, false), no_gateway],
                None,
                "us",
                vec![],
            ),
            (
                vec![
                    backend("west", "us", 1, 1, false),
                    backend("south", "sa", 1, 1, false),
                ],
                Some("south"),
                "us",
                vec!["south"],
            ),
            (
                vec![backend("west", "us", 1, 0, false)],
                Some("west"),
                "us",
                vec![],
            ),
            (
                vec![
                    backend("west", "us", 1, 1, false),
                    backend("here", "eu", 1, 1, false),
                ],
                None,
                "us",
                vec!["here", "west"],
            ),
        ];
        for (backends, pinned, region, want) in cases {
            let t = target(backends, pinned);
            let got = order(&t, region);
            assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
            for (g, w) in got.iter().zip(&want) {
                assert!(*w == "*" || g == w, "{got:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn weights_split_the_first_pick() {
        let t = target(
            vec![
                backend("west", "us", 3, 1, false),
                backend("south", "us", 1, 1, false),
            ],
            None,
        );
        let mut west = 0;
        for r in 0..4000u64 {
            let policy = ServicePolicy::default();
            let first = cluster_order(&t, "here", "us", &policy, |_| Verdict::HEALTHY, || r)[0]
                .cluster
                .clone();
            if &*first == "west" {
                west += 1;
            }
        }
        assert_eq!(west, 3000, "weights 3:1 over a uniform sweep");
    }

    #[test]
    fn tier_loads_spill_below_the_threshold() {
        let cases: [(&[f64], f64, &[f64]); 6] = [
            (&[1.0, 1.0, 1.0], 0.7, &[1.0, 0.0, 0.0]),
            (&[0.7, 1.0, 1.0], 0.7, &[1.0, 0.0, 0.0]),
            (&[0.35, 1.0, 1.0], 0.7, &[0.5, 0.5, 0.0]),
            (&[0.0, 0.35, 1.0], 0.7, &[0.0, 0.5, 0.5]),
            (&[0.0, 0.0, 0.35], 0.7, &[0.0, 0.0, 1.0]),
            (&[0.0, 0.0, 0.0], 0.7, &[0.0, 0.0, 0.0]),
        ];
        for (shares, threshold, want) in cases {
            let got = tier_loads(shares, threshold);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-9, "{shares:?}: {got:?} vs {want:?}");
            }
        }
    }

    fn first_picks(
        t: &Target,
        policy: &ServicePolicy,
        verdict: impl Fn(&Backend) -> Verdict + Copy,
    ) -> std::collections::BTreeMap<String, u32> {
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..2000 {
            let order = cluster_order(t, "here", "us", policy, verdict, random);
            *seen
                .entry(
                    order
                        .first()
                        .map_or("-".to_string(), |b| b.cluster.to_string()),
                )
                .or_insert(0) += 1;
        }
        seen
    }

    #[test]
    fn health_moves_traffic_and_panic_mode_keeps_a_last_resort() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let p = ServicePolicy::default();
        let down = |name: &'static str| {
            move |b: &Backend| {
                if &*b.cluster == name {
                    Verdict {
                        healthy: false,
                        factor: 0.0,
                        reason: None,
                        dropped: false,
                    }
                } else {
                    Verdict::HEALTHY
                }
            }
        };
        assert_eq!(first_picks(&t, &p, down("none"))["west"], 2000);
        assert_eq!(first_picks(&t, &p, down("west"))["south"], 2000);
        let order = cluster_order(&t, "here", "us", &p, down("west"), random);
        assert_eq!(
            order.len(),
            2,
            "the unhealthy cluster stays as a last resort"
        );
        assert_eq!(&*order[1].cluster, "west");
        let all_down = |_: &Backend| Verdict {
            healthy: false,
            factor: 0.0,
            reason: None,
            dropped: false,
        };
        let order = cluster_order(&t, "here", "us", &p, all_down, random);
        assert_eq!(
            &*order[0].cluster, "west",
            "panic mode keeps the tier order"
        );
    }

    #[test]
    fn dropped_clusters_are_not_even_a_last_resort() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, true),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let west_dropped = |b: &Backend| Verdict {
            healthy: &*b.cluster != "west",
            factor: 1.0,
            reason: None,
            dropped: &*b.cluster == "west",
        };
        let order = cluster_order(
            &t,
            "here",
            "us",
            &ServicePolicy::default(),
            west_dropped,
            random,
        );
        assert_eq!(order.len(), 1);
        assert_eq!(&*order[0].cluster, "south");
    }

    #[test]
    fn fences_and_slow_start_shape_the_first_pick() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let fenced = ServicePolicy {
            fence_regions: Some(vec!["us".into()]),
            ..ServicePolicy::default()
        };
        let west_down = |b: &Backend| Verdict {
            healthy: &*b.cluster != "west",
            factor: 1.0,
            reason: None,
            dropped: false,
        };
        let order = cluster_order(&t, "here", "us", &fenced, west_down, random);
        assert_eq!(
            order.len(),
            1,
            "never leave the fence, even when unhealthy inside it"
        );
        assert_eq!(&*order[0].cluster, "west");
        // West just came back: a fifth of its full share; the rest spills to south.
        let recovering = |b: &Backend| Verdict {
            healthy: true,
            factor: if &*b.cluster == "west" { 0.14 } else { 1.0 },
            reason: None,
            dropped: false,
        };
        let picks = first_picks(&t, &ServicePolicy::default(), recovering);
        let west = f64::from(picks["west"]) / 2000.0;
        assert!(
            (0.12..0.28).contains(&west),
            "west share while recovering: {west}"
        );
    }

    fn split(weights: &[(&str, u32)]) -> ServicePolicy {
        ServicePolicy {
            split: Some(Split {
                weights: weights.iter().map(|(c, w)| ((*c).into(), *w)).collect(),
                cluster_header: false,
            }),
            ..ServicePolicy::default()
        }
    }

    /// Verdicts with the named clusters unhealthy.
    fn unhealthy(names: &'static [&'static str]) -> impl Fn(&Backend) -> Verdict + Copy {
        move |b: &Backend| {
            if names.contains(&&*b.cluster) {
                Verdict {
                    healthy: false,
                    factor: 0.0,
                    reason: Some("no peer gateway answers probes"),
                    dropped: false,
                }
            } else {
                Verdict::HEALTHY
            }
        }
    }

    /// First picks with the random source swept once over `0..n` (uniform for weights that sum
    /// to a divisor of `n`).
    fn sweep(
        t: &Target,
        policy: &ServicePolicy,
        verdict: impl Fn(&Backend) -> Verdict + Copy,
        n: u64,
    ) -> BTreeMap<String, u64> {
        let mut seen = BTreeMap::new();
        for r in 0..n {
            let order = cluster_order(t, "here", "us", policy, verdict, || r);
            let first = order.first().map_or("-".into(), |b| b.cluster.to_string());
            *seen.entry(first).or_insert(0) += 1;
        }
        seen
    }

    fn shares(
        t: &Target,
        policy: &ServicePolicy,
        verdict: impl Fn(&Backend) -> Verdict,
    ) -> BTreeMap<String, f64> {
        first_pick_shares(t, "here", "us", policy, verdict)
            .into_iter()
            .map(|(b, s)| (b.cluster.to_string(), s))
            .collect()
    }

    fn names(order: &[&Backend]) -> Vec<String> {
        order.iter().map(|b| b.cluster.to_string()).collect()
    }

    #[test]
    fn a_split_divides_the_first_pick_exactly() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 7, 1, false),
            ],
            None,
        );
        let p = split(&[("west", 95), ("south", 5)]);
        let picks = sweep(&t, &p, |_| Verdict::HEALTHY, 100_000);
        assert_eq!(
            (picks["west"], picks["south"]),
            (95_000, 5_000),
            "95/5 over a uniform sweep, whatever the exporters' weights and tiers"
        );
        let s = shares(&t, &p, |_| Verdict::HEALTHY);
        assert!(
            (s["west"] - 0.95).abs() < 1e-12 && (s["south"] - 0.05).abs() < 1e-12,
            "{s:?}"
        );
    }

    #[test]
    fn an_unhealthy_split_cluster_gives_its_share_to_the_healthy_ones() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let p = split(&[("west", 95), ("south", 5)]);
        let picks = sweep(&t, &p, unhealthy(&["south"]), 100_000);
        assert_eq!(picks.get("west"), Some(&100_000), "{picks:?}");
        let s = shares(&t, &p, unhealthy(&["south"]));
        assert_eq!((s["west"], s["south"]), (1.0, 0.0));
        let order = cluster_order(&t, "here", "us", &p, unhealthy(&["south"]), random);
        assert_eq!(
            names(&order),
            ["west", "south"],
            "the unhealthy one stays a last resort"
        );
    }

    #[test]
    fn without_a_healthy_split_cluster_the_tiers_decide() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
                backend("east", "eu", 1, 1, false),
            ],
            None,
        );
        let p = split(&[("west", 95), ("south", 5)]);
        let down = unhealthy(&["west", "south"]);
        let picks = sweep(&t, &p, down, 1_000);
        assert_eq!(picks.get("east"), Some(&1_000), "{picks:?}");
        assert_eq!(shares(&t, &p, down)["east"], 1.0);
        let order = cluster_order(&t, "here", "us", &p, down, random);
        assert_eq!(
            names(&order),
            ["east", "west", "south"],
            "then panic mode in tier order"
        );
    }

    #[test]
    fn a_split_naming_a_cluster_that_does_not_serve_is_ignored() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let p = split(&[("north", 50), ("south", 50)]);
        let picks = sweep(&t, &p, |_| Verdict::HEALTHY, 1_000);
        assert_eq!(picks.get("south"), Some(&1_000), "{picks:?}");
        let s = shares(&t, &p, |_| Verdict::HEALTHY);
        assert_eq!((s["south"], s["west"]), (1.0, 0.0));
        assert!(!s.contains_key("north"));
        // The split overrides the tiers for the first pick; the rest keep their tier order.
        let order = cluster_order(&t, "here", "us", &p, |_| Verdict::HEALTHY, random);
        assert_eq!(names(&order), ["south", "west"]);
    }

    #[test]
    fn split_weights_count_slow_start_and_the_fence() {
        let t = target(
            vec![
                backend("west", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        let recovering = |b: &Backend| Verdict {
            factor: if &*b.cluster == "south" { 0.5 } else { 1.0 },
            ..Verdict::HEALTHY
        };
        let p = split(&[("west", 50), ("south", 50)]);
        let s = shares(&t, &p, recovering);
        assert!((s["south"] - 1.0 / 3.0).abs() < 1e-12, "{s:?}");
        let fenced = ServicePolicy {
            fence_regions: Some(vec!["us".into()]),
            ..split(&[("west", 1), ("south", 99)])
        };
        let s = shares(&t, &fenced, |_| Verdict::HEALTHY);
        assert_eq!(s.get("west"), Some(&1.0));
        assert!(!s.contains_key("south"), "outside the fence: never chosen");
    }

    #[test]
    fn shares_match_the_draws_of_the_tiers() {
        let t = target(
            vec![
                backend("west", "us", 3, 1, false),
                backend("north", "us", 1, 1, false),
                backend("south", "sa", 1, 1, false),
            ],
            None,
        );
        // West just came back: its tier falls below the threshold and spills to south.
        let recovering = |b: &Backend| Verdict {
            factor: if &*b.cluster == "west" { 0.2 } else { 1.0 },
            ..Verdict::HEALTHY
        };
        let p = ServicePolicy::default();
        let s = shares(&t, &p, recovering);
        let total: f64 = s.values().sum();
        assert!((total - 1.0).abs() < 1e-9, "{s:?}");
        assert!(
            s["south"] > 0.0 && s["west"] > 0.0 && s["north"] > 0.0,
            "{s:?}"
        );
        let n = 40_000;
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..n {
            let first = cluster_order(&t, "here", "us", &p, recovering, random)[0]
                .cluster
                .to_string();
            *seen.entry(first).or_insert(0) += 1;
        }
        for (cluster, share) in &s {
            let got = f64::from(seen.get(cluster).copied().unwrap_or(0)) / f64::from(n);
            assert!(
                (got - share).abs() < 0.015,
                "{cluster}: drawn {got}, share {share}"
            );
        }
    }

    #[test]
    fn the_likely_order_starts_with_the_largest_share() {
        let t = target(
            vec![
                backend("east", "eu", 1, 1, false),
                backend("south", "sa", 1, 1, false),
                backend("west", "us", 1, 1, false),
            ],
            None,
        );
        let p = split(&[("south", 5), ("west", 95)]);
        let order = likely_order(&t, "here", "us", &p, unhealthy(&["east"]));
        assert_eq!(names(&order), ["west", "south", "east"]);
        let pinned = target(vec![backend("west", "us", 1, 1, false)], Some("west"));
        assert_eq!(
            shares(&pinned, &p, unhealthy(&["west"])).get("west"),
            Some(&1.0),
            "a pinned target goes to its cluster whatever its health"
        );
    }
}
