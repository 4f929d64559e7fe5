//! TCP connections that put many HTTP/2 frames into one `send`. On loopback the kernel's TCP
//! path (which also runs the receiver's side) was half of the server's CPU, because hyper's
//! HTTP/2 connection wrote almost every response with a system call or two of its own. Two
//! things caused that, and [`CoalescingTcp`] undoes both:
//!
//! - h2 copies a DATA frame's payload into its write buffer only below a threshold: 256 bytes
//!   when the connection says it can write vectored I/O, 1,024 when it cannot. A larger
//!   payload waits in place, and h2 must write it out before it buffers the next frame: a
//!   256-byte value in a response meant one write for the response and another for its
//!   trailers. This connection says it cannot write vectored I/O.
//! - A request's handler runs as a task of its own; when it finishes it wakes the connection's
//!   task, which tokio runs next, so each response went out alone while the handlers of the
//!   requests that arrived with it were still queued. While its owner says more frames are
//!   on their way (the connection's `busy` function: in the server, any client request being
//!   handled), the connection yields once before a write, so those tasks run first and their
//!   frames join the same write. Otherwise (a lone client) it writes at once, adding no
//!   latency.
//!
//! The price: a DATA payload over 1 KiB (a long range result, a snapshot chunk) goes out with
//! a `send` of its own after the frames before it, where a vectored write would have taken
//! one system call for both; such payloads are few and large, so the copy-free send is cheap
//! beside them.
//!
//! The load generator's connections do the same for requests. Measured with `cairn-bench
//! range --consistency s --clients 256 --conns 16` against one member: system calls that send,
//! per response, 1.78 → 0.09, and server CPU per request 14.5 → 8.1 µs.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A count of things under way (requests being handled, requests awaiting their responses),
/// kept in a `static` that a connection's `busy` function reads.
pub struct Gauge(AtomicUsize);

impl Gauge {
    /// A gauge at zero (for a `static`).
    pub const fn new() -> Gauge {
        Gauge(AtomicUsize::new(0))
    }

    /// Counts one more until the returned guard is dropped.
    pub fn enter(&'static self) -> Entered {
        self.0.fetch_add(1, Ordering::Relaxed);
        Entered(self)
    }

    /// The current count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Self {
        Gauge::new()
    }
}

/// One count of a [`Gauge`], for as long as it lives.
pub struct Entered(&'static Gauge);

impl Drop for Entered {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP connection that coalesces writes (see the crate comment).
pub struct CoalescingTcp {
    stream: TcpStream,
    /// Whether more frames are on their way, so a write may wait for them.
    busy: fn() -> bool,
    /// Whether this connection has yielded since its last flush.
    yielded: bool,
}

impl CoalescingTcp {
    /// Wraps `stream`; `busy` is asked before the first write of each flush.
    pub fn new(stream: TcpStream, busy: fn() -> bool) -> Self {
        CoalescingTcp {
            stream,
            busy,
            yielded: false,
        }
    }

    /// The underlying stream (for its addresses).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for CoalescingTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CoalescingTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.yielded && (this.busy)() {
            // Waking itself puts the task behind the tasks already queued (tokio treats it as
            // a yield); the write happens when it runs again.
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.yielded = false;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    use tokio::io::AsyncReadExt;

    use super::*;

    /// Counts its wake-ups.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_connection_yields_once_per_flush_only_while_busy() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        static HANDLING: Gauge = Gauge::new();
        let mut conn =
            CoalescingTcp::new(listener.accept().await.unwrap().0, || HANDLING.get() > 0);
        assert!(!conn.is_write_vectored(), "h2 must copy small frames");
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut write =
            |conn: &mut CoalescingTcp, bytes: &[u8]| Pin::new(conn).poll_write(&mut cx, bytes);

        // Nothing being handled: written at once.
        assert!(matches!(write(&mut conn, b"a"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);

        let handling = HANDLING.enter();
        // The first write of a flush yields (and wakes the task to run it again)...
        assert!(write(&mut conn, b"b").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        // ...and the retry, like every later write before the flush, goes through.
        assert!(matches!(write(&mut conn, b"b"), Poll::Ready(Ok(1))));
        assert!(matches!(write(&mut conn, b"c"), Poll::Ready(Ok(1))));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        let flushed = Pin::new(&mut conn).poll_flush(&mut Context::from_waker(&waker));
        assert!(matches!(flushed, Poll::Ready(Ok(()))));
        // A new flush cycle yields again.
        assert!(write(&mut conn, b"d").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        drop(handling);
        assert!(matches!(write(&mut conn, b"d"), Poll::Ready(Ok(1))));

        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd", "every byte arrives once, in order");
    }
}
