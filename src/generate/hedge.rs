//! Hedging (`[models.ALIAS] hedge_after`): when a target has not given its first
//! token after the alias's delay, the next target is started beside it, and
//! whichever answers first is served. The other is dropped, which cancels its call.
//! At most one extra request runs per call.

use std::future::Future;
use std::time::Duration;

/// How a race between a target and its hedge ended. At most one of the two holds
/// an answer: the winner. The other holds its error, or `None`: cancelled, or
/// never started.
pub(super) struct Race<T, E> {
    pub first: Option<Result<T, E>>,
    pub second: Option<Result<T, E>>,
    /// The hedge was started.
    pub hedged: bool,
}

/// Runs `first`; if it has not finished after `delay`, starts `second()` beside
/// it. The first of the two to answer wins and the other is dropped; one that
/// fails leaves the other to finish.
pub(super) async fn race<T, E, F, S>(
    first: F,
    delay: Duration,
    second: impl FnOnce() -> S,
) -> Race<T, E>
where
    F: Future<Output = Result<T, E>>,
    S: Future<Output = Result<T, E>>,
{
    tokio::pin!(first);
    tokio::select! {
        done = &mut first => {
            return Race { first: Some(done), second: None, hedged: false };
        }
        () = tokio::time::sleep(delay) => {}
    }
    let second = second();
    tokio::pin!(second);
    let (first, second) = tokio::select! {
        done = &mut first => match done {
            Ok(answer) => (Some(Ok(answer)), None),
            Err(error) => (Some(Err(error)), Some(second.await)),
        },
        done = &mut second => match done {
            Ok(answer) => (None, Some(Ok(answer))),
            Err(error) => (Some(first.await), Some(Err(error))),
        },
    };
    Race {
        first,
        second,
        hedged: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn after(
        ms: u64,
        result: Result<&'static str, &'static str>,
    ) -> Result<&'static str, &'static str> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        result
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_to_answer_wins_and_the_hedge_starts_only_when_due() {
        let delay = Duration::from_millis(100);
        // Answered before the hedge was due: no hedge.
        let mut started = false;
        let race = super::race(after(50, Ok("first")), delay, || {
            started = true;
            after(0, Ok("second"))
        })
        .await;
        assert!(!race.hedged && !started);
        assert_eq!(race.first, Some(Ok("first")));
        // A slow first loses to the hedge, and is dropped.
        let race = super::race(after(1_000, Ok("first")), delay, || after(10, Ok("second"))).await;
        assert!(race.hedged);
        assert_eq!((race.first, race.second), (None, Some(Ok("second"))));
        // A hedge that fails leaves the first to finish.
        let race = super::race(after(300, Ok("first")), delay, || after(10, Err("down"))).await;
        assert_eq!(
            (race.first, race.second),
            (Some(Ok("first")), Some(Err("down")))
        );
        // Both fail.
        let race = super::race(after(300, Err("a")), delay, || after(10, Err("b"))).await;
        assert_eq!((race.first, race.second), (Some(Err("a")), Some(Err("b"))));
    }
}
