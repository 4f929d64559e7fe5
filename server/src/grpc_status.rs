//! Rewrites the few gRPC statuses that the transport (tonic) words or codes differently from
//! etcd's transport (grpc-go), so that clients matching on them see what etcd would send: a
//! message over the size limit is `ResourceExhausted: grpc: received message larger than max
//! (N vs. M)` in grpc-go, where tonic says `OutOfRange`.

use http::{HeaderValue, Response};

const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";
/// tonic's wording when a request exceeds the decoding limit.
const TONIC_TOO_LARGE: &str = "decoded message length too large: found ";

/// Applied to every response; only trailers-only error responses (status in the headers) with
/// tonic's oversize message are changed.
pub fn etcd_compatible<B>(mut resp: Response<B>) -> Response<B> {
    let headers = resp.headers();
    let is_out_of_range = headers.get(GRPC_STATUS).is_some_and(|v| v == "11");
    if !is_out_of_range {
        return resp;
    }
    let Some(msg) = headers.get(GRPC_MESSAGE).and_then(|v| v.to_str().ok()) else {
        return resp;
    };
    let Some(rewritten) = grpc_go_oversize_message(msg) else {
        return resp;
    };
    let h = resp.headers_mut();
    h.insert(GRPC_STATUS, HeaderValue::from_static("8"));
    if let Ok(v) = HeaderValue::from_str(&rewritten) {
        h.insert(GRPC_MESSAGE, v);
    }
    resp
}

/// Turns tonic's "... found N bytes, the limit is: M bytes" (percent-encoded) into grpc-go's
/// "grpc: received message larger than max (N vs. M)", percent-encoded the same way.
fn grpc_go_oversize_message(encoded: &str) -> Option<String> {
    let msg = encoded
        .replace("%20", " ")
        .replace("%3A", ":")
        .replace("%2C", ",");
    let rest = &msg[msg.find(TONIC_TOO_LARGE)? + TONIC_TOO_LARGE.len()..];
    let found: u64 = rest.split(' ').next()?.parse().ok()?;
    let limit: u64 = rest
        .split("limit is: ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    Some(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_becomes_resource_exhausted_in_grpc_gos_words() {
        let resp = Response::builder()
            .header(GRPC_STATUS, "11")
            .header(GRPC_MESSAGE, "Error, decoded message length too large: found 3145733 bytes, the limit is: 2097152 bytes")
            .body(())
            .unwrap();
        let out = etcd_compatible(resp);
        assert_eq!(out.headers()[GRPC_STATUS], "8");
        assert_eq!(
            out.headers()[GRPC_MESSAGE],
            "grpc: received message larger than max (3145733 vs. 2097152)"
        );
        let other = Response::builder()
            .header(GRPC_STATUS, "11")
            .header(
                GRPC_MESSAGE,
                "etcdserver: mvcc: required revision is a future revision",
            )
            .body(())
            .unwrap();
        assert_eq!(etcd_compatible(other).headers()[GRPC_STATUS], "11");
    }
}
