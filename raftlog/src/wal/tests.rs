//! WAL unit tests: reopen after appends, a torn tail, corruption mid-log, truncation, purge,
//! and segment rolling, each followed by a restart.

use super::*;

fn small() -> WalOptions {
    WalOptions {
        segment_bytes_max: 200,
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes()
}

fn append_range(wal: &mut Wal, from: u64, to: u64) {
    let entries: Vec<(u64, Vec<u8>)> = (from..=to).map(|i| (i, payload(i))).collect();
    wal.append(entries.iter().map(|(i, p)| (*i, p.as_slice())))
        .unwrap();
    wal.sync().unwrap();
}

fn assert_holds(wal: &Wal, from: u64, to: u64) {
    assert_eq!(
        (wal.first_index(), wal.last_index()),
        (Some(from), Some(to))
    );
    for i in from..=to {
        assert_eq!(wal.get(i).unwrap(), Some(payload(i)), "index {i}");
    }
}

/// Where a segment's records end: after its last non-zero byte (the rest is preallocated).
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().unwrap()
}

#[test]
fn appends_survive_reopen_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small()).unwrap();
    append_range(&mut wal, 1, 40);
    assert!(wal.segment_count() > 3, "small segments roll");
    drop(wal);
    let wal = Wal::open(dir.path(), small()).unwrap();
    assert_holds(&wal, 1, 40);
    let mut wal = wal;
    assert!(matches!(
        wal.append([(42, &b"gap"[..])]),
        Err(WalError::NotContiguous { last: 40, got: 42 })
    ));
}

#[test]
fn a_torn_tail_is_truncated_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append_range(&mut wal, 1, 10);
    drop(wal);
    // Half of a final record reached the disk.
    let seg = last_segment(dir.path());
    let mut partial = Vec::new();
    frame(11, b"never acknowledged", &mut partial);
    let end = data_end(&fs::read(&seg).unwrap()) as u64;
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&partial[..partial.len() - 5], end).unwrap();
    drop(f);
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_holds(&wal, 1, 10);
    append_range(&mut wal, 11, 12);
    drop(wal);
    assert_holds(
        &Wal::open(dir.path(), WalOptions::default()).unwrap(),
        1,
        12,
    );
}

#[test]
fn a_final_record_with_a_bad_checksum_is_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append_range(&mut wal, 1, 5);
    drop(wal);
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let n = data_end(&bytes);
    bytes[n - 1] ^= 0xFF;
    fs::write(&seg, bytes).unwrap();
    assert_holds(&Wal::open(dir.path(), WalOptions::default()).unwrap(), 1, 4);
}

#[test]
fn corruption_mid_log_refuses_to_open_and_names_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append_range(&mut wal, 1, 10);
    drop(wal);
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    bytes[HEADER_LEN as usize + 2] ^= 0x01; // inside the first record's payload
    fs::write(&seg, &bytes).unwrap();
    match Wal::open(dir.path(), WalOptions::default()) {
        Err(WalError::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!((path, offset), (seg.clone(), 0));
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!(
            "expected corruption, got {:?}",
            other.map(|w| w.last_index())
        ),
    }
    // Nothing was truncated: the damaged file is left for inspection.
    assert_eq!(fs::read(&seg).unwrap(), bytes);
}

#[test]
fn corruption_in_an_earlier_segment_is_never_treated_as_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small()).unwrap();
    append_range(&mut wal, 1, 40);
    drop(wal);
    let mut files: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let first = &files[0];
    let len = fs::metadata(first).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small()),
        Err(WalError::Corrupt { .. })
    ));
}

#[test]
fn truncate_removes_a_conflicting_suffix_durably() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small()).unwrap();
    append_range(&mut wal, 1, 40);
    wal.truncate_from(17).unwrap();
    assert_holds(&wal, 1, 16);
    // The new leader's entries replace the removed ones.
    let replacement: Vec<(u64, Vec<u8>)> = (17..=20).map(|i| (i, payload(i))).collect();
    wal.append(replacement.iter().map(|(i, p)| (*i, p.as_slice())))
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_holds(&Wal::open(dir.path(), small()).unwrap(), 1, 20);
}

#[test]
fn purge_drops_whole_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small()).unwrap();
    append_range(&mut wal, 1, 40);
    let before = wal.segment_count();
    wal.purge_to(25).unwrap();
    assert!(wal.segment_count() < before);
    let first = wal.first_index().unwrap();
    assert!(
        first <= 26 && first > 1,
        "entries after the purge point stay: first is {first}"
    );
    assert_holds(&wal, first, 40);
    drop(wal);
    let mut wal = Wal::open(dir.path(), small()).unwrap();
    assert_holds(&wal, first, 40);
    append_range(&mut wal, 41, 45);
    assert_holds(&wal, first, 45);
}

#[test]
fn an_emptied_log_accepts_any_next_index_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append_range(&mut wal, 5, 7);
    wal.truncate_from(1).unwrap();
    assert_eq!(wal.last_index(), None);
    append_range(&mut wal, 10, 11);
    drop(wal);
    assert_holds(
        &Wal::open(dir.path(), WalOptions::default()).unwrap(),
        10,
        11,
    );
}

#[test]
fn a_refused_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), small()).unwrap();
    append_range(&mut wal, 1, 3);
    let bad = [(4u64, &b"ok"[..]), (6, &b"gap"[..])];
    assert!(matches!(
        wal.append(bad),
        Err(WalError::NotContiguous { last: 4, got: 6 })
    ));
    assert_eq!(wal.last_index(), Some(3));
    drop(wal);
    assert_holds(&Wal::open(dir.path(), small()).unwrap(), 1, 3);
}

#[test]
fn a_zero_filled_tail_is_a_torn_write() {
    // Blocks allocated but never written before a power loss read back as zeros, after the
    // last whole record or in the middle of a half-written one.
    for keep_of_last in [None, Some(10usize)] {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        append_range(&mut wal, 1, 5);
        drop(wal);
        let seg = last_segment(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        bytes.truncate(data_end(&bytes));
        if let Some(keep) = keep_of_last {
            // Record 5 keeps its header and a few payload bytes; the rest became zeros.
            let rec5 = HEADER_LEN as usize + payload(5).len();
            let start = bytes.len() - rec5;
            for b in &mut bytes[start + HEADER_LEN as usize + keep.min(payload(5).len() - 1)..] {
                *b = 0;
            }
        }
        bytes.extend(std::iter::repeat_n(0u8, 4096));
        fs::write(&seg, &bytes).unwrap();
        let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        let last = if keep_of_last.is_some() { 4 } else { 5 };
        assert_holds(&wal, 1, last);
        append_range(&mut wal, last + 1, last + 2);
        drop(wal);
        assert_holds(
            &Wal::open(dir.path(), WalOptions::default()).unwrap(),
            1,
            last + 2,
        );
    }
    // Zeros after a bad record that is followed by good ones are still corruption.
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
    append_range(&mut wal, 1, 5);
    drop(wal);
    let seg = last_segment(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let rec1 = HEADER_LEN as usize + payload(1).len();
    for b in &mut bytes[HEADER_LEN as usize..rec1] {
        *b = 0;
    }
    fs::write(&seg, &bytes).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), WalOptions::default()),
        Err(WalError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn the_active_segment_is_preallocated_and_a_closed_one_cut_to_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes_max: 4096,
    };
    let mut wal = Wal::open(dir.path(), opts.clone()).unwrap();
    append_range(&mut wal, 1, 3);
    let seg = last_segment(dir.path());
    assert_eq!(fs::metadata(&seg).unwrap().len(), 4096, "preallocated");
    drop(wal);
    // A clean reopen finds where the records end, truncates nothing and appends there.
    let mut wal = Wal::open(dir.path(), opts.clone()).unwrap();
    assert_holds(&wal, 1, 3);
    assert_eq!(fs::metadata(&seg).unwrap().len(), 4096);
    append_range(&mut wal, 4, 200);
    assert!(wal.segment_count() > 1, "the log rolled");
    let closed = fs::read(&seg).unwrap();
    assert_eq!(
        closed.len(),
        data_end(&closed),
        "closed segment cut to its records"
    );
    drop(wal);
    assert_holds(&Wal::open(dir.path(), opts).unwrap(), 1, 200);
}
