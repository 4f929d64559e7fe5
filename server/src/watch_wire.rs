//! The Watch service on the wire. A batch of events usually goes to many watchers of one
//! stream (Kubernetes' informers, or etcd's benchmark: a hundred watchers per stream), and
//! each watcher gets its own `WatchResponse` that differs from the others' only in its watch
//! ID. So a stream encodes the batch's header and each distinct selection of its events once,
//! and a watcher's response is those shared bytes around its ID ([`EncodedEvents`]), which
//! [`WatchCodec`] copies into the gRPC frame. The bytes are exactly what prost would write for
//! the same `WatchResponse`. Every other response (created, canceled, progress, fragments,
//! catch-up from history) is a plain message that prost encodes.
//!
//! Using a codec of our own means the service's gRPC binding is written here by hand
//! ([`WatchServer`]) instead of generated: it routes `/etcdserverpb.Watch/Watch` the way the
//! generated server would, and answers any other method with `Unimplemented`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use etcd_proto::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use etcd_proto::mvccpb::Event;
use prost::encoding::{self, WireType};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::Status;

use crate::stream::HeadersWithFirst;
use crate::watch::WatchService;

/// `WatchResponse.header`'s field number.
const HEADER_FIELD: u32 = 1;
/// `WatchResponse.watch_id`'s field number.
const WATCH_ID_FIELD: u32 = 2;
/// `WatchResponse.events`' field number.
const EVENTS_FIELD: u32 = 11;

/// One message of a watch stream.
pub enum WatchOut {
    /// A response prost encodes.
    Message(WatchResponse),
    /// Events for one watcher, encoded once for the stream.
    Events(EncodedEvents),
}

/// A `WatchResponse` with a header, a watch ID and events, and no other field set: the header
/// and events fields come encoded (tags and lengths included) and are shared by every watcher
/// of the stream that gets the same events.
pub struct EncodedEvents {
    pub header: Bytes,
    pub watch_id: i64,
    pub events: Bytes,
}

/// The length of `WatchResponse.watch_id` as prost writes it (nothing for 0).
pub fn watch_id_len(watch_id: i64) -> usize {
    if watch_id != 0 {
        encoding::int64::encoded_len(WATCH_ID_FIELD, &watch_id)
    } else {
        0
    }
}

impl EncodedEvents {
    /// The response's encoded length (what prost's `encoded_len` would say).
    pub fn encoded_len(&self) -> usize {
        self.header.len() + watch_id_len(self.watch_id) + self.events.len()
    }

    /// Writes the response, its fields in field-number order as prost writes them.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.header);
        if self.watch_id != 0 {
            encoding::int64::encode(WATCH_ID_FIELD, &self.watch_id, buf);
        }
        buf.put_slice(&self.events);
    }
}

/// `header` as `WatchResponse`'s field 1.
pub fn encode_header(header: &ResponseHeader) -> Bytes {
    let mut buf = BytesMut::with_capacity(header.encoded_len() + 2);
    encoding::message::encode(HEADER_FIELD, header, &mut buf);
    buf.freeze()
}

/// Appends `e` as one element of `WatchResponse`'s field 11, with its `prev_kv` only if
/// `with_prev_kv` (a watcher that did not ask for it does not get it). Nothing is copied
/// into a new `Event` first.
pub fn encode_event(e: &Event, with_prev_kv: bool, buf: &mut BytesMut) {
    let prev_kv = e.prev_kv.as_ref().filter(|_| with_prev_kv);
    let len = event_len(e, with_prev_kv);
    encoding::encode_key(EVENTS_FIELD, WireType::LengthDelimited, buf);
    encoding::encode_varint(len as u64, buf);
    if e.r#type != 0 {
        encoding::int32::encode(1, &e.r#type, buf);
    }
    if let Some(kv) = &e.kv {
        encoding::message::encode(2, kv, buf);
    }
    if let Some(prev) = prev_kv {
        encoding::message::encode(3, prev, buf);
    }
}

/// The length of the `Event` message `encode_event` writes (without its tag and length).
fn event_len(e: &Event, with_prev_kv: bool) -> usize {
    let mut len = 0;
    if e.r#type != 0 {
        len += encoding::int32::encoded_len(1, &e.r#type);
    }
    if let Some(kv) = &e.kv {
        len += encoding::message::encoded_len(2, kv);
    }
    if let Some(prev) = e.prev_kv.as_ref().filter(|_| with_prev_kv) {
        len += encoding::message::encoded_len(3, prev);
    }
    len
}

/// What `encode_event` appends for `e`, in bytes.
pub fn event_field_len(e: &Event, with_prev_kv: bool) -> usize {
    let len = event_len(e, with_prev_kv);
    encoding::key_len(EVENTS_FIELD) + encoding::encoded_len_varint(len as u64) + len
}

/// The encoded events field for each distinct selection of a batch's events that the
/// watchers of one stream want, made the first time a watcher wants that selection.
pub struct BatchEncodings<'a> {
    events: &'a [Event],
    /// (event indices, with prev_kv, encoded field); searched linearly, the most recent first.
    made: Vec<(Vec<u32>, bool, Bytes)>,
}

/// Distinct selections a stream remembers per batch (more are encoded each time).
const SELECTIONS_KEPT_MAX: usize = 64;

impl<'a> BatchEncodings<'a> {
    pub fn new(events: &'a [Event]) -> Self {
        BatchEncodings {
            events,
            made: Vec::new(),
        }
    }

    /// The events selections are made from.
    pub fn events(&self) -> &'a [Event] {
        self.events
    }

    /// The length of what `select` returns for the same arguments, without encoding.
    pub fn selection_len(&self, indices: &[u32], with_prev_kv: bool) -> usize {
        indices
            .iter()
            .map(|&i| event_field_len(&self.events[i as usize], with_prev_kv))
            .sum()
    }

    /// The events at `indices`, in order, as `WatchResponse`'s field 11.
    pub fn select(&mut self, indices: &[u32], with_prev_kv: bool) -> Bytes {
        if let Some((_, _, bytes)) = self
            .made
            .iter()
            .rev()
            .find(|(i, p, _)| *p == with_prev_kv && i == indices)
        {
            return bytes.clone();
        }
        let mut buf = BytesMut::new();
        for &i in indices {
            encode_event(&self.events[i as usize], with_prev_kv, &mut buf);
        }
        let bytes = buf.freeze();
        if self.made.len() < SELECTIONS_KEPT_MAX {
            self.made
                .push((indices.to_vec(), with_prev_kv, bytes.clone()));
        }
        bytes
    }
}

/// The buffer a watch stream's responses are encoded into, and how much of it goes out at
/// once (HTTP/2's default frame size); see `WatchCodec::buffer_settings`. 64 KiB is also the
/// most a `BytesMut` asks for when it replaces a buffer it has split off.
const WATCH_BUFFER_BYTES: usize = 64 << 10;
const WATCH_YIELD_BYTES: usize = 16 << 10;

/// Encodes [`WatchOut`]s and decodes `WatchRequest`s.
#[derive(Clone, Copy, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = WatchOut;
    type Decode = WatchRequest;
    type Encoder = WatchCodec;
    type Decoder = WatchCodec;

    fn encoder(&mut self) -> Self::Encoder {
        WatchCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        WatchCodec
    }
}

impl Encoder for WatchCodec {
    type Item = WatchOut;
    type Error = Status;

    fn encode(&mut self, item: WatchOut, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if let WatchOut::Events(events) = &item {
            // Grow the buffer once for the whole response, not step by step as it is written.
            buf.reserve(events.encoded_len());
        }
        match item {
            WatchOut::Message(resp) => resp
                .encode(buf)
                .map_err(|e| Status::internal(e.to_string())),
            WatchOut::Events(events) => {
                events.encode(buf);
                Ok(())
            }
        }
    }

    /// tonic writes the responses that are ready into one buffer until it holds the yield
    /// threshold, and sends what it holds. With its defaults (an 8 KiB buffer, 32 KiB sends)
    /// each send grew the buffer through three reallocations, copying what it held each time
    /// (a profile of 1,000 watchers put those copies at 7 % of the server's CPU). A buffer
    /// that holds several sends is split off send by send; only the send that reaches its
    /// end is copied into the next one.
    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(WATCH_BUFFER_BYTES, WATCH_YIELD_BYTES)
    }
}

impl Decoder for WatchCodec {
    type Item = WatchRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<WatchRequest>, Status> {
        WatchRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// The Watch service's gRPC server (see the module comment).
#[derive(Clone)]
pub struct WatchServer {
    service: Arc<WatchService>,
    max_decoding_message_size: usize,
}

impl WatchServer {
    pub fn new(service: WatchService, max_decoding_message_size: usize) -> Self {
        WatchServer {
            service: Arc::new(service),
            max_decoding_message_size,
        }
    }
}

impl tonic::server::NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

/// The `Watch` method as tonic's server calls it.
struct WatchMethod(Arc<WatchService>);

impl tonic::server::StreamingService<WatchRequest> for WatchMethod {
    type Response = WatchOut;
    type ResponseStream = HeadersWithFirst<WatchOut>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<WatchRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch(request).await })
    }
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let method = WatchMethod(self.service.clone());
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(WatchCodec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests;
