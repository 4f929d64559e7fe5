//! Snapshot archives: a checkpoint of the store packed into one file that etcdctl's
//! `snapshot save` accepts, and unpacked again by `cairn snapshot restore`.
//!
//! Format (integers big-endian):
//! ```text
//! "CAIRNSNP" u32 version(=1)
//! repeated { u32 name_len, name (UTF-8, no '/'), u64 size, bytes }   -- one per file
//! u32 0                                                               -- end of files
//! zero padding to a multiple of 512 bytes
//! SHA-256 of everything above (32 bytes)
//! ```
//! etcdctl checks only that the length is 32 more than a multiple of 512 (etcd appends a
//! SHA-256 to its database the same way); restore verifies the digest.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"CAIRNSNP";
const VERSION: u32 = 1;
const ALIGN: u64 = 512;
const DIGEST_LEN: u64 = 32;

/// Why an archive could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] io::Error),
    #[error("not a cairn snapshot: {0}")]
    Format(String),
    #[error("snapshot checksum mismatch: the file is damaged")]
    Checksum,
}

/// Packs the files of checkpoint directory `dir` into the archive `out`.
pub fn pack(dir: &Path, out: &Path) -> Result<u64, SnapshotError> {
    let mut w = HashingWriter {
        inner: BufWriter::new(File::create(out)?),
        hasher: Sha256::new(),
        written: 0,
    };
    w.write_all(MAGIC)?;
    w.write_all(&VERSION.to_be_bytes())?;
    let mut names: Vec<_> = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        if !entry.file_type()?.is_file() {
            continue;
        }
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| SnapshotError::Format("non-UTF-8 file name".into()))?;
        let size = entry.metadata()?.len();
        w.write_all(&(name.len() as u32).to_be_bytes())?;
        w.write_all(name.as_bytes())?;
        w.write_all(&size.to_be_bytes())?;
        let copied = io::copy(&mut File::open(entry.path())?.take(size), &mut w)?;
        if copied != size {
            return Err(SnapshotError::Format(format!(
                "{name} changed size while packing"
            )));
        }
    }
    w.write_all(&0u32.to_be_bytes())?;
    let pad = (ALIGN - w.written % ALIGN) % ALIGN;
    w.write_all(&vec![0u8; pad as usize])?;
    let digest = w.hasher.finalize();
    let mut inner = w.inner;
    inner.write_all(&digest)?;
    inner.flush()?;
    inner.get_ref().sync_all()?;
    Ok(w.written + DIGEST_LEN)
}

/// Verifies the archive `file` and unpacks it into `dir` (created; must not exist).
pub fn unpack(file: &Path, dir: &Path) -> Result<(), SnapshotError> {
    let mut f = File::open(file)?;
    let len = f.metadata()?.len();
    if len < DIGEST_LEN + 16 || !(len - DIGEST_LEN).is_multiple_of(ALIGN) {
        return Err(SnapshotError::Format(format!("unexpected length {len}")));
    }
    let body_len = len - DIGEST_LEN;
    let mut hasher = Sha256::new();
    io::copy(&mut (&mut f).take(body_len), &mut HashSink(&mut hasher))?;
    let mut want = [0u8; 32];
    f.read_exact(&mut want)?;
    if hasher.finalize().as_slice() != want {
        return Err(SnapshotError::Checksum);
    }
    f.seek(SeekFrom::Start(0))?;
    let mut r = BufReader::new(f.take(body_len));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC || read_u32(&mut r)? != VERSION {
        return Err(SnapshotError::Format("bad header".into()));
    }
    fs::create_dir_all(dir)?;
    loop {
        let name_len = read_u32(&mut r)? as usize;
        if name_len == 0 {
            break;
        }
        let mut name = vec![0u8; name_len];
        r.read_exact(&mut name)?;
        let name =
            String::from_utf8(name).map_err(|_| SnapshotError::Format("bad file name".into()))?;
        if name.contains('/') || name == ".." || name == "." {
            return Err(SnapshotError::Format(format!("unsafe file name {name:?}")));
        }
        let size = read_u64(&mut r)?;
        let mut out = File::create(dir.join(&name))?;
        let copied = io::copy(&mut (&mut r).take(size), &mut out)?;
        if copied != size {
            return Err(SnapshotError::Format(format!("{name} is truncated")));
        }
        out.sync_all()?;
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.sst"), vec![7u8; 3000]).unwrap();
        fs::write(src.path().join("CURRENT"), b"MANIFEST-1\n").unwrap();
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("snap.db");
        let len = pack(src.path(), &archive).unwrap();
        assert_eq!(len % 512, 32, "etcdctl requires len % 512 == 32");
        let dst = out.path().join("restored");
        unpack(&archive, &dst).unwrap();
        assert_eq!(fs::read(dst.join("a.sst")).unwrap(), vec![7u8; 3000]);
        assert_eq!(fs::read(dst.join("CURRENT")).unwrap(), b"MANIFEST-1\n");
        let mut bytes = fs::read(&archive).unwrap();
        bytes[100] ^= 1;
        fs::write(&archive, bytes).unwrap();
        assert!(matches!(
            unpack(&archive, &out.path().join("again")),
            Err(SnapshotError::Checksum)
        ));
    }
}
