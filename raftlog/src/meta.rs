//! Small state files replaced atomically: the vote and the committed log id must never be
//! half-written. Each file holds a CRC-32 and the payload; writing goes to a temporary file
//! that is fsynced, renamed over the old one, and the directory is fsynced, so after a crash
//! the file holds either the old or the new value, never a mix.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Errors reading or writing a state file.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: checksum mismatch; the file is damaged")]
    Corrupt { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `dir/name` with `payload`; durable when this returns.
pub fn write_atomically(dir: &Path, name: &str, payload: &[u8]) -> Result<(), MetaError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut framed = crc32fast::hash(payload).to_le_bytes().to_vec();
    framed.extend_from_slice(payload);
    f.write_all(&framed).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

/// Reads `dir/name`; `None` if it was never written.
pub fn read(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, MetaError> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MetaError::Io { path, source: e }),
    };
    if bytes.len() < 4 || crc32fast::hash(&bytes[4..]).to_le_bytes() != bytes[..4] {
        return Err(MetaError::Corrupt { path });
    }
    Ok(Some(bytes[4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vote_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), "vote").unwrap(), None);
        write_atomically(dir.path(), "vote", b"term=3 node=1").unwrap();
        write_atomically(dir.path(), "vote", b"term=4 node=2").unwrap();
        assert_eq!(
            read(dir.path(), "vote").unwrap().as_deref(),
            Some(&b"term=4 node=2"[..])
        );
        // A temporary file left by a crash before the rename changes nothing.
        fs::write(dir.path().join("vote.tmp"), b"garbage").unwrap();
        assert_eq!(
            read(dir.path(), "vote").unwrap().as_deref(),
            Some(&b"term=4 node=2"[..])
        );
    }

    #[test]
    fn a_damaged_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(dir.path(), "vote", b"term=4 node=2").unwrap();
        let mut bytes = fs::read(dir.path().join("vote")).unwrap();
        bytes[6] ^= 0x40;
        fs::write(dir.path().join("vote"), bytes).unwrap();
        assert!(matches!(
            read(dir.path(), "vote"),
            Err(MetaError::Corrupt { .. })
        ));
    }
}
