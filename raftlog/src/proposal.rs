//! Proposals — writes, batched so that one Raft entry carries every write proposed at about
//! the same time — and the byte encodings of entries used by the log on disk and by the peer
//! protocol. Proposals are encoded as etcd-style `InternalRequest` protobufs (a batch as an
//! `InternalBatch`); the rare membership entries as JSON.

use etcd_proto::cairnraftpb::{InternalBatch, InternalRequest};
use etcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, CompactionRequest, LeaseGrantRequest,
    LeaseRevokeRequest,
};
use openraft::EntryPayload;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use store::WriteRequest;

use crate::types::{log_id, Entry, TypeConfig};

/// One write and the ID its proposer waits on.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub id: u64,
    pub req: WriteRequest,
}

/// A malformed entry (a bug or corruption: entries are checked by CRC before decoding).
#[derive(Debug, thiserror::Error)]
#[error("malformed log entry: {0}")]
pub struct DecodeError(pub String);

impl Proposal {
    pub fn encode(&self) -> Vec<u8> {
        self.to_internal().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Proposal, DecodeError> {
        let r = InternalRequest::decode(bytes).map_err(|e| DecodeError(e.to_string()))?;
        Proposal::from_internal(r)
    }

    pub fn to_internal(&self) -> InternalRequest {
        let mut r = InternalRequest {
            id: self.id,
            ..Default::default()
        };
        match &self.req {
            WriteRequest::Put(p) => r.put = Some(p.clone()),
            WriteRequest::DeleteRange(d) => r.delete_range = Some(d.clone()),
            WriteRequest::Txn(t) => r.txn = Some(t.clone()),
            WriteRequest::Compact { revision } => {
                r.compaction = Some(CompactionRequest {
                    revision: *revision,
                    physical: false,
                })
            }
            WriteRequest::LeaseGrant { id, ttl_secs } => {
                r.lease_grant = Some(LeaseGrantRequest {
                    ttl: *ttl_secs,
                    id: *id,
                })
            }
            WriteRequest::LeaseRevoke { id } => {
                r.lease_revoke = Some(LeaseRevokeRequest { id: *id })
            }
            WriteRequest::Alarm {
                activate,
                member_id,
                alarm,
            } => {
                let action = if *activate {
                    AlarmAction::Activate
                } else {
                    AlarmAction::Deactivate
                };
                r.alarm = Some(AlarmRequest {
                    action: action as i32,
                    member_id: *member_id,
                    alarm: *alarm,
                })
            }
        }
        r
    }

    pub fn from_internal(r: InternalRequest) -> Result<Proposal, DecodeError> {
        let req = if let Some(p) = r.put {
            WriteRequest::Put(p)
        } else if let Some(d) = r.delete_range {
            WriteRequest::DeleteRange(d)
        } else if let Some(t) = r.txn {
            WriteRequest::Txn(t)
        } else if let Some(c) = r.compaction {
            WriteRequest::Compact {
                revision: c.revision,
            }
        } else if let Some(g) = r.lease_grant {
            WriteRequest::LeaseGrant {
                id: g.id,
                ttl_secs: g.ttl,
            }
        } else if let Some(v) = r.lease_revoke {
            WriteRequest::LeaseRevoke { id: v.id }
        } else if let Some(a) = r.alarm {
            WriteRequest::Alarm {
                activate: a.action == AlarmAction::Activate as i32,
                member_id: a.member_id,
                alarm: a.alarm,
            }
        } else {
            return Err(DecodeError(format!("proposal {} carries no request", r.id)));
        };
        Ok(Proposal { id: r.id, req })
    }
}

/// The data of one Raft entry: proposals applied in order, as if they had been entries of
/// their own.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProposalBatch(pub Vec<Proposal>);

impl ProposalBatch {
    pub fn to_internal(&self) -> InternalBatch {
        InternalBatch {
            requests: self.0.iter().map(Proposal::to_internal).collect(),
        }
    }

    pub fn from_internal(b: InternalBatch) -> Result<ProposalBatch, DecodeError> {
        b.requests
            .into_iter()
            .map(Proposal::from_internal)
            .collect::<Result<_, _>>()
            .map(ProposalBatch)
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_internal().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<ProposalBatch, DecodeError> {
        let b = InternalBatch::decode(bytes).map_err(|e| DecodeError(e.to_string()))?;
        ProposalBatch::from_internal(b)
    }
}

// openraft's `serde` feature asks application data to be serde-serializable; it is, as the
// bytes of its protobuf encoding (Cairn's own transport and log do not go through serde).
impl Serialize for ProposalBatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.encode())
    }
}

impl<'de> Deserialize<'de> for ProposalBatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::de::Deserialize::deserialize(d)?;
        ProposalBatch::decode(&bytes).map_err(serde::de::Error::custom)
    }
}

const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

/// Encodes an entry's payload: a kind byte, then the body.
pub fn encode_payload(payload: &EntryPayload<TypeConfig>, out: &mut Vec<u8>) {
    match payload {
        EntryPayload::Blank => out.push(KIND_BLANK),
        EntryPayload::Normal(p) => {
            out.push(KIND_NORMAL);
            p.to_internal().encode(out).expect("a Vec grows as needed");
        }
        EntryPayload::Membership(m) => {
            out.push(KIND_MEMBERSHIP);
            serde_json::to_writer(&mut *out, m).expect("membership serializes");
        }
    }
}

pub fn decode_payload(bytes: &[u8]) -> Result<EntryPayload<TypeConfig>, DecodeError> {
    let (&kind, body) = bytes
        .split_first()
        .ok_or_else(|| DecodeError("empty payload".into()))?;
    Ok(match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_NORMAL => EntryPayload::Normal(ProposalBatch::decode(body)?),
        KIND_MEMBERSHIP => EntryPayload::Membership(
            serde_json::from_slice(body).map_err(|e| DecodeError(e.to_string()))?,
        ),
        k => return Err(DecodeError(format!("unknown entry kind {k}"))),
    })
}

/// Encodes an entry for the WAL: the leader's term and member ID (8 bytes each, big-endian),
/// then the payload. The index is the WAL record's own.
pub fn encode_wal_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
    encode_payload(&entry.payload, &mut out);
    out
}

pub fn decode_wal_entry(index: u64, bytes: &[u8]) -> Result<Entry, DecodeError> {
    if bytes.len() < 17 {
        return Err(DecodeError(format!(
            "entry {index} is {} bytes",
            bytes.len()
        )));
    }
    let term = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    let node = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok(Entry {
        log_id: log_id(term, node, index),
        payload: decode_payload(&bytes[16..])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::PutRequest;

    #[test]
    fn entries_round_trip() {
        let reqs = vec![
            WriteRequest::Put(PutRequest {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                lease: 7,
                prev_kv: true,
                ..Default::default()
            }),
            WriteRequest::Compact { revision: 9 },
            WriteRequest::LeaseGrant {
                id: 5,
                ttl_secs: 10,
            },
            WriteRequest::LeaseRevoke { id: 5 },
            WriteRequest::Alarm {
                activate: true,
                member_id: 3,
                alarm: 1,
            },
            WriteRequest::Alarm {
                activate: false,
                member_id: 3,
                alarm: 1,
            },
        ];
        for (i, req) in reqs.iter().enumerate() {
            let entry = Entry {
                log_id: log_id(3, 77, i as u64 + 1),
                payload: EntryPayload::Normal(ProposalBatch(vec![Proposal {
                    id: 42 + i as u64,
                    req: req.clone(),
                }])),
            };
            let bytes = encode_wal_entry(&entry);
            let back = decode_wal_entry(i as u64 + 1, &bytes).unwrap();
            assert_eq!(back, entry);
        }
        let batch = Entry {
            log_id: log_id(4, 77, 20),
            payload: EntryPayload::Normal(ProposalBatch(
                reqs.into_iter()
                    .enumerate()
                    .map(|(i, req)| Proposal { id: i as u64, req })
                    .collect(),
            )),
        };
        assert_eq!(
            decode_wal_entry(20, &encode_wal_entry(&batch)).unwrap(),
            batch
        );
        let blank = Entry {
            log_id: log_id(1, 77, 9),
            payload: EntryPayload::Blank,
        };
        assert_eq!(
            decode_wal_entry(9, &encode_wal_entry(&blank)).unwrap(),
            blank
        );
        assert!(decode_wal_entry(9, &[0; 16]).is_err());
        let mut unknown_kind = vec![0u8; 16];
        unknown_kind.push(7);
        assert!(decode_wal_entry(9, &unknown_kind).is_err());
    }
}
