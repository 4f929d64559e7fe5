//! The shared encodings are byte for byte what prost writes for the same `WatchResponse`.

use bytes::{Bytes, BytesMut};
use etcd_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use etcd_proto::mvccpb::{Event, KeyValue};
use proptest::prelude::*;
use prost::Message;

use super::{encode_header, watch_id_len, BatchEncodings, EncodedEvents};

fn key_value() -> impl Strategy<Value = KeyValue> {
    (
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<i64>(),
        any::<i64>(),
        0i64..5,
        prop_oneof![Just(0i64), any::<i64>()],
    )
        .prop_map(|(key, value, create, modified, version, lease)| KeyValue {
            key: Bytes::from(key),
            value: Bytes::from(value),
            create_revision: create,
            mod_revision: modified,
            version,
            lease,
        })
}

fn event() -> impl Strategy<Value = Event> {
    (
        0i32..2,
        proptest::option::of(key_value()),
        proptest::option::of(key_value()),
    )
        .prop_map(|(r#type, kv, prev_kv)| Event {
            r#type,
            kv,
            prev_kv,
        })
}

fn header() -> impl Strategy<Value = ResponseHeader> {
    (any::<u64>(), any::<u64>(), any::<i64>(), any::<u64>()).prop_map(
        |(cluster_id, member_id, revision, raft_term)| ResponseHeader {
            cluster_id,
            member_id,
            revision,
            raft_term,
        },
    )
}

/// What prost writes for the response a watcher gets.
fn prost_bytes(
    header: &ResponseHeader,
    watch_id: i64,
    events: &[Event],
    indices: &[u32],
    with_prev_kv: bool,
) -> Vec<u8> {
    let resp = WatchResponse {
        header: Some(*header),
        watch_id,
        events: indices
            .iter()
            .map(|&i| {
                let e = &events[i as usize];
                Event {
                    r#type: e.r#type,
                    kv: e.kv.clone(),
                    prev_kv: if with_prev_kv {
                        e.prev_kv.clone()
                    } else {
                        None
                    },
                }
            })
            .collect(),
        ..Default::default()
    };
    resp.encode_to_vec()
}

fn ours(header: &Bytes, watch_id: i64, events: Bytes) -> (Vec<u8>, usize) {
    let out = EncodedEvents {
        header: header.clone(),
        watch_id,
        events,
    };
    let mut buf = BytesMut::new();
    out.encode(&mut buf);
    (buf.to_vec(), out.encoded_len())
}

proptest! {
    #[test]
    fn a_shared_encoding_is_what_prost_writes(
        h in header(),
        watch_id in prop_oneof![Just(0i64), 0i64..1000, any::<i64>()],
        events in proptest::collection::vec(event(), 1..6),
        picks in proptest::collection::vec(any::<bool>(), 6),
        with_prev_kv in any::<bool>(),
    ) {
        let indices: Vec<u32> = (0..events.len() as u32).filter(|&i| picks[i as usize]).collect();
        let header_bytes = encode_header(&h);
        let mut encodings = BatchEncodings::new(&events);
        // Ask for the selection, the other prev_kv variant, and the selection again (from the
        // cache): each must match prost.
        for flag in [with_prev_kv, !with_prev_kv, with_prev_kv] {
            let (bytes, len) = ours(&header_bytes, watch_id, encodings.select(&indices, flag));
            let expected = prost_bytes(&h, watch_id, &events, &indices, flag);
            prop_assert_eq!(len, expected.len());
            prop_assert_eq!(
                header_bytes.len() + watch_id_len(watch_id) + encodings.selection_len(&indices, flag),
                expected.len(),
                "the length known before encoding"
            );
            prop_assert_eq!(bytes, expected);
        }
    }
}

#[test]
fn watchers_wanting_the_same_events_share_one_encoding() {
    let kv = KeyValue {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        mod_revision: 7,
        ..Default::default()
    };
    let events = vec![
        Event {
            kv: Some(kv.clone()),
            prev_kv: Some(kv),
            ..Default::default()
        };
        2
    ];
    let mut encodings = BatchEncodings::new(&events);
    let first = encodings.select(&[0, 1], false);
    let again = encodings.select(&[0, 1], false);
    assert_eq!(
        first.as_ptr(),
        again.as_ptr(),
        "the second watcher reuses the bytes"
    );
    let with_prev = encodings.select(&[0, 1], true);
    assert!(
        with_prev.len() > first.len(),
        "prev_kv is included only when asked"
    );
    let one = encodings.select(&[1], false);
    assert_eq!(one.len() * 2, first.len());
}
