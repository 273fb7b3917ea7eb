//! Pacing a byte stream to a rate (`bwlimit`) with a token bucket.
//!
//! A re-seed can saturate the link between two data centres, or the disks of the node it
//! reads from, for as long as it runs. A token bucket caps it: tokens (one per byte)
//! drip in at the configured rate up to a small capacity, every chunk takes its size in
//! tokens before it is written, and when the bucket runs dry the writer sleeps for
//! exactly the deficit. Over any interval the stream then moves at most
//! `capacity + rate × interval` bytes, so the average holds the rate however long the
//! re-seed runs, and the burst after a pause is bounded by the capacity. Time slept too
//! long (a busy scheduler) is not lost either: it refills the bucket, so the next chunks
//! go out without waiting.
//!
//! The arithmetic is exact (integers, nanoseconds), and time comes from a small clock
//! trait so that tests can drive it with a fake clock instead of waiting.

use std::num::NonZeroU64;
use std::time::{Duration, Instant};

/// Time as the bucket needs it: monotonic, and something to wait with. Not
/// `crate::clock::Clock`, which is wall-clock time and may jump.
pub trait PaceClock {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration);
}

/// The operating system's monotonic clock and a real sleep.
pub struct RealClock;

impl PaceClock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Lets a caller keep its clock (a test reads the fake time it lent to the bucket).
impl<C: PaceClock + ?Sized> PaceClock for &C {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration);
    }
}

/// The longest single sleep: a wait for a large deficit at a low rate is cut into
/// slices so that SIGINT/SIGTERM is acted on within this much time.
pub const MAX_SLEEP_SLICE: Duration = Duration::from_millis(100);

/// Tokens are counted in billionths of a byte, so that refilling nanosecond by
/// nanosecond at any whole rate stays exact: `elapsed_nanos × rate` nano-tokens.
const NANO_TOKENS_PER_BYTE: i128 = 1_000_000_000;

/// A wait was given up because the caller asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

pub struct TokenBucket<C: PaceClock> {
    /// None: unlimited; `take` returns at once and never reads the clock.
    limit: Option<Limit>,
    clock: C,
}

struct Limit {
    bytes_per_second: i128,
    capacity_nano_tokens: i128,
    /// May go negative: a chunk takes its tokens first and then waits off the debt, so a
    /// chunk larger than what is left needs no special case.
    nano_tokens: i128,
    last_refill: Instant,
}

impl<C: PaceClock> TokenBucket<C> {
    /// A bucket for `bytes_per_second` (None: unlimited) that starts full. `largest_take`
    /// is the biggest chunk the caller will ask for; the capacity is at least that, so a
    /// chunk never waits longer than its own size at the rate.
    pub fn new(bytes_per_second: Option<NonZeroU64>, largest_take: usize, clock: C) -> Self {
        let limit = bytes_per_second.map(|rate| {
            let capacity = capacity_for(rate.get(), largest_take);
            Limit {
                bytes_per_second: i128::from(rate.get()),
                capacity_nano_tokens: i128::from(capacity) * NANO_TOKENS_PER_BYTE,
                nano_tokens: i128::from(capacity) * NANO_TOKENS_PER_BYTE,
                last_refill: clock.now(),
            }
        });
        TokenBucket { limit, clock }
    }

    /// The most bytes that can pass without waiting, after a long enough pause; None when
    /// unlimited.
    pub fn capacity(&self) -> Option<u64> {
        self.limit
            .as_ref()
            .map(|limit| (limit.capacity_nano_tokens / NANO_TOKENS_PER_BYTE) as u64)
    }

    /// Wait until `bytes` may be written at the rate. `should_stop` is asked before every
    /// sleep slice; when it says yes the wait ends with `Stopped` (the bytes count as
    /// taken: the caller is about to give up the stream anyway).
    pub fn take(&mut self, bytes: usize, should_stop: impl Fn() -> bool) -> Result<(), Stopped> {
        let Some(limit) = &mut self.limit else {
            return Ok(());
        };
        limit.refill(self.clock.now());
        limit.nano_tokens -= bytes as i128 * NANO_TOKENS_PER_BYTE;
        while limit.nano_tokens < 0 {
            if should_stop() {
                return Err(Stopped);
            }
            // Round up: waking a nanosecond early would only cost another slice.
            let deficit_nanos =
                (-limit.nano_tokens + limit.bytes_per_second - 1) / limit.bytes_per_second;
            let slice = deficit_nanos.min(MAX_SLEEP_SLICE.as_nanos() as i128);
            self.clock.sleep(Duration::from_nanos(slice as u64));
            limit.refill(self.clock.now());
        }
        Ok(())
    }
}

impl Limit {
    fn refill(&mut self, now: Instant) {
        let elapsed_nanos =
            i128::try_from(now.saturating_duration_since(self.last_refill).as_nanos())
                .unwrap_or(i128::MAX);
        // Saturating: after a long enough pause the bucket is simply full.
        let added = elapsed_nanos.saturating_mul(self.bytes_per_second);
        self.nano_tokens = self
            .nano_tokens
            .saturating_add(added)
            .min(self.capacity_nano_tokens);
        self.last_refill = now;
    }
}

/// A quarter of a second of traffic, and at least one chunk. Small enough that the link
/// sees a steady stream rather than bursts, large enough that a slow read or a late
/// wake-up is made up by the next chunks instead of lowering the average.
fn capacity_for(bytes_per_second: u64, largest_take: usize) -> u64 {
    (bytes_per_second / 4).max(largest_take as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const CHUNK: usize = 1 << 20;

    /// Time that only moves when the bucket sleeps or the test says so. `oversleep` is
    /// added to every sleep, like a scheduler that wakes threads late.
    struct FakeClock {
        start: Instant,
        elapsed: Cell<Duration>,
        oversleep: Duration,
        sleeps: Cell<u32>,
        longest_sleep: Cell<Duration>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock::oversleeping(Duration::ZERO)
        }

        fn oversleeping(oversleep: Duration) -> FakeClock {
            FakeClock {
                start: Instant::now(),
                elapsed: Cell::new(Duration::ZERO),
                oversleep,
                sleeps: Cell::new(0),
                longest_sleep: Cell::new(Duration::ZERO),
            }
        }

        fn advance(&self, by: Duration) {
            self.elapsed.set(self.elapsed.get() + by);
        }

        fn elapsed(&self) -> Duration {
            self.elapsed.get()
        }
    }

    impl PaceClock for FakeClock {
        fn now(&self) -> Instant {
            self.start + self.elapsed.get()
        }

        fn sleep(&self, duration: Duration) {
            self.sleeps.set(self.sleeps.get() + 1);
            self.longest_sleep
                .set(self.longest_sleep.get().max(duration));
            self.advance(duration + self.oversleep);
        }
    }

    /// Read sizes a pipe really hands out: mostly full chunks, sometimes odd pieces.
    fn read_sizes() -> impl Iterator<Item = usize> {
        [
            CHUNK,
            CHUNK,
            65_536,
            CHUNK,
            1,
            CHUNK / 3,
            CHUNK,
            4_096,
            777_777,
        ]
        .into_iter()
        .cycle()
    }

    fn limit(bytes_per_second: u64) -> Option<NonZeroU64> {
        NonZeroU64::new(bytes_per_second)
    }

    fn never_stop() -> bool {
        false
    }

    /// Push `seconds` worth of the rate through the bucket as fast as it allows; the
    /// average rate over the whole run, initial burst included.
    fn average_rate(bytes_per_second: u64, seconds: u64, clock: &FakeClock) -> f64 {
        let mut bucket = TokenBucket::new(limit(bytes_per_second), CHUNK, clock);
        let total = bytes_per_second * seconds;
        let mut moved = 0u64;
        for size in read_sizes() {
            if moved >= total {
                break;
            }
            bucket.take(size, never_stop).unwrap();
            moved += size as u64;
        }
        moved as f64 / clock.elapsed().as_secs_f64()
    }

    fn assert_within_5_percent(actual: f64, wanted: u64, what: &str) {
        let error = (actual - wanted as f64).abs() / wanted as f64;
        assert!(
            error <= 0.05,
            "{what}: {actual:.0} B/s is {:.2}% off the limit {wanted} B/s",
            error * 100.0
        );
    }

    #[test]
    fn a_long_run_averages_the_limit_within_five_percent() {
        for rate in [800 * KIB, MIB, 7_340_033, 50 * MIB, 1 << 30] {
            let clock = FakeClock::new();
            let average = average_rate(rate, 60, &clock);
            assert_within_5_percent(average, rate, &format!("limit {rate}"));
        }
    }

    #[test]
    fn once_the_initial_bucket_is_spent_the_rate_is_exact() {
        for rate in [800 * KIB, 50 * MIB, 1 << 30] {
            let clock = FakeClock::new();
            let mut bucket = TokenBucket::new(limit(rate), CHUNK, &clock);
            let capacity = bucket.capacity().unwrap();
            // Spend the initial bucket, then time one second's worth of the rate.
            let mut spent = 0;
            while spent < capacity {
                let size = CHUNK.min((capacity - spent) as usize);
                bucket.take(size, never_stop).unwrap();
                spent += size as u64;
            }
            let started = clock.elapsed();
            let mut moved = 0u64;
            for size in read_sizes() {
                if moved + size as u64 > rate {
                    bucket.take((rate - moved) as usize, never_stop).unwrap();
                    break;
                }
                bucket.take(size, never_stop).unwrap();
                moved += size as u64;
            }
            let took = clock.elapsed() - started;
            // One second, give or take the nanosecond each wait is rounded up by.
            let off = took.abs_diff(Duration::from_secs(1));
            assert!(off < Duration::from_micros(100), "limit {rate}: {took:?}");
        }
    }

    #[test]
    fn sleeping_late_does_not_pull_the_average_below_the_limit() {
        for rate in [800 * KIB, 50 * MIB] {
            let clock = FakeClock::oversleeping(Duration::from_millis(7));
            let average = average_rate(rate, 60, &clock);
            assert_within_5_percent(average, rate, &format!("limit {rate}, waking 7ms late"));
        }
    }

    #[test]
    fn a_source_slower_than_the_limit_is_never_held_back() {
        let clock = FakeClock::new();
        let mut bucket = TokenBucket::new(limit(10 * MIB), CHUNK, &clock);
        for _ in 0..1_000 {
            // 1 MiB every 200 ms: 5 MiB/s, half the limit.
            clock.advance(Duration::from_millis(200));
            bucket.take(CHUNK, never_stop).unwrap();
        }
        assert_eq!(clock.sleeps.get(), 0);
    }

    #[test]
    fn after_a_pause_the_burst_is_bounded_by_the_bucket() {
        let rate = 40 * MIB;
        let clock = FakeClock::new();
        let mut bucket = TokenBucket::new(limit(rate), CHUNK, &clock);
        assert_eq!(bucket.capacity(), Some(10 * MIB), "a quarter second");
        bucket.take(CHUNK, never_stop).unwrap();
        clock.advance(Duration::from_secs(3600));
        let mut burst = 0u64;
        while clock.sleeps.get() == 0 {
            bucket.take(CHUNK, never_stop).unwrap();
            if clock.sleeps.get() == 0 {
                burst += CHUNK as u64;
            }
        }
        assert_eq!(
            burst,
            10 * MIB,
            "an hour of idling saves up one bucket, no more"
        );
    }

    #[test]
    fn no_interval_carries_more_than_the_bucket_plus_the_rate() {
        let rate = 3 * MIB;
        let clock = FakeClock::new();
        let mut bucket = TokenBucket::new(limit(rate), CHUNK, &clock);
        let capacity = bucket.capacity().unwrap();
        // When each chunk was released, and the bytes released up to then.
        let mut released: Vec<(Duration, u64)> = Vec::new();
        let mut moved = 0u64;
        for (index, size) in read_sizes().take(300).enumerate() {
            if index % 50 == 0 {
                clock.advance(Duration::from_secs(2)); // a pause refills the bucket
            }
            bucket.take(size, never_stop).unwrap();
            moved += size as u64;
            released.push((clock.elapsed(), moved));
        }
        for (a, &(start, before)) in released.iter().enumerate() {
            for &(end, after) in &released[a + 1..] {
                // The chunks released after `start` up to `end`, in exact integers.
                let bytes = i128::from(after - before);
                let allowed_nano_bytes = i128::from(capacity) * NANO_TOKENS_PER_BYTE
                    + (end - start).as_nanos() as i128 * i128::from(rate);
                assert!(
                    bytes * NANO_TOKENS_PER_BYTE <= allowed_nano_bytes,
                    "{bytes} bytes between {start:?} and {end:?}"
                );
            }
        }
    }

    #[test]
    fn the_bucket_holds_a_quarter_second_but_at_least_one_chunk() {
        let clock = FakeClock::new();
        let capacity = |rate| TokenBucket::new(limit(rate), CHUNK, &clock).capacity();
        assert_eq!(capacity(400 * MIB), Some(100 * MIB));
        assert_eq!(capacity(800 * KIB), Some(MIB));
        assert_eq!(capacity(1), Some(MIB));
        assert_eq!(capacity(u64::MAX), Some(u64::MAX / 4));
        assert_eq!(capacity(0), None, "0 is unlimited");
    }

    #[test]
    fn unlimited_never_sleeps() {
        let clock = FakeClock::new();
        let mut bucket = TokenBucket::new(None, CHUNK, &clock);
        for size in read_sizes().take(10_000) {
            bucket.take(size, never_stop).unwrap();
        }
        assert_eq!(clock.sleeps.get(), 0);
        assert_eq!(clock.elapsed(), Duration::ZERO);
    }

    #[test]
    fn the_highest_rates_neither_overflow_nor_wait() {
        let clock = FakeClock::new();
        let mut bucket = TokenBucket::new(limit(u64::MAX), CHUNK, &clock);
        // A thousand years idle: enough for `elapsed × rate` to overflow 128 bits.
        clock.advance(Duration::from_secs(1_000 * 365 * 86_400));
        for size in read_sizes().take(1_000) {
            bucket.take(size, never_stop).unwrap();
        }
        assert_eq!(clock.sleeps.get(), 0);
    }

    #[test]
    fn a_long_wait_sleeps_in_short_slices_and_stops_when_asked() {
        let clock = FakeClock::new();
        // 1 KiB/s: the second chunk would wait 1024 s.
        let mut bucket = TokenBucket::new(limit(KIB), CHUNK, &clock);
        bucket.take(CHUNK, never_stop).unwrap();
        let asked = Cell::new(0);
        let stop_on_third_question = || {
            asked.set(asked.get() + 1);
            asked.get() >= 3
        };
        assert_eq!(bucket.take(CHUNK, stop_on_third_question), Err(Stopped));
        assert_eq!(clock.sleeps.get(), 2);
        assert_eq!(clock.longest_sleep.get(), MAX_SLEEP_SLICE);
        assert_eq!(clock.elapsed(), 2 * MAX_SLEEP_SLICE);
    }

    #[test]
    fn the_real_clock_sleeps_for_real() {
        let started = Instant::now();
        RealClock.sleep(Duration::from_millis(20));
        assert!(RealClock.now() - started >= Duration::from_millis(20));
    }
}
