//! [`WriteTimeout`]: a connection whose writes may not stay blocked for longer than a
//! limit. A client that stops reading a follow fills its socket's buffers; then every
//! write blocks. Past the limit the write fails and hyper closes the connection: the
//! client keeps its cursor and resumes exactly when it reconnects, and the server stops
//! holding buffers for it.
//!
//! This sees only the socket. An HTTP/2 client can stall a stream without ever
//! blocking a write (it keeps the stream's flow-control window at zero, so hyper just
//! stops sending it, while PINGs and other streams go on): the same limit is applied
//! per response by [`connections`](super::connections)' stall limit.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

pub struct WriteTimeout<T> {
    inner: T,
    limit: Duration,
    /// Armed while a write is blocked; cleared by any write that goes through.
    blocked_since: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            blocked_since: None,
        }
    }

    /// The connection itself, to look at what it holds without reading it (`peek`).
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Maps a write's poll: a ready write disarms the timer, a blocked one arms it (if
    /// it is not already) and fails once it fires.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        match poll {
            Poll::Ready(result) => {
                self.blocked_since = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .blocked_since
                    .get_or_insert_with(|| Box::pin(sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_write_blocked_past_the_limit_fails_and_one_that_goes_through_does_not() {
        // A pipe of 64 bytes that nobody reads: the second write blocks for good.
        let (client, _server) = tokio::io::duplex(64);
        let mut writer = WriteTimeout::new(client, Duration::from_millis(50));
        writer.write_all(&[0; 64]).await.unwrap();
        let started = Instant::now();
        let error = writer.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
