//! Adaptive keep-alive: how long a function's idle instances are kept, learned from the
//! idle gaps between its calls.
//!
//! A function called every 12 minutes with a 10-minute idle timeout starts cold every time,
//! and one called once a day keeps an instance for nothing. Azure Functions keeps instances
//! for the idle times it has observed per application (Shahrad et al., "Serverless in the
//! Wild", ATC 2020); this is the simplest useful form of that policy. It only ever extends
//! `idle_timeout_ms`, up to the function's `keep_alive_max_ms`: a user who asks for quick
//! scale-to-zero still gets it unless they opt in.

use std::collections::VecDeque;
use std::time::Instant;

/// Gaps remembered per function: enough for a stable 90th percentile, few enough to follow
/// a change of rhythm within a handful of calls.
const GAPS_KEPT: usize = 16;
/// Gaps needed before the keep-alive adapts at all.
const GAPS_NEEDED: usize = 4;

/// The idle gaps of one function: from the moment its last call ended to the next call.
#[derive(Debug, Default)]
pub(crate) struct IdleGaps {
    gaps_ms: VecDeque<u64>,
    /// When the function last had no call running; `None` while calls run.
    idle_since: Option<Instant>,
}

impl IdleGaps {
    /// The function's last running call ended at `now`.
    pub fn went_idle(&mut self, now: Instant) {
        self.idle_since = Some(now);
    }

    /// Whether no call has run since the function went idle.
    pub fn is_idle(&self) -> bool {
        self.idle_since.is_some()
    }

    /// A call arrived at `now`: the gap since the function went idle, if it was, is kept.
    pub fn call_arrived(&mut self, now: Instant) {
        if let Some(since) = self.idle_since.take() {
            if self.gaps_ms.len() == GAPS_KEPT {
                self.gaps_ms.pop_front();
            }
            self.gaps_ms
                .push_back(now.saturating_duration_since(since).as_millis() as u64);
        }
    }

    /// How long an idle instance is kept: `idle_timeout_ms`, or, when the function keeps
    /// coming back after longer gaps that `max_ms` (0: off) can cover, the gaps' 90th
    /// percentile and a fifth more (so the next call finds the instance), at most `max_ms`.
    pub fn keep_alive_ms(&self, idle_timeout_ms: u32, max_ms: u32) -> u64 {
        let idle_timeout_ms = idle_timeout_ms as u64;
        let max_ms = max_ms as u64;
        if max_ms <= idle_timeout_ms || self.gaps_ms.len() < GAPS_NEEDED {
            return idle_timeout_ms;
        }
        let mut gaps: Vec<u64> = self.gaps_ms.iter().copied().collect();
        gaps.sort_unstable();
        let p90 = gaps[(gaps.len() * 9 / 10).min(gaps.len() - 1)];
        // Gaps within the idle timeout need nothing more; gaps beyond the bound cannot be
        // bridged, and keeping instances longer for them would only cost memory.
        if p90 <= idle_timeout_ms || p90 > max_ms {
            return idle_timeout_ms;
        }
        (p90 + p90 / 5).min(max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn with_gaps(gaps_ms: &[u64]) -> IdleGaps {
        let mut g = IdleGaps::default();
        let mut now = Instant::now();
        for gap in gaps_ms {
            g.went_idle(now);
            now += Duration::from_millis(*gap);
            g.call_arrived(now);
        }
        g
    }

    #[test]
    fn a_steady_rhythm_past_the_idle_timeout_is_bridged() {
        // Every 12 minutes against a 10-minute timeout: kept 14.4 minutes.
        let g = with_gaps(&[720_000; 5]);
        assert_eq!(g.keep_alive_ms(600_000, 3_600_000), 864_000);
        // Bounded by the function's maximum, and off without one.
        assert_eq!(g.keep_alive_ms(600_000, 800_000), 800_000);
        assert_eq!(g.keep_alive_ms(600_000, 0), 600_000);
    }

    #[test]
    fn too_few_short_or_unreachable_gaps_keep_the_idle_timeout() {
        assert_eq!(
            with_gaps(&[720_000; 3]).keep_alive_ms(600_000, 3_600_000),
            600_000
        );
        assert_eq!(
            with_gaps(&[1_000; 8]).keep_alive_ms(600_000, 3_600_000),
            600_000
        );
        assert_eq!(
            with_gaps(&[86_400_000; 8]).keep_alive_ms(600_000, 3_600_000),
            600_000
        );
    }

    #[test]
    fn calls_while_others_run_are_not_gaps_and_old_gaps_age_out() {
        let mut g = with_gaps(&[720_000; 16]);
        // A call that arrives while the function is busy records nothing.
        g.call_arrived(Instant::now());
        assert_eq!(g.gaps_ms.len(), 16);
        // Sixteen short gaps replace the long ones.
        let mut now = Instant::now();
        for _ in 0..16 {
            g.went_idle(now);
            now += Duration::from_millis(10);
            g.call_arrived(now);
        }
        assert_eq!(g.keep_alive_ms(600_000, 3_600_000), 600_000);
    }
}
