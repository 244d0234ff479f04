//! A request deadline that costs no timer operation per request. `tokio::time::timeout`
//! inserts a timer into the wheel and removes it again for every request, which on a
//! keep-alive connection cost more instructions than writing and reading the request. A
//! connection keeps one `Sleep` instead; deadlines of later requests are later, so the sleep is
//! left where it is and, when it fires early (for a request long finished), moved to the
//! current request's deadline. Such a connection touches the wheel about once per `-t`.

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    task::Poll,
    time::Duration,
};

use tokio::time::{Instant, Sleep};

/// The request ran past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pub struct Timer {
    sleep: Pin<Box<Sleep>>,
}

impl Default for Timer {
    fn default() -> Timer {
        // Far enough never to fire before the first request moves it; near enough for the wheel.
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(far)),
        }
    }
}

impl Timer {
    /// Runs `fut` to completion or until `deadline`, whichever comes first.
    pub async fn run<F: Future>(
        &mut self,
        deadline: Instant,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
        let mut fut = pin!(fut);
        let sleep = &mut self.sleep;
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            loop {
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    // The sleep is never later than `deadline`: firing at it means time is up.
                    Poll::Ready(()) if sleep.deadline() >= deadline => {
                        return Poll::Ready(Err(Elapsed));
                    }
                    // Fired for an earlier request's deadline: move it to this one's.
                    Poll::Ready(()) => sleep.as_mut().reset(deadline),
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_forward_and_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut t = Timer::default();
            let ms = Duration::from_millis;
            let now = Instant::now();
            // Finishes before its deadline.
            assert_eq!(t.run(now + ms(50), async { 1 }).await, Ok(1));
            // A later deadline with a slow future: the sleep (still at +50 ms) fires early, moves
            // to +100 ms, and the future wins at +80 ms.
            let r = t
                .run(now + ms(100), tokio::time::sleep_until(now + ms(80)))
                .await;
            assert_eq!(r, Ok(()));
            assert_eq!(Instant::now(), now + ms(80));
            // Times out exactly at its deadline.
            let r = t.run(now + ms(150), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Elapsed));
            assert_eq!(Instant::now(), now + ms(150));
            // A deadline earlier than the sleep's (a new timer's is far ahead) is honoured.
            let r = Timer::default()
                .run(now + ms(200), std::future::pending::<()>())
                .await;
            assert_eq!(r, Err(Elapsed));
            assert_eq!(Instant::now(), now + ms(200));
        });
    }
}
