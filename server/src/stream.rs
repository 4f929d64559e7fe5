//! Response streams that behave like grpc-go's: the response headers of a server stream go out
//! with its first message, not before. Clients rely on this without knowing it — etcd-client's
//! `watch()` returns once headers arrive, which with etcd means the watcher already exists — so
//! the handler returns only after the first message is ready.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// A response stream whose first item was awaited before the handler returned.
pub type HeadersWithFirst<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Waits for the first message in `rx`, then returns a stream of it and every later one.
pub async fn headers_with_first<T: Send + 'static>(
    mut rx: mpsc::Receiver<Result<T, Status>>,
) -> HeadersWithFirst<T> {
    let first = rx.recv().await;
    Box::pin(futures::stream::iter(first).chain(ReceiverStream::new(rx)))
}
