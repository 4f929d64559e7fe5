//! The KV service's unary calls on the wire. Range, Put, DeleteRange and Txn are nearly every
//! request a client sends, and each is one gRPC message each way: read the request body (a
//! 5-byte frame header, then the message), decode it, call the handler, answer with one DATA
//! frame and `grpc-status: 0` in the trailers. tonic's generic unary path does the same
//! through a streaming decoder and encoder, each with a fresh 8 KiB buffer, and several
//! futures moved into boxes: on a one-key serializable range, its codec and the generated
//! service's future were a sixth of the server's CPU.
//!
//! Only the plain case is handled here: an uncompressed request holding exactly one message
//! within the size limit that decodes cleanly. Anything else (compression, a malformed or
//! oversized frame, a message that does not decode, any other method) goes to tonic's
//! generated service with the bytes already read, so every error is tonic's own, word for
//! word. A body is read only as far as a plain message could reach; past that, tonic reads on
//! from where this stopped. Errors from the handlers are sent as tonic sends them
//! (`Status::into_http`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use etcd_proto::etcdserverpb::kv_server::{Kv, KvServer};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::Message;
use tonic::body::Body;
use tower::Service;

use crate::kv::KvService;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The length of a gRPC message frame's header: a compression flag and a 4-byte length.
const FRAME_HEADER_LEN: usize = 5;

/// The KV service: its hot unary methods served here, the rest by tonic's generated server.
#[derive(Clone)]
pub struct KvUnary {
    service: Arc<KvService>,
    generated: KvServer<KvService>,
    max_decoding_message_size: usize,
}

impl KvUnary {
    pub fn new(service: KvService, max_decoding_message_size: usize) -> Self {
        let service = Arc::new(service);
        KvUnary {
            generated: KvServer::from_arc(service.clone())
                .max_decoding_message_size(max_decoding_message_size),
            service,
            max_decoding_message_size,
        }
    }

    pub fn call(&self, req: Request<Body>) -> BoxFuture {
        let method = req.uri().path().strip_prefix("/etcdserverpb.KV/");
        let plain = req
            .headers()
            .get("grpc-encoding")
            .is_none_or(|e| e == "identity");
        let svc = self.service.clone();
        match method {
            Some("Range") if plain => self.serve(req, move |r| async move { svc.range(r).await }),
            Some("Put") if plain => self.serve(req, move |r| async move { svc.put(r).await }),
            Some("DeleteRange") if plain => {
                self.serve(req, move |r| async move { svc.delete_range(r).await })
            }
            Some("Txn") if plain => self.serve(req, move |r| async move { svc.txn(r).await }),
            _ => self.generated.clone().call(req),
        }
    }

    /// Reads the request, and answers it with `handler` if it is plain, else with tonic's
    /// generated service.
    fn serve<Req, Resp, Fut>(
        &self,
        req: Request<Body>,
        handler: impl FnOnce(tonic::Request<Req>) -> Fut + Send + 'static,
    ) -> BoxFuture
    where
        Req: Message + Default + Send + 'static,
        Resp: Message,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send,
    {
        let generated = self.generated.clone();
        let max = self.max_decoding_message_size;
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let (data, trailers) = match read_body(body, FRAME_HEADER_LEN + max).await {
                Ok(Read::Whole(data, trailers)) => (data, trailers),
                // Longer than a plain message can be: tonic reads on from where this stopped.
                Ok(Read::Cut(data, rest)) => {
                    let body = Body::new(Resumed {
                        read: Some(data),
                        rest,
                    });
                    return generated
                        .clone()
                        .call(Request::from_parts(parts, body))
                        .await;
                }
                Err(status) => return Ok(status.into_http()),
            };
            let Some(message) = plain_message::<Req>(&data, max) else {
                let body = Body::new(Once::new(data, trailers));
                return generated
                    .clone()
                    .call(Request::from_parts(parts, body))
                    .await;
            };
            // As tonic, a request's trailers join its metadata.
            if let Some(trailers) = trailers {
                parts.headers.extend(trailers);
            }
            let request = tonic::Request::from_http(Request::from_parts(parts, message));
            Ok(match handler(request).await {
                Ok(response) => respond(response),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// A request body as `read_body` read it.
enum Read {
    /// All of it: its data, and its trailers if it has any.
    Whole(Bytes, Option<HeaderMap>),
    /// Its data up to where it passed the limit, and the body left to read.
    Cut(Bytes, Body),
}

/// Reads a request body to its end, or until its data passes `limit` bytes (the memory a
/// request may take before tonic's own limits apply).
async fn read_body(mut body: Body, limit: usize) -> Result<Read, tonic::Status> {
    let mut data: Option<Bytes> = None;
    let mut more = BytesMut::new();
    let mut trailers = None;
    let mut len = 0;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame?;
        match frame.into_data() {
            // Usually the whole message is one DATA frame, kept as it came.
            Ok(chunk) if data.is_none() => {
                len = chunk.len();
                data = Some(chunk);
            }
            Ok(chunk) => {
                if more.is_empty() {
                    more.extend_from_slice(data.as_deref().unwrap_or_default());
                }
                more.extend_from_slice(&chunk);
                len = more.len();
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
        if len > limit {
            return Ok(Read::Cut(joined(data, more), body));
        }
    }
    Ok(Read::Whole(joined(data, more), trailers))
}

/// The data read: the first frame's as it came, or all of them joined in `more`.
fn joined(first: Option<Bytes>, more: BytesMut) -> Bytes {
    if more.is_empty() {
        first.unwrap_or_default()
    } else {
        more.freeze()
    }
}

/// The request's one message, if `data` is exactly one uncompressed frame of at most `max`
/// bytes that decodes.
fn plain_message<M: Message + Default>(data: &Bytes, max: usize) -> Option<M> {
    let mut header = data.get(..FRAME_HEADER_LEN)?;
    let compressed = header.get_u8();
    let len = header.get_u32() as usize;
    if compressed != 0 || len > max || data.len() != FRAME_HEADER_LEN + len {
        return None;
    }
    M::decode(data.slice(FRAME_HEADER_LEN..)).ok()
}

/// A handler's response as tonic's unary path sends it: its metadata as headers, the content
/// type, one framed message, and `grpc-status: 0` as the trailers.
fn respond<M: Message>(response: tonic::Response<M>) -> Response<Body> {
    let (metadata, message, extensions) = response.into_parts();
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_LEN + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .expect("the buffer has the message's length");
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut resp = Response::new(Body::new(Once::new(buf.freeze(), Some(trailers))));
    *resp.headers_mut() = metadata.into_headers();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    *resp.extensions_mut() = extensions;
    *resp.version_mut() = http::Version::HTTP_2;
    resp
}

/// A body of one data frame, then trailers if there are any.
struct Once {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Once {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Once {
            data: Some(data).filter(|d| !d.is_empty()),
            trailers,
        }
    }
}

impl HttpBody for Once {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// A body cut by `read_body`: what it read, then the rest.
struct Resumed {
    read: Option<Bytes>,
    rest: Body,
}

impl HttpBody for Resumed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        if let Some(read) = self.read.take() {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_none() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use etcd_proto::etcdserverpb::PutRequest;

    use super::*;

    /// A request body of the given frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl HttpBody for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn framed(message: &impl Message, compressed: u8) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u8(compressed);
        buf.put_u32(message.encoded_len() as u32);
        message.encode(&mut buf).unwrap();
        buf.freeze()
    }

    fn put() -> PutRequest {
        PutRequest {
            key: "k".to_owned().into(),
            value: vec![7; 1000].into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_message_split_over_frames_is_read_whole_with_its_trailers() {
        let data = framed(&put(), 0);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_static("t"));
        let frames = [
            Frame::data(data.slice(..3)),
            Frame::data(data.slice(3..600)),
            Frame::data(data.slice(600..)),
            Frame::trailers(trailers),
        ];
        let body = Body::new(Frames(frames.into()));
        let Read::Whole(read, trailers) = read_body(body, data.len()).await.unwrap() else {
            panic!("cut short")
        };
        assert_eq!(read, data);
        assert_eq!(trailers.unwrap()["x-trailer"], "t");
        assert_eq!(plain_message::<PutRequest>(&read, 4096), Some(put()));
    }

    #[tokio::test]
    async fn one_frame_is_kept_as_it_came() {
        let data = framed(&put(), 0);
        let body = Body::new(Frames([Frame::data(data.clone())].into()));
        let Read::Whole(read, trailers) = read_body(body, data.len()).await.unwrap() else {
            panic!("cut short")
        };
        assert_eq!(read.as_ptr(), data.as_ptr());
        assert!(trailers.is_none());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_cut_and_resumed_whole() {
        let data = framed(&put(), 0);
        let frames = [
            Frame::data(data.slice(..400)),
            Frame::data(data.slice(400..800)),
            Frame::data(data.slice(800..)),
        ];
        let body = Body::new(Frames(frames.into()));
        let Read::Cut(read, rest) = read_body(body, 500).await.unwrap() else {
            panic!("read whole past the limit")
        };
        assert_eq!(read, data.slice(..800));
        let resumed = Resumed {
            read: Some(read),
            rest,
        };
        let mut resumed = std::pin::pin!(resumed);
        let mut all = BytesMut::new();
        while let Some(f) = std::future::poll_fn(|cx| resumed.as_mut().poll_frame(cx)).await {
            all.extend_from_slice(&f.unwrap().into_data().unwrap());
        }
        assert_eq!(all.freeze(), data);
    }

    #[test]
    fn anything_but_one_plain_message_within_the_limit_is_left_to_tonic() {
        let data = framed(&put(), 0);
        let len = data.len() - FRAME_HEADER_LEN;
        assert!(plain_message::<PutRequest>(&data, len).is_some());
        // Too large, compressed, short, with more after it, no message, garbage.
        assert!(plain_message::<PutRequest>(&data, len - 1).is_none());
        assert!(plain_message::<PutRequest>(&framed(&put(), 1), len).is_none());
        assert!(plain_message::<PutRequest>(&data.slice(..data.len() - 1), len).is_none());
        let two = [data.clone(), data.clone()].concat();
        assert!(plain_message::<PutRequest>(&Bytes::from(two), 2 * len).is_none());
        assert!(plain_message::<PutRequest>(&Bytes::new(), len).is_none());
        let garbage = Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]);
        assert!(plain_message::<PutRequest>(&garbage, len).is_none());
    }

    #[tokio::test]
    async fn a_response_is_one_framed_message_then_status_ok() {
        let resp = respond(tonic::Response::new(put()));
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let mut body = std::pin::pin!(resp.into_body());
        let mut frames = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            frames.push(f.unwrap());
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].data_ref().unwrap(), &framed(&put(), 0));
        assert_eq!(frames[1].trailers_ref().unwrap()["grpc-status"], "0");
    }
}
