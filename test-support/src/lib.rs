//! Helpers shared by the integration tests of the workspace's crates.
//!
//! Tests wait on conditions with deadlines, never on bare sleeps: the helpers
//! here are the one place that loop lives. A check is tried, and tried again
//! after a short pause, until it says the condition holds or the deadline
//! passes; then the test fails with a message naming what it waited for, the
//! deadline, and what the check last saw when it said why not.
//!
//! Three shapes of the same loop:
//!
//! - [`wait_until`]: a quick synchronous check (a file exists, a counter
//!   moved), in an async test;
//! - [`wait_until_async`]: a check that is itself async (a request to the
//!   puppeteer), in an async test;
//! - [`block_until`]: a synchronous check in a synchronous test (the CLI's
//!   end-to-end tests, which run the binary as an operator would).
//!
//! A check returns an [`Outcome`]: `bool`, `Option<T>` (the value waited
//! for), or `Result<T, E>` whose error says what was seen instead and goes
//! into the failure message.
//!
//! The async helpers read tokio's clock, so a test with paused time gets a
//! deadline in that time, as its own sleeps are.
//!
//! [`postgres`] gives tests a real PostgreSQL server, of the test process's
//! own, and a fresh database on it for each test.

use std::fmt::Display;
use std::time::Duration;

#[cfg(target_os = "linux")]
pub mod postgres;

/// The first pause between two checks: a condition about to hold is seen
/// at once.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause between two checks: a slow condition costs at most
/// this much more than it took, and a server being asked is not hammered.
const LONGEST_PAUSE: Duration = Duration::from_millis(100);

/// What one check said: the condition holds (with the value waited for), or
/// not yet.
pub trait Outcome {
    /// What the wait returns once the condition holds.
    type Value;

    /// `Ok` when the condition holds; otherwise what the check saw instead,
    /// when it says.
    fn outcome(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();

    fn outcome(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;

    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

/// `Err` is "not yet", and what it holds is shown if the wait fails.
impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;

    fn outcome(self) -> Result<T, Option<String>> {
        self.map_err(|seen| Some(seen.to_string()))
    }
}

/// Waits until `check` says the condition holds, checking it again after a
/// short pause each time; returns the value it gave.
///
/// # Panics
///
/// When the condition does not hold within `deadline`, with a message
/// naming `what`, phrased as the condition: "the script is gone".
pub async fn wait_until<O: Outcome>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> O,
) -> O::Value {
    let until = tokio::time::Instant::now() + deadline;
    let mut pauses = Pauses::default();
    loop {
        let last = match check().outcome() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= until {
            timed_out(what, deadline, last);
        }
        tokio::time::sleep(pauses.next()).await;
    }
}

/// Like [`wait_until`], for a check that is itself async (a request to a
/// server). A check still running at the deadline is abandoned: the wait
/// fails on time even if the server never answers.
///
/// # Panics
///
/// When the condition does not hold within `deadline`.
pub async fn wait_until_async<O: Outcome>(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> O,
) -> O::Value {
    let mut last = None;
    let waiting = async {
        let mut pauses = Pauses::default();
        loop {
            match check().await.outcome() {
                Ok(value) => return value,
                Err(seen) => last = seen,
            }
            tokio::time::sleep(pauses.next()).await;
        }
    };
    match tokio::time::timeout(deadline, waiting).await {
        Ok(value) => value,
        Err(_) => timed_out(what, deadline, last),
    }
}

/// Like [`wait_until`], for a synchronous test: the thread sleeps between
/// checks.
///
/// # Panics
///
/// When the condition does not hold within `deadline`.
pub fn block_until<O: Outcome>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> O,
) -> O::Value {
    let until = std::time::Instant::now() + deadline;
    let mut pauses = Pauses::default();
    loop {
        let last = match check().outcome() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if std::time::Instant::now() >= until {
            timed_out(what, deadline, last);
        }
        std::thread::sleep(pauses.next());
    }
}

/// The pauses between checks: doubling from [`FIRST_PAUSE`] up to
/// [`LONGEST_PAUSE`].
#[derive(Debug, Default)]
struct Pauses {
    last: Option<Duration>,
}

impl Pauses {
    fn next(&mut self) -> Duration {
        let pause = match self.last {
            None => FIRST_PAUSE,
            Some(last) => (last * 2).min(LONGEST_PAUSE),
        };
        self.last = Some(pause);
        pause
    }
}

fn timed_out(what: &str, deadline: Duration, last: Option<String>) -> ! {
    match last {
        Some(seen) => {
            panic!("timed out after {deadline:?} waiting until {what}; last seen: {seen}")
        }
        None => panic!("timed out after {deadline:?} waiting until {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(50);

    #[test]
    fn pauses_double_up_to_the_longest() {
        let mut pauses = Pauses::default();
        let taken: Vec<u128> = (0..6).map(|_| pauses.next().as_millis()).collect();
        assert_eq!(taken, [10, 20, 40, 80, 100, 100]);
    }

    #[tokio::test]
    async fn a_condition_that_comes_to_hold_returns_its_value() {
        let mut checks = 0;
        let value = wait_until("the third check passes", Duration::from_secs(10), || {
            checks += 1;
            (checks == 3).then_some(checks)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn an_async_check_may_borrow_mutably() {
        let mut seen = Vec::new();
        let count = wait_until_async(
            "three values are seen",
            Duration::from_secs(10),
            async || {
                tokio::task::yield_now().await;
                seen.push(seen.len());
                if seen.len() == 3 {
                    Ok(seen.len())
                } else {
                    Err(format!("{seen:?}"))
                }
            },
        )
        .await;
        assert_eq!(count, 3);
    }

    #[test]
    fn a_blocking_wait_returns_as_the_others_do() {
        let mut checks = 0;
        block_until("the second check passes", Duration::from_secs(10), || {
            checks += 1;
            checks == 2
        });
        assert_eq!(checks, 2);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting until pigs fly")]
    async fn a_condition_that_never_holds_fails_naming_it_and_the_deadline() {
        wait_until("pigs fly", SHORT, || false).await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until the answer is 42; last seen: still 7")]
    async fn the_failure_shows_what_the_check_saw_last() {
        wait_until_async("the answer is 42", SHORT, async || Err::<(), _>("still 7")).await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting until a hung server answers")]
    async fn a_check_that_never_returns_fails_at_the_deadline() {
        wait_until_async("a hung server answers", SHORT, async || {
            std::future::pending::<bool>().await
        })
        .await;
    }

    #[test]
    #[should_panic(
        expected = "timed out after 50ms waiting until the process exits; last seen: running"
    )]
    fn a_blocking_wait_fails_the_same_way() {
        block_until("the process exits", SHORT, || Err::<(), _>("running"));
    }
}
