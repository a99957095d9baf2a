//! Tamper evidence: each instance's rows form a hash chain. Row `n` stores the hash
//! of row `n - 1` and its own hash over its content and that link, so changing,
//! removing or inserting a row breaks the chain at that row — unless every later
//! hash is recomputed too, which is why `audit verify` prints the head: kept
//! elsewhere (a ticket, a log store), it pins the chain.

use super::row::{Chained, Row, row_hash};

/// The end of an instance's chain: the last row's place and hash (seq 0 and zeros
/// before the first row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: [u8; 32],
}

impl Head {
    pub const EMPTY: Head = Head {
        seq: 0,
        hash: [0; 32],
    };
}

/// Puts `rows` on the chain after `head`; returns them and the new head.
pub fn link(instance: &str, head: Head, rows: &[Row]) -> (Vec<Chained>, Head) {
    let mut head = head;
    let chained = rows
        .iter()
        .map(|row| {
            let seq = head.seq + 1;
            let hash = row_hash(instance, seq, row, &head.hash);
            let prev_hash = head.hash;
            head = Head { seq, hash };
            Chained {
                instance: instance.to_owned(),
                seq,
                row: row.clone(),
                prev_hash,
                row_hash: hash,
            }
        })
        .collect();
    (chained, head)
}

/// What is wrong with a chain, at the first row where it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The row's content does not match its hash.
    Altered { seq: i64, request_id: String },
    /// A second row claims a place already taken.
    Inserted { seq: i64, request_id: String },
    /// Rows are missing before this place.
    Missing { from: i64, to: i64 },
    /// The row does not link to the row before it (one of them was replaced).
    Broken { seq: i64, request_id: String },
    /// Rows after this place were removed from the end (the head says more).
    Truncated { last: i64, head: i64 },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Altered { seq, request_id } => write!(
                f,
                "row {seq} (request {request_id}) was altered: its content does not match its hash"
            ),
            Fault::Inserted { seq, request_id } => write!(
                f,
                "row {seq} (request {request_id}) was inserted: another row holds that place"
            ),
            Fault::Missing { from, to } if from == to => write!(f, "row {from} is missing"),
            Fault::Missing { from, to } => write!(f, "rows {from} to {to} are missing"),
            Fault::Broken { seq, request_id } => write!(
                f,
                "row {seq} (request {request_id}) does not link to the row before it: one of them was replaced"
            ),
            Fault::Truncated { last, head } => write!(
                f,
                "rows {} to {head} were removed from the end (the last row is {last})",
                last + 1
            ),
        }
    }
}

/// Walks one instance's rows in `seq` order. The first row seen is taken as the
/// anchor (rows before it may have been dropped by retention or lie outside the
/// range asked for); every later row must follow it.
pub struct Verifier {
    instance: String,
    last: Option<Head>,
    pub rows: u64,
    pub fault: Option<Fault>,
}

impl Verifier {
    pub fn new(instance: &str) -> Self {
        Verifier {
            instance: instance.to_owned(),
            last: None,
            rows: 0,
            fault: None,
        }
    }

    /// Checks the next row; after the first fault, rows are only counted.
    pub fn push(&mut self, row: &Chained) {
        self.rows += 1;
        if self.fault.is_some() {
            return;
        }
        let request_id = || row.row.request_id.clone();
        let hash = row_hash(&self.instance, row.seq, &row.row, &row.prev_hash);
        if hash != row.row_hash {
            self.fault = Some(Fault::Altered {
                seq: row.seq,
                request_id: request_id(),
            });
            return;
        }
        if let Some(last) = self.last {
            if row.seq == last.seq {
                self.fault = Some(Fault::Inserted {
                    seq: row.seq,
                    request_id: request_id(),
                });
                return;
            }
            if row.seq > last.seq + 1 {
                self.fault = Some(Fault::Missing {
                    from: last.seq + 1,
                    to: row.seq - 1,
                });
                return;
            }
            if row.prev_hash != last.hash {
                self.fault = Some(Fault::Broken {
                    seq: row.seq,
                    request_id: request_id(),
                });
                return;
            }
        }
        self.last = Some(Head {
            seq: row.seq,
            hash: row.row_hash,
        });
    }

    /// Compares the last row with the head the database keeps (when the walk went
    /// to the end of the chain).
    pub fn finish(&mut self, head: Option<Head>) {
        if self.fault.is_some() {
            return;
        }
        match (self.last, head) {
            (Some(last), Some(head)) if last.seq < head.seq => {
                self.fault = Some(Fault::Truncated {
                    last: last.seq,
                    head: head.seq,
                });
            }
            // Rows past the head were not written by the gateway (the head moves in
            // the same transaction as the rows, and is read in the same snapshot).
            (Some(last), Some(head)) if last.seq > head.seq => {
                self.fault = Some(Fault::Inserted {
                    seq: head.seq + 1,
                    request_id: String::new(),
                });
            }
            (Some(last), Some(head)) if last.seq == head.seq && last.hash != head.hash => {
                self.fault = Some(Fault::Broken {
                    seq: last.seq,
                    request_id: String::new(),
                });
            }
            (None, Some(head)) if head.seq > 0 => {
                self.fault = Some(Fault::Truncated {
                    last: 0,
                    head: head.seq,
                });
            }
            _ => {}
        }
    }

    /// The last row verified.
    pub fn last(&self) -> Option<Head> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::row::tests::sample;

    fn chain(n: usize) -> Vec<Chained> {
        let rows: Vec<_> = (0..n).map(|i| sample(&format!("r{i}"))).collect();
        link("i", Head::EMPTY, &rows).0
    }

    fn verify(rows: &[Chained], head: Option<Head>) -> Option<Fault> {
        let mut v = Verifier::new("i");
        rows.iter().for_each(|r| v.push(r));
        v.finish(head);
        v.fault
    }

    fn head_of(rows: &[Chained]) -> Option<Head> {
        rows.last().map(|r| Head {
            seq: r.seq,
            hash: r.row_hash,
        })
    }

    #[test]
    fn an_intact_chain_verifies_and_continues() {
        let rows = chain(5);
        assert_eq!(verify(&rows, head_of(&rows)), None);
        let (more, head) = link("i", head_of(&rows).unwrap(), &[sample("r5")]);
        assert_eq!(head.seq, 6);
        let all: Vec<_> = rows.into_iter().chain(more).collect();
        assert_eq!(verify(&all, Some(head)), None);
        // A later range verifies on its own: its first row is the anchor.
        assert_eq!(verify(&all[3..], Some(head)), None);
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_row() {
        let rows = chain(5);
        let head = head_of(&rows);

        let mut altered = rows.clone();
        altered[2].row.answer = Some("changed".into());
        assert!(matches!(
            verify(&altered, head),
            Some(Fault::Altered { seq: 3, .. })
        ));

        let mut deleted = rows.clone();
        deleted.remove(2);
        assert_eq!(
            verify(&deleted, head),
            Some(Fault::Missing { from: 3, to: 3 })
        );

        let mut inserted = rows.clone();
        let mut forged = rows[2].clone();
        forged.row.request_id = "forged".into();
        forged.row_hash = row_hash("i", 3, &forged.row, &forged.prev_hash);
        inserted.insert(3, forged);
        assert!(matches!(
            verify(&inserted, head),
            Some(Fault::Inserted { seq: 3, .. })
        ));

        // A replaced row with a fresh hash breaks the link of the row after it.
        let mut replaced = rows.clone();
        replaced[2].row.answer = Some("changed".into());
        replaced[2].row_hash = row_hash("i", 3, &replaced[2].row, &replaced[2].prev_hash);
        assert!(matches!(
            verify(&replaced, head),
            Some(Fault::Broken { seq: 4, .. })
        ));

        assert!(matches!(
            verify(&rows, head_of(&rows[..4])),
            Some(Fault::Inserted { seq: 5, .. })
        ));
        assert_eq!(
            verify(&rows[..3], head),
            Some(Fault::Truncated { last: 3, head: 5 })
        );
    }
}
