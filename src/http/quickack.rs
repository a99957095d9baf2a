//! Acknowledging a request's bytes at once, so that a client's Nagle does not wait
//! on our delayed ACK.
//!
//! A client that writes a request head and its body in two writes, with Nagle on
//! (many do), holds the body until the head is acknowledged; Linux delays that ACK
//! up to 40 ms when it has nothing to send back — and a gateway has nothing to send
//! until it has the body. Every such request then waits 40 ms. `TCP_QUICKACK` asks
//! for the ACK now; the kernel drops back to delayed ACKs on its own, so it is set
//! each time.
//!
//! It is needed only when we wait for more of what the client is sending: bytes
//! came in, none of ours went out since (an answer carries the ACK), and the next
//! read finds nothing. And only when what came in looks unfinished: it ends a line
//! (a request head, a chunk of a chunked body) or filled the read buffer (a large
//! body). A request whose JSON body arrives with its head in one write ends neither
//! way, and is answered without the extra system call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that acknowledges what it reads at once when it must wait for more.
pub struct QuickAck {
    stream: TcpStream,
    /// Bytes that look unfinished were read since we last wrote or acknowledged.
    unacked: bool,
}

impl From<TcpStream> for QuickAck {
    fn from(stream: TcpStream) -> Self {
        QuickAck {
            stream,
            unacked: false,
        }
    }
}

impl QuickAck {
    fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let on: libc::c_int = 1;
            // SAFETY: a valid socket descriptor (the stream is alive), an option
            // value of the size given; a failure only leaves delayed ACKs on.
            unsafe {
                libc::setsockopt(
                    self.stream.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// What we send carries the ACK of what we have read.
    fn sent(&mut self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.unacked = false;
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let unfinished = buf.remaining() == 0 || buf.filled().ends_with(b"\n");
                self.unacked |= unfinished;
            }
            Poll::Pending if self.unacked => {
                self.ack_now();
                self.unacked = false;
            }
            _ => {}
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, data);
        self.sent(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.sent(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
