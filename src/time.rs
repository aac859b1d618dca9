//! Time on the host's monotonic clock: call deadlines and the backoff between retries.

use crate::host::Host;

/// An absolute deadline on the host's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Monotonic ms at which time is up.
    pub end_ms: u64,
}

impl Deadline {
    /// `ms` from now.
    pub fn after(host: &dyn Host, ms: u64) -> Deadline {
        Deadline {
            end_ms: host.now_ms().saturating_add(ms),
        }
    }

    /// Milliseconds left (0 when past).
    pub fn remaining(&self, host: &dyn Host) -> u64 {
        self.end_ms.saturating_sub(host.now_ms())
    }
}

/// Exponential backoff: the pause after attempt `attempt` (counted from 1) is `base` doubled
/// for each attempt before it, at most `max`.
pub fn backoff_ms(base: u64, max: u64, attempt: u32) -> u64 {
    base.saturating_mul(1 << attempt.saturating_sub(1).min(63))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let seq = |base, max| {
            (1..=12)
                .map(|a| backoff_ms(base, max, a))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            seq(1_000, 5_000),
            [1_000, 2_000, 4_000, 5_000, 5_000, 5_000, 5_000, 5_000, 5_000, 5_000, 5_000, 5_000]
        );
        assert_eq!(
            seq(500, 2_000),
            [500, 1_000, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000]
        );
        assert_eq!(backoff_ms(500, 8_000, 5), 8_000);
        assert_eq!(backoff_ms(500, 8_000, 4), 4_000);
        assert_eq!(backoff_ms(1_000, 5_000, u32::MAX), 5_000);
    }
}
