//! turmoil's simulated TCP as a cairn [`Network`]: members listen and dial through it, and so
//! do the simulated clients, so every byte between hosts crosses the faulty simulated network.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use raftlog::transport::{Conn, Incoming, Io, NetFuture, Network, Transport};
use tonic::transport::{Channel, Endpoint};

/// turmoil's network.
pub struct SimNet;

impl Network for SimNet {
    fn listen(&self, addr: SocketAddr) -> NetFuture<(SocketAddr, Incoming)> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let conn = listener
                    .accept()
                    .await
                    .map(|(stream, _)| Conn::Custom(Box::new(stream)));
                Some((conn, listener))
            })
            .boxed();
            Ok((local, incoming as Incoming))
        })
    }

    fn connect(&self, host: String, port: u16) -> NetFuture<Box<dyn Io>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(format!("{host}:{port}")).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }
}

/// The transport a simulated member is configured with.
pub fn transport() -> Transport {
    Transport::Custom(std::sync::Arc::new(SimNet))
}

/// A client channel to `host`'s client port through the simulated network.
pub fn client_channel(host: &str) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{host}:2379"))
        .expect("a valid URL")
        .connect_timeout(Duration::from_millis(500))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1));
    transport().channel(endpoint)
}
