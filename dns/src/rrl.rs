//! Response-rate limiting over UDP, per client prefix (`/24` and `/56` by default): a token bucket
//! per prefix in a fixed-size table (no allocation after start; a colliding prefix takes the slot
//! over with a full bucket). Over the limit, every `slip`-th response goes out truncated (TC=1,
//! no records: a real client retries over TCP, which is never limited) and the rest are dropped,
//! so the server cannot be used to amplify a spoofed victim's traffic.
//!
//! One limiter serves every UDP worker, so the limit holds for the whole server: SO_REUSEPORT
//! hashes the 4-tuple, and a flood from many source ports of one prefix reaches every worker. The
//! table is split into shards, each behind its own mutex and chosen by a hash of the prefix: a
//! prefix always meets the same shard, the lock is held only for one bucket update (no I/O, no
//! allocation), and workers serving different prefixes rarely meet on a lock. The clock is the
//! limiter's own, so every worker measures refills from the same instant.
//!
//! Must not: allocate or log per query, or hold a shard lock for anything but one bucket.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use isthmus_federation::config::DnsRateLimit;

/// Shards of the bucket table (a power of two); more than workers, so two workers rarely wait.
const SHARDS: usize = 64;
/// Buckets per shard (a power of two): 16,384 in all.
const SLOTS_PER_SHARD: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send a truncated response instead.
    Slip,
    Drop,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u128,
    /// Tokens in thousandths of a response.
    milli_tokens: u64,
    last_ms: u64,
    over: u32,
}

/// One limiter for the whole server (share it behind an `Arc`).
pub struct RateLimiter {
    cfg: DnsRateLimit,
    shards: Box<[Mutex<[Slot; SLOTS_PER_SHARD]>]>,
    epoch: Instant,
}

impl RateLimiter {
    /// `None` when rate limiting is off.
    pub fn new(cfg: &DnsRateLimit) -> Option<Self> {
        (cfg.responses_per_second > 0).then(|| Self {
            cfg: cfg.clone(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new([Slot::default(); SLOTS_PER_SHARD]))
                .collect(),
            epoch: Instant::now(),
        })
    }

    fn key(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.cfg.ipv4_prefix))
                    .unwrap_or(0);
                // Tag v4 keys so they never equal a v6 key.
                (1u128 << 127) | u128::from(u32::from(v) & mask)
            }
            IpAddr::V6(v) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.cfg.ipv6_prefix))
                    .unwrap_or(0);
                (u128::from(v) & mask) & !(1u128 << 127)
            }
        }
    }

    /// Accounts one response to `ip`, sent at `at`.
    pub fn check_at(&self, ip: IpAddr, at: Instant) -> Verdict {
        // Never 0: a slot whose `last_ms` is 0 is empty.
        let now_ms = at.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        self.check(ip, now_ms)
    }

    /// Accounts one response to `ip` at `now_ms` (milliseconds on the limiter's clock).
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Verdict {
        let key = self.key(ip);
        // Cheap mixing of the key bits (not keyed: an attacker choosing prefixes to collide only
        // evicts slots, which hands out full buckets; it cannot slow the table).
        let h = (key as u64) ^ ((key >> 64) as u64);
        let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let shard = (h >> 58) as usize & (SHARDS - 1);
        let idx = (h >> 40) as usize & (SLOTS_PER_SHARD - 1);
        let rate = u64::from(self.cfg.responses_per_second);
        let cap = rate * u64::from(self.cfg.burst_seconds.max(1)) * 1000;
        // A worker that panicked mid-update leaves at worst one odd bucket: keep serving.
        let mut slots = self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = &mut slots[idx];
        if slot.key != key || slot.last_ms == 0 {
            *slot = Slot {
                key,
                milli_tokens: cap,
                last_ms: now_ms.max(1),
                over: 0,
            };
        }
        let elapsed = now_ms.saturating_sub(slot.last_ms);
        if elapsed > 0 {
            slot.milli_tokens = (slot.milli_tokens + elapsed * rate).min(cap);
            slot.last_ms = now_ms;
        }
        if slot.milli_tokens >= 1000 {
            slot.milli_tokens -= 1000;
            return Verdict::Send;
        }
        slot.over = slot.over.wrapping_add(1);
        let over = slot.over;
        drop(slots);
        if self.cfg.slip > 0 && over.is_multiple_of(self.cfg.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: u32) -> DnsRateLimit {
        DnsRateLimit {
            responses_per_second: rate,
            burst_seconds: 1,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
        }
    }

    #[test]
    fn limits_per_prefix_and_refills() {
        assert!(RateLimiter::new(&cfg(0)).is_none());
        let rl = RateLimiter::new(&cfg(10)).expect("on");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let a2: IpAddr = "10.0.0.99".parse().expect("ip");
        let b: IpAddr = "10.0.1.1".parse().expect("ip");
        let t = 1_000;
        for _ in 0..10 {
            assert_eq!(rl.check(a, t), Verdict::Send);
        }
        // Same /24: shares the bucket. Over the limit: drop, slip, drop, slip...
        assert_eq!(rl.check(a2, t), Verdict::Drop);
        assert_eq!(rl.check(a, t), Verdict::Slip);
        assert_eq!(rl.check(a, t), Verdict::Drop);
        // Another prefix has its own bucket.
        assert_eq!(rl.check(b, t), Verdict::Send);
        // 100 ms later: one more token (10/s).
        assert_eq!(rl.check(a, t + 100), Verdict::Send);
        assert_ne!(rl.check(a, t + 100), Verdict::Send);
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(rl.check(v6, t), Verdict::Send);
    }

    #[test]
    fn one_budget_for_every_worker() {
        // Four workers see the same prefix from different source addresses at the same instant:
        // together they hand out one burst, not one each.
        let rl = std::sync::Arc::new(RateLimiter::new(&cfg(100)).expect("on"));
        let workers: Vec<_> = (0..4u8)
            .map(|w| {
                let rl = rl.clone();
                std::thread::spawn(move || {
                    let ip = IpAddr::from([10, 0, 0, w + 1]);
                    (0..100)
                        .filter(|_| rl.check(ip, 5_000) == Verdict::Send)
                        .count()
                })
            })
            .collect();
        let sent: usize = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        assert_eq!(sent, 100, "the burst of one prefix, shared by every worker");
    }
}
