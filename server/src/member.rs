//! Member and cluster identity, derived exactly as etcd derives them so that IDs are stable
//! across restarts and equal to what etcd would report for the same flags: a member ID is the
//! first 8 bytes of SHA-1(sorted peer URLs ++ cluster token); a cluster ID is the first 8
//! bytes of SHA-1 of the sorted member IDs (big-endian).

use sha1::{Digest, Sha1};

/// This member as the Cluster service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// etcd's `computeMemberId` for a member of the initial cluster.
pub fn member_id(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(cluster_token.as_bytes());
    first_u64(&h.finalize())
}

/// etcd's `genID` over the members' IDs.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    first_u64(&h.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-1 is 20 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_equal_etcds() {
        // A default `etcd` (peer URL http://localhost:2380, token etcd-cluster) reports member
        // 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }
}
