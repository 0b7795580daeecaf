//! W3C Trace Context (`traceparent`) read and written by hand, and the sampling decision: pure
//! functions over bytes, so an unsampled request costs a header lookup and a comparison, never an
//! allocation.

use super::config::{SamplerKind, TracingConfig};

/// The W3C header carrying the caller's trace and span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor state; passed on untouched.
pub const TRACESTATE: &str = "tracestate";

/// A caller's `traceparent`: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Each byte's value as a lowercase hex digit (W3C Trace Context §3.2.2), or `INVALID`.
const HEX_VALUE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xff;

/// Decodes `2 * out.len()` hex digits; one table lookup a digit and one check for the whole
/// field (the inbound side parses a `traceparent` on every traced request).
fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    let mut bad = 0;
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *byte = hi << 4 | lo;
    }
    (bad & 0xf0 == 0).then_some(())
}

impl TraceParent {
    /// Parses a `traceparent` value; anything malformed (or with all-zero IDs, or version `ff`)
    /// is `None`, as if the caller sent none. Later versions are read by their version-00
    /// prefix, as the spec asks.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut version = [0u8; 1];
        hex_into(&value[..2], &mut version)?;
        match version[0] {
            0xff => return None,
            0 if value.len() != 55 => return None,
            0 => {}
            _ if value.len() > 55 && value[55] != b'-' => return None,
            _ => {}
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        hex_into(&value[3..35], &mut trace_id)?;
        hex_into(&value[36..52], &mut span_id)?;
        hex_into(&value[53..55], &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }
}

/// `00-<trace id>-<span id>-01` for a sampled span.
pub fn format_traceparent(trace_id: [u8; 16], span_id: [u8; 8]) -> [u8; 55] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    let mut at = 3;
    for (bytes, end) in [(&trace_id[..], 35), (&span_id[..], 52)] {
        for b in bytes {
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 0xf)];
            at += 2;
        }
        debug_assert_eq!(at, end);
        at += 1;
    }
    out[53] = b'0';
    out[54] = b'1';
    out
}

/// Random bytes each thread takes from the system generator at once.
const RANDOM_BLOCK: usize = 512;

/// A random number for IDs and sampling draws, from the system's cryptographic generator (a
/// `traceparent` is seen by every service a request reaches: from one ID, none of the next may
/// be guessable, or a caller could join or link other clients' traces). Each thread draws a
/// block at a time, so an ID costs a copy, not a system call.
fn random() -> u64 {
    use std::cell::RefCell;
    thread_local! {
        static BLOCK: RefCell<([u8; RANDOM_BLOCK], usize)> =
            const { RefCell::new(([0; RANDOM_BLOCK], RANDOM_BLOCK)) };
    }
    BLOCK.with(|b| {
        let (bytes, used) = &mut *b.borrow_mut();
        if *used + 8 > RANDOM_BLOCK {
            refill(bytes);
            *used = 0;
        }
        let mut x = [0u8; 8];
        x.copy_from_slice(&bytes[*used..*used + 8]);
        *used += 8;
        u64::from_ne_bytes(x)
    })
}

fn refill(bytes: &mut [u8; RANDOM_BLOCK]) {
    use ring::rand::SecureRandom as _;
    if ring::rand::SystemRandom::new().fill(bytes).is_ok() {
        return;
    }
    // The system generator failed (it does not, on Linux after boot): IDs must still differ,
    // so they come from the standard library's per-process random keys and the clock.
    use std::hash::{BuildHasher as _, Hasher as _};
    let state = std::hash::RandomState::new();
    for (i, chunk) in bytes.chunks_exact_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        h.write_u128(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos()));
        chunk.copy_from_slice(&h.finish().to_ne_bytes());
    }
}

/// A new trace ID (never all zero).
pub(crate) fn new_trace_id() -> [u8; 16] {
    loop {
        let id = (u128::from(random()) << 64 | u128::from(random())).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A new span ID (never all zero).
pub(crate) fn new_span_id() -> [u8; 8] {
    loop {
        let id = random().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The last 8 bytes of a trace ID, as a number: what a ratio sampler compares.
fn low_half(trace_id: &[u8; 16]) -> u64 {
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    u64::from_be_bytes(low)
}

/// The sampling rule of a `tracing:` section, ready for the request path.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    kind: SamplerKind,
    /// `ratio` scaled to the u64 range: a draw below it is sampled.
    threshold: u64,
    everything: bool,
    parent_based: bool,
}

impl Sampling {
    pub fn new(config: &TracingConfig) -> Self {
        let ratio = config.ratio.0.clamp(0.0, 1.0);
        Self {
            kind: config.sampler,
            // Saturating float-to-int cast; ratio 1 is handled by `everything`.
            threshold: (ratio * u64::MAX as f64) as u64,
            everything: ratio >= 1.0,
            parent_based: config.parent_based,
        }
    }

    /// Whether to trace: the caller's decision when it sent one and the rule is parent-based,
    /// else the sampler, over the trace ID: the caller's, or for a new trace the one `new_trace`
    /// makes (called only when the sampler needs it), so hops that decide alike agree.
    pub fn decide(
        &self,
        parent: Option<&TraceParent>,
        new_trace: impl FnOnce() -> [u8; 16],
    ) -> bool {
        match parent {
            Some(p) if self.parent_based => p.sampled,
            Some(p) => self.root(low_half(&p.trace_id)),
            None => match self.kind {
                SamplerKind::Ratio => self.root(low_half(&new_trace())),
                _ => self.root(0),
            },
        }
    }

    fn root(&self, x: u64) -> bool {
        // `x` is the low half of a trace ID (W3C's random part).
        match self.kind {
            SamplerKind::AlwaysOn => true,
            SamplerKind::AlwaysOff => false,
            SamplerKind::Ratio => self.everything || x < self.threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::config::Ratio;
    use super::*;

    #[test]
    fn ids_are_not_zero_and_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_span_id();
            assert_ne!(id, [0; 8]);
            assert!(seen.insert(id), "span ID {id:?} came twice");
        }
        let (a, b) = (new_trace_id(), new_trace_id());
        assert_ne!(a, b);
        // Another thread draws its own block.
        let other = std::thread::spawn(new_span_id).join().expect("thread");
        assert!(!seen.contains(&other));
    }

    const SAMPLE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_spec_example_round_trips() {
        let p = TraceParent::parse(SAMPLE).expect("valid");
        assert!(p.sampled);
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.span_id[7], 0xb7);
        assert_eq!(&format_traceparent(p.trace_id, p.span_id)[..], SAMPLE);
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceParent::parse(unsampled).expect("valid").sampled);
    }

    #[test]
    fn malformed_values_count_as_none() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é".as_bytes(),
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version is read by its version-00 prefix.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceParent::parse(later).is_some());
    }

    /// A trace ID whose random low half is `low`.
    fn trace_id(low: u64) -> [u8; 16] {
        let mut id = [0x5a; 16];
        id[8..].copy_from_slice(&low.to_be_bytes());
        id
    }

    fn sampling(sampler: SamplerKind, ratio: f64, parent_based: bool) -> Sampling {
        Sampling::new(&TracingConfig {
            sampler,
            ratio: Ratio(ratio),
            parent_based,
            ..TracingConfig::default()
        })
    }

    #[test]
    fn the_caller_decides_when_parent_based() {
        let mut p = TraceParent::parse(SAMPLE).expect("valid");
        let off = sampling(SamplerKind::AlwaysOff, 0.0, true);
        assert!(off.decide(Some(&p), || unreachable!()));
        p.sampled = false;
        let on = sampling(SamplerKind::AlwaysOn, 1.0, true);
        assert!(!on.decide(Some(&p), || unreachable!()));
        // Not parent-based: the sampler alone, over the caller's trace ID.
        let on = sampling(SamplerKind::AlwaysOn, 1.0, false);
        assert!(on.decide(Some(&p), || unreachable!()));
        let off = sampling(SamplerKind::AlwaysOff, 1.0, false);
        p.sampled = true;
        assert!(!off.decide(Some(&p), || unreachable!()));
    }

    #[test]
    fn a_ratio_samples_about_its_share_of_new_traces() {
        let s = sampling(SamplerKind::Ratio, 0.01, true);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut hits = 0;
        for _ in 0..100_000 {
            // splitmix64: an even spread of draws, reproducible.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            hits += usize::from(s.decide(None, || trace_id(z ^ (z >> 31))));
        }
        assert!((800..1200).contains(&hits), "{hits} of 100000 at 1 %");
        assert!(!sampling(SamplerKind::Ratio, 0.0, true).decide(None, || trace_id(0)));
        assert!(sampling(SamplerKind::Ratio, 1.0, true).decide(None, || trace_id(u64::MAX)));
        // A hop that is not parent-based decides a caller's trace as the root decided it.
        let s = sampling(SamplerKind::Ratio, 0.5, false);
        for low in [1u64 << 20, u64::MAX - 7] {
            let id = trace_id(low);
            let caller = TraceParent {
                trace_id: id,
                span_id: [1; 8],
                sampled: true,
            };
            assert_eq!(
                s.decide(None, || id),
                s.decide(Some(&caller), || unreachable!())
            );
        }
        assert!(sampling(SamplerKind::AlwaysOn, 0.0, true).decide(None, || unreachable!()));
        assert!(!sampling(SamplerKind::AlwaysOff, 1.0, true).decide(None, || unreachable!()));
    }
}
