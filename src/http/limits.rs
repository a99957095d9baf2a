//! A request body's deadline: it must arrive in full within the server's
//! `body_read_timeout` of its head. An idle timeout would not do: a client
//! trickling one byte a second is never idle, and would hold its connection (and
//! the handler reading it) for as long as it liked.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error a body past its deadline ends with; the extractors wrap it, and
/// [`timed_out`] finds it again.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within its deadline")]
pub struct BodyTimedOut;

/// `inner`, failing with [`BodyTimedOut`] once `timeout` has passed since it was
/// wrapped.
pub struct Deadline<B> {
    inner: B,
    until: Instant,
    /// Made on the first poll that has to wait: a body that is already whole (or
    /// empty) never sets a timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, timeout: Duration) -> Deadline<B> {
        Deadline {
            inner,
            until: Instant::now() + timeout,
            sleep: None,
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let until = this.until;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (an extractor's rejection, a multipart error) came from a body
/// past its deadline.
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<BodyTimedOut>() {
            return true;
        }
        next = error.source();
    }
    // Not every wrapper hands on its source (multipart's parser keeps it to
    // itself), but each shows it when debug-printed.
    format!("{error:?}").contains("BodyTimedOut")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body as AxumBody;
    use futures_util::stream;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_at_its_deadline_and_a_prompt_one_passes() {
        // One byte a second, forever: never idle, never done.
        let trickle = stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), ()))
        });
        let body = Deadline::new(AxumBody::from_stream(trickle), Duration::from_secs(5));
        let started = Instant::now();
        let error = body.collect().await.expect_err("the deadline ends it");
        assert!(timed_out(&*error), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let whole = Deadline::new(AxumBody::from("{}"), Duration::from_secs(5));
        assert_eq!(whole.collect().await.unwrap().to_bytes(), "{}");
    }
}
