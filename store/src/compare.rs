//! Txn compares: etcd's rules for comparing a key (or every key of a range) against a value.

use std::cmp::Ordering;

use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::Compare;
use etcd_proto::mvccpb::KeyValue;

/// Whether every key in `kvs` satisfies `c`. With no keys, a VALUE compare fails and the
/// others compare against an absent key (all fields zero), as etcd does.
pub fn holds(c: &Compare, kvs: &[KeyValue]) -> bool {
    if kvs.is_empty() {
        if c.target == CompareTarget::Value as i32 {
            return false;
        }
        return holds_one(c, &KeyValue::default());
    }
    kvs.iter().all(|kv| holds_one(c, kv))
}

fn holds_one(c: &Compare, kv: &KeyValue) -> bool {
    // As etcd: a union of the wrong kind for the target compares as zero (Equal for VALUE).
    let ord = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => match &c.target_union {
            Some(TargetUnion::Value(v)) => kv.value[..].cmp(v.as_slice()),
            _ => Ordering::Equal,
        },
        Ok(CompareTarget::Version) => kv.version.cmp(&match c.target_union {
            Some(TargetUnion::Version(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&match c.target_union {
            Some(TargetUnion::CreateRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&match c.target_union {
            Some(TargetUnion::ModRevision(v)) => v,
            _ => 0,
        }),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&match c.target_union {
            Some(TargetUnion::Lease(v)) => v,
            _ => 0,
        }),
        Err(_) => return false,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
        Compare {
            result: result as i32,
            target: target as i32,
            key: b"k".to_vec(),
            target_union: Some(union),
            range_end: vec![],
        }
    }

    #[test]
    fn absent_key_compares_as_zero_except_value() {
        assert!(holds(
            &cmp(
                CompareTarget::Version,
                CompareResult::Equal,
                TargetUnion::Version(0)
            ),
            &[]
        ));
        assert!(holds(
            &cmp(
                CompareTarget::Mod,
                CompareResult::Equal,
                TargetUnion::ModRevision(0)
            ),
            &[]
        ));
        assert!(!holds(
            &cmp(
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value(vec![])
            ),
            &[]
        ));
        assert!(!holds(
            &cmp(
                CompareTarget::Value,
                CompareResult::NotEqual,
                TargetUnion::Value(b"x".to_vec())
            ),
            &[]
        ));
    }

    #[test]
    fn ranged_compare_needs_every_key() {
        let a = KeyValue {
            key: b"a".to_vec().into(),
            version: 1,
            ..Default::default()
        };
        let b = KeyValue {
            key: b"b".to_vec().into(),
            version: 3,
            ..Default::default()
        };
        let c = cmp(
            CompareTarget::Version,
            CompareResult::Greater,
            TargetUnion::Version(0),
        );
        assert!(holds(&c, &[a.clone(), b.clone()]));
        let c = cmp(
            CompareTarget::Version,
            CompareResult::Less,
            TargetUnion::Version(2),
        );
        assert!(!holds(&c, &[a, b]));
    }

    #[test]
    fn value_compares_bytewise() {
        let kv = KeyValue {
            value: b"abc".to_vec().into(),
            ..Default::default()
        };
        assert!(holds(
            &cmp(
                CompareTarget::Value,
                CompareResult::Greater,
                TargetUnion::Value(b"abb".to_vec())
            ),
            std::slice::from_ref(&kv)
        ));
        assert!(holds(
            &cmp(
                CompareTarget::Value,
                CompareResult::Less,
                TargetUnion::Value(b"abcd".to_vec())
            ),
            &[kv]
        ));
    }
}
