//! What `queue_v1`'s two polls make of an execute's time: a closed form of the mean API-call
//! latency, from the steps' execute times alone.
//!
//! Paperclip's host loop lists the queue, and after an empty listing waits one poll interval
//! before the next, so while idle a listing's command runs once every `list + poll`. A request
//! written at a random moment is seen by the next listing's command, then waits for that
//! listing's answer, `wc -c`, `head -c N | base64` and the response write up to its rename:
//! with the remote effects at the same offset into each execute, that is `list + wc + head`
//! after the listing's command ran. The gateway in the VM looks for the response when it wrote
//! the request and then every poll interval, so the agent sees the answer at the first multiple
//! of the interval after it landed. Averaging that over the uniform phase of the listing loop
//! gives the mean. The model leaves out the run-log tail (it runs beside the loop, on its own
//! channel) and the gateway's own few microseconds per look.
//!
//! With every step exactly one round trip and nothing else (no command, no login shell, no
//! provider), it gives the least mean any provider can reach over a link; and inverted, the
//! longest execute that still meets a target.

use std::time::Duration;

/// The host side's execute times that decide a call's latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepTimes {
    /// The listing execute.
    pub list: Duration,
    /// `wc -c` (the request's size).
    pub wc: Duration,
    /// `head -c N | base64` (its body).
    pub head: Duration,
}

impl StepTimes {
    /// Every step taking `each`.
    pub fn all(each: Duration) -> Self {
        Self {
            list: each,
            wc: each,
            head: each,
        }
    }
}

/// The mean time from a request to its answer's arrival in the queue (before the gateway's
/// next look): the phase wait, on average half a listing cycle, plus the steps.
pub fn mean_ready(steps: StepTimes, poll: Duration) -> Duration {
    (steps.list + poll) / 2 + steps.list + steps.wc + steps.head
}

/// The mean API-call latency the agent sees.
pub fn mean_latency(steps: StepTimes, poll: Duration) -> Duration {
    let t = poll.as_secs_f64();
    let cycle = (steps.list + poll).as_secs_f64();
    let first = (steps.list + steps.wc + steps.head).as_secs_f64();
    // The answer lands uniformly in [first, first + cycle); the agent sees it at the next
    // multiple of the poll interval. `seen_by(x)` is the integral of that multiple up to x.
    let seen_by = |x: f64| {
        let k = (x / t).floor();
        t * t * k * (k + 1.0) / 2.0 + t * (k + 1.0) * (x - k * t)
    };
    Duration::from_secs_f64((seen_by(first + cycle) - seen_by(first)) / cycle)
}

/// The longest execute (the same for every step) whose mean latency is at most `target`, to a
/// tenth of a millisecond; `None` when even an instant execute misses it.
pub fn longest_execute_within(target: Duration, poll: Duration) -> Option<Duration> {
    let step = Duration::from_micros(100);
    let within = |e: Duration| mean_latency(StepTimes::all(e), poll) <= target;
    if !within(Duration::ZERO) {
        return None;
    }
    // The mean grows with the execute time (every answer lands later, and the listing loop's
    // cycle widens), so the first miss ends the scan; ten seconds of execute is far past any
    // target a bench prints.
    let mut e = Duration::ZERO;
    while e < Duration::from_secs(10) && within(e + step) {
        e += step;
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_millis(100);

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1e3)
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_micros(50)
    }

    #[test]
    fn instant_executes_cost_exactly_one_gateway_poll() {
        // Each answer lands before the gateway's first look after writing.
        let got = mean_latency(StepTimes::all(Duration::ZERO), POLL);
        assert!(close(got, POLL), "{got:?}");
    }

    #[test]
    fn one_round_trip_of_30_ms_per_step_by_hand() {
        // Answers land uniformly in [90, 220) ms: 10 of the 130 ms are seen at 100 ms, 100 at
        // 200 ms, 20 at 300 ms.
        let want = ms((10.0 * 100.0 + 100.0 * 200.0 + 20.0 * 300.0) / 130.0);
        let got = mean_latency(StepTimes::all(ms(30.0)), POLL);
        assert!(close(got, want), "{got:?} vs {want:?}");
        assert!(close(mean_ready(StepTimes::all(ms(30.0)), POLL), ms(155.0)));
    }

    #[test]
    fn unequal_steps_by_hand() {
        // A listing of 41 ms and 42 ms each for wc and head: answers land in [125, 266) ms.
        let steps = StepTimes {
            list: ms(41.0),
            wc: ms(42.0),
            head: ms(42.0),
        };
        let want = ms((75.0 * 200.0 + 66.0 * 300.0) / 141.0);
        let got = mean_latency(steps, POLL);
        assert!(close(got, want), "{got:?} vs {want:?}");
    }

    #[test]
    fn the_mean_never_falls_as_executes_slow() {
        let mut last = Duration::ZERO;
        for tenth in 0..3000 {
            let m = mean_latency(StepTimes::all(ms(f64::from(tenth) / 10.0)), POLL);
            assert!(
                m + Duration::from_nanos(1) >= last,
                "at {tenth}: {m:?} < {last:?}"
            );
            last = m;
        }
    }

    #[test]
    fn the_longest_execute_meets_the_target_and_a_tenth_more_does_not() {
        let target = ms(215.6);
        let e = longest_execute_within(target, POLL).expect("reachable");
        assert!(mean_latency(StepTimes::all(e), POLL) <= target);
        let more = e + Duration::from_micros(100);
        assert!(mean_latency(StepTimes::all(more), POLL) > target);
        // 30 ms of round trip and about a millisecond and a half more: 31.5 ms gives 215.5 ms.
        assert!(e > ms(31.0) && e < ms(32.0), "{e:?}");
    }

    #[test]
    fn a_target_under_one_poll_is_unreachable() {
        assert_eq!(longest_execute_within(ms(99.0), POLL), None);
    }
}
