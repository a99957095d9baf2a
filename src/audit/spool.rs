//! The local spool: rows the database could not take yet, as JSON lines in one
//! append-only file, synced to disk before `append` returns. The writer replays
//! it in order; the database keeps how far (in the same transaction as the rows),
//! so a crash between the two neither loses nor repeats a row. A fully replayed
//! file is deleted; the next gets a new id (its creation time), so an old position
//! never applies to a new file.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::row::Row;
use super::time;

pub struct Spool {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Files holding rows not yet all in the database, oldest first, with their
    /// lengths. Replay reads the oldest; appends go to the newest.
    files: VecDeque<(i64, u64)>,
    /// The newest file, open for appending, once this process has appended.
    append: Option<File>,
    /// How much of the oldest file the database holds; `None` until it has been
    /// asked.
    replayed: Option<u64>,
    last_id: i64,
    /// The instance whose chain the spooled rows belong on.
    owner: String,
}

/// A run of spooled rows, read for replay.
pub struct Batch {
    pub file: i64,
    /// The file offset after the last row of the batch.
    pub end: u64,
    pub rows: Vec<Row>,
    /// Lines that did not parse (a damaged disk): skipped, and logged.
    pub unreadable: usize,
}

const OWNER: &str = "owner";
/// The highest file id this spool has used.
const LAST_ID: &str = "last-id";

impl Spool {
    /// Opens the spool under `dir` for `instance`, dropping a line a crash cut
    /// short. Rows left by an earlier process keep the instance they were spooled
    /// under (see [`Spool::owner`]).
    pub fn open(dir: &Path, instance: &str) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut ids: Vec<i64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| file_id(&e.file_name().to_string_lossy()))
            .collect();
        ids.sort_unstable();
        let mut files = VecDeque::new();
        for &id in &ids {
            files.push_back((id, repair(&dir.join(file_name(id)))?));
        }
        let owner = match files.is_empty() {
            true => instance.to_owned(),
            false => fs::read_to_string(dir.join(OWNER))
                .map(|o| o.trim().to_owned())
                .ok()
                .filter(|o| !o.is_empty())
                .unwrap_or_else(|| instance.to_owned()),
        };
        Ok(Spool {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                files,
                append: None,
                replayed: None,
                // File ids only grow, even if the clock steps back or the
                // directory empties: the database may hold a position in any
                // file this spool ever made.
                last_id: ids
                    .last()
                    .copied()
                    .unwrap_or(0)
                    .max(read_number(&dir.join(LAST_ID)).unwrap_or(0)),
                owner,
            }),
        })
    }

    /// The instance whose chain the spooled rows go on: this one, unless rows
    /// spooled under another name (a renamed host) are still waiting.
    pub fn owner(&self) -> String {
        self.lock().owner.clone()
    }

    /// Appends rows and syncs them to disk.
    pub fn append(&self, rows: &[Row], instance: &str) -> io::Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 1024);
        for row in rows {
            serde_json::to_writer(&mut buf, row)?;
            buf.push(b'\n');
        }
        let mut inner = self.lock();
        if inner.append.is_none() {
            let id = time::now_micros().max(inner.last_id + 1);
            if inner.files.is_empty() {
                // A spool starting afresh belongs to this instance; nothing of it
                // is in the database yet.
                write_synced(&self.dir.join(OWNER), instance)?;
                inner.owner = instance.to_owned();
                inner.replayed = Some(0);
            }
            write_synced(&self.dir.join(LAST_ID), &id.to_string())?;
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(self.dir.join(file_name(id)))?;
            // The new file's name must survive a crash too.
            File::open(&self.dir)?.sync_all()?;
            inner.append = Some(file);
            inner.files.push_back((id, 0));
            inner.last_id = id;
        }
        let Inner { append, files, .. } = &mut *inner;
        let (Some(file), Some((_, len))) = (append.as_mut(), files.back_mut()) else {
            unreachable!("a file was just opened");
        };
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        match written {
            // Leave no partial line behind for the next append to run into; if
            // that fails too, the next append starts a new file.
            Err(_) => {
                if file.set_len(*len).is_err() {
                    *append = None;
                }
            }
            Ok(()) => *len += buf.len() as u64,
        }
        written
    }

    /// Rows wait in the spool (or may: the database has not yet said how far it got).
    pub fn pending(&self) -> bool {
        let inner = self.lock();
        match inner.files.front() {
            None => false,
            Some(&(_, len)) => inner.files.len() > 1 || inner.replayed.is_none_or(|r| r < len),
        }
    }

    /// Bytes not yet in the database.
    pub fn backlog(&self) -> u64 {
        let inner = self.lock();
        let total: u64 = inner.files.iter().map(|(_, len)| len).sum();
        total.saturating_sub(inner.replayed.unwrap_or(0))
    }

    /// The oldest file's id, when there is one.
    #[cfg(test)]
    fn file(&self) -> Option<i64> {
        self.lock().files.front().map(|(id, _)| *id)
    }

    /// Learns from the database that the owner's rows are in up to `offset` of
    /// `file`: older files are done, newer ones not begun.
    pub fn resume(&self, file: i64, offset: u64) {
        let mut inner = self.lock();
        while let Some(&(id, len)) = inner.files.front() {
            if id < file {
                inner.replayed = Some(len);
                self.advance(&mut inner);
                continue;
            }
            inner.replayed = Some(if id == file { offset.min(len) } else { 0 });
            break;
        }
        self.advance(&mut inner);
    }

    /// Up to `max` rows from where replay stands.
    pub fn read(&self, max: usize) -> io::Result<Option<Batch>> {
        let (id, start, len) = {
            let inner = self.lock();
            match (inner.files.front(), inner.replayed) {
                (Some(&(id, len)), Some(r)) if r < len => (id, r, len),
                _ => return Ok(None),
            }
        };
        let mut file = File::open(self.dir.join(file_name(id)))?;
        file.seek(SeekFrom::Start(start))?;
        let mut reader = BufReader::new(file.take(len - start));
        let mut batch = Batch {
            file: id,
            end: start,
            rows: Vec::new(),
            unreadable: 0,
        };
        let mut line = Vec::new();
        while batch.rows.len() < max {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            batch.end += n as u64;
            match serde_json::from_slice::<Row>(&line) {
                Ok(row) => batch.rows.push(row),
                Err(error) => {
                    tracing::error!(%error, file = id, offset = batch.end - n as u64, "unreadable spool line skipped");
                    batch.unreadable += 1;
                }
            }
        }
        Ok(Some(batch))
    }

    /// The database now holds `file` up to `end`. A file replayed to its end is
    /// deleted, and replay moves to the next.
    pub fn replayed(&self, file: i64, end: u64) {
        let mut inner = self.lock();
        if inner.files.front().map(|(id, _)| *id) == Some(file) {
            inner.replayed = Some(end);
            self.advance(&mut inner);
        }
    }

    /// Deletes the oldest file while it is wholly replayed.
    fn advance(&self, inner: &mut Inner) {
        while let (Some(&(id, len)), Some(r)) = (inner.files.front(), inner.replayed) {
            if r < len {
                return;
            }
            inner.files.pop_front();
            if inner.files.is_empty() {
                inner.append = None;
            }
            inner.replayed = Some(0);
            match fs::remove_file(self.dir.join(file_name(id)))
                .and_then(|()| File::open(&self.dir)?.sync_all())
            {
                Ok(()) => {}
                // Left behind, it is older than the position the database holds
                // for this spool's owner, so the next start deletes it unread.
                Err(error) => {
                    tracing::warn!(%error, file = id, "cannot delete a replayed spool file")
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the counters as they were: usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes a small file so that it survives a crash: a temporary file, synced,
/// renamed over the old one.
fn write_synced(path: &Path, text: &str) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

fn read_number(path: &Path) -> Option<i64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Drops a last line a crash cut short; returns the file's length.
fn repair(path: &Path) -> io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        tracing::warn!(path = %path.display(), bytes = bytes.len() - whole, "dropping a spool line cut short");
        file.set_len(whole as u64)?;
        file.sync_data()?;
    }
    Ok(whole as u64)
}

fn file_name(id: i64) -> String {
    format!("spool-{id:020}.jsonl")
}

fn file_id(name: &str) -> Option<i64> {
    name.strip_prefix("spool-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::row::tests::sample;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ragway-spool-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rows_come_back_in_order_and_the_file_goes_once_replayed() {
        let dir = temp();
        let spool = Spool::open(&dir, "gw").unwrap();
        assert!(!spool.pending());
        spool.append(&[sample("a"), sample("b")], "gw").unwrap();
        spool.append(&[sample("c")], "gw").unwrap();
        assert!(spool.pending());
        let first = spool.read(2).unwrap().unwrap();
        let ids: Vec<_> = first.rows.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        spool.replayed(first.file, first.end);
        let rest = spool.read(10).unwrap().unwrap();
        assert_eq!(rest.rows.len(), 1);
        assert_eq!(rest.rows[0].request_id, "c");
        spool.replayed(rest.file, rest.end);
        assert!(!spool.pending());
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, [LAST_ID, OWNER], "only the notes are left");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reopening_waits_for_the_database_and_drops_a_torn_line() {
        let dir = temp();
        let spool = Spool::open(&dir, "gw").unwrap();
        spool.append(&[sample("a"), sample("b")], "gw").unwrap();
        let id = spool.file().unwrap();
        drop(spool);
        let path = dir.join(file_name(id));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"at_us\":1,\"req").unwrap();
        drop(file);

        let spool = Spool::open(&dir, "gw").unwrap();
        assert!(spool.pending());
        assert!(
            spool.read(10).unwrap().is_none(),
            "unknown position: no replay"
        );
        let line = fs::read(&path).unwrap();
        let first_line = line.iter().position(|&b| b == b'\n').unwrap() as u64 + 1;
        // The database holds the first row already.
        spool.resume(id, first_line);
        let batch = spool.read(10).unwrap().unwrap();
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rows[0].request_id, "b");
        assert_eq!(batch.unreadable, 0);
        // A position in an older file means this one is all new.
        spool.resume(id - 1, first_line);
        assert_eq!(spool.read(10).unwrap().unwrap().rows.len(), 2);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn several_files_replay_oldest_first_and_done_ones_go() {
        let dir = temp();
        let spool = Spool::open(&dir, "old-name").unwrap();
        spool.append(&[sample("a")], "old-name").unwrap();
        let first = spool.file().unwrap();
        drop(spool);
        let spool = Spool::open(&dir, "new-name").unwrap();
        assert_eq!(
            spool.owner(),
            "old-name",
            "waiting rows keep their instance"
        );
        spool.append(&[sample("b")], "new-name").unwrap();
        drop(spool);
        let spool = Spool::open(&dir, "new-name").unwrap();
        // The database holds all of the first file: it goes unread.
        let len = fs::metadata(dir.join(file_name(first))).unwrap().len();
        spool.resume(first, len);
        assert!(!dir.join(file_name(first)).exists());
        let batch = spool.read(10).unwrap().unwrap();
        assert_eq!(batch.rows[0].request_id, "b");
        spool.replayed(batch.file, batch.end);
        assert!(!spool.pending());
        spool.append(&[sample("c")], "new-name").unwrap();
        assert_eq!(
            spool.owner(),
            "new-name",
            "an emptied spool belongs to the running instance"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
