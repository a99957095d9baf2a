//! The local spool: rows the database could not take yet, as JSON lines in one
//! append-only file, synced to disk before `append` returns. The writer replays
//! it in order; the database keeps how far (in the same transaction as the rows),
//! so a crash between the two neither loses nor repeats a row. A fully replayed
//! file is deleted; the next gets a new id (its creation time), so an old position
//! never applies to a new file.

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
    /// The file being appended to, with its id and length.
    file: Option<(File, i64)>,
    len: u64,
    /// How much of the file the database holds; `None` until it has been asked.
    replayed: Option<u64>,
    last_id: i64,
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

impl Spool {
    /// Opens the spool under `dir`, dropping a line cut short by a crash.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut ids: Vec<i64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| file_id(&e.file_name().to_string_lossy()))
            .collect();
        ids.sort_unstable();
        if ids.len() > 1 {
            tracing::warn!(dir = %dir.display(), files = ids.len(), "several spool files: replaying the oldest first");
        }
        let mut inner = Inner {
            file: None,
            len: 0,
            replayed: None,
            last_id: ids.last().copied().unwrap_or(0),
        };
        if let Some(&id) = ids.first() {
            let path = dir.join(file_name(id));
            let mut file = OpenOptions::new().read(true).append(true).open(&path)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < bytes.len() {
                tracing::warn!(path = %path.display(), bytes = bytes.len() - whole, "dropping a spool line cut short");
                file.set_len(whole as u64)?;
                file.sync_data()?;
            }
            inner.len = whole as u64;
            inner.file = Some((file, id));
        }
        Ok(Spool {
            dir: dir.to_owned(),
            inner: Mutex::new(inner),
        })
    }

    /// Appends rows and syncs them to disk.
    pub fn append(&self, rows: &[Row]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(rows.len() * 1024);
        for row in rows {
            serde_json::to_writer(&mut buf, row)?;
            buf.push(b'\n');
        }
        let mut inner = self.lock();
        if inner.file.is_none() {
            let id = time::now_micros().max(inner.last_id + 1);
            let file = OpenOptions::new()
                .create_new(true)
                .read(true)
                .append(true)
                .open(self.dir.join(file_name(id)))?;
            // The new file's name must survive a crash too.
            File::open(&self.dir)?.sync_all()?;
            inner.file = Some((file, id));
            inner.last_id = id;
            inner.len = 0;
            // A new file: nothing of it is in the database yet.
            inner.replayed = Some(0);
        }
        let Some((file, _)) = inner.file.as_mut() else {
            unreachable!("a file was just opened");
        };
        let written = file.write_all(&buf).and_then(|()| file.sync_data());
        if written.is_err() {
            // Leave no partial line behind for the next append to run into.
            let len = inner.len;
            if let Some((file, _)) = inner.file.as_mut() {
                let _ = file.set_len(len);
            }
        } else {
            inner.len += buf.len() as u64;
        }
        written
    }

    /// Rows wait in the spool (or may: the database has not yet said how far it got).
    pub fn pending(&self) -> bool {
        let inner = self.lock();
        inner.file.is_some() && inner.replayed.is_none_or(|r| r < inner.len)
    }

    /// Bytes not yet in the database.
    pub fn backlog(&self) -> u64 {
        let inner = self.lock();
        inner.len - inner.replayed.unwrap_or(0).min(inner.len)
    }

    /// The current file's id, when there is one.
    pub fn file(&self) -> Option<i64> {
        self.lock().file.as_ref().map(|(_, id)| *id)
    }

    /// Learns from the database how far `file` was replayed.
    pub fn resume(&self, file: i64, offset: u64) {
        let mut inner = self.lock();
        let current = inner.file.as_ref().map(|(_, id)| *id);
        inner.replayed = Some(match current {
            Some(id) if id == file => offset.min(inner.len),
            _ => 0,
        });
    }

    /// Up to `max` rows from where replay stands.
    pub fn read(&self, max: usize) -> io::Result<Option<Batch>> {
        let (id, start, len) = {
            let inner = self.lock();
            match (&inner.file, inner.replayed) {
                (Some((_, id)), Some(r)) if r < inner.len => (*id, r, inner.len),
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
    /// deleted.
    pub fn replayed(&self, file: i64, end: u64) {
        let mut inner = self.lock();
        if inner.file.as_ref().map(|(_, id)| *id) != Some(file) {
            return;
        }
        inner.replayed = Some(end);
        if end >= inner.len {
            inner.file = None;
            inner.len = 0;
            if let Err(error) = fs::remove_file(self.dir.join(file_name(file))) {
                tracing::warn!(%error, file, "cannot delete a replayed spool file");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the counters as they were: usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
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
        let spool = Spool::open(&dir).unwrap();
        assert!(!spool.pending());
        spool.append(&[sample("a"), sample("b")]).unwrap();
        spool.append(&[sample("c")]).unwrap();
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
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reopening_waits_for_the_database_and_drops_a_torn_line() {
        let dir = temp();
        let spool = Spool::open(&dir).unwrap();
        spool.append(&[sample("a"), sample("b")]).unwrap();
        let id = spool.file().unwrap();
        drop(spool);
        let path = dir.join(file_name(id));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"at_us\":1,\"req").unwrap();
        drop(file);

        let spool = Spool::open(&dir).unwrap();
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
        // A position for another file means this one is all new.
        spool.resume(id - 1, first_line);
        assert_eq!(spool.read(10).unwrap().unwrap().rows.len(), 2);
        fs::remove_dir_all(dir).unwrap();
    }
}
