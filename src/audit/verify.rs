//! `ragway audit verify` and `export`: walk each instance's chain in order,
//! a window of places at a time.

use super::chain::{Fault, Head, Verifier};
use super::row::Chained;
use super::store::{AuditStore, Range, StoreError};
use crate::encode::hex;

/// Places read per query.
const WINDOW: i64 = 5_000;

/// One instance's chain, as verified.
#[derive(Debug)]
pub struct ChainReport {
    pub instance: String,
    pub rows: u64,
    /// The first and last place seen.
    pub first: Option<i64>,
    pub last: Option<Head>,
    pub fault: Option<Fault>,
}

impl std::fmt::Display for ChainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.fault, self.first, self.last) {
            (Some(fault), _, _) => write!(
                f,
                "{}: FAILED after {} rows: {fault}",
                self.instance, self.rows
            ),
            (None, Some(first), Some(last)) => write!(
                f,
                "{}: ok, {} rows, places {first} to {}, head {}",
                self.instance,
                self.rows,
                last.seq,
                hex(&last.hash)
            ),
            _ => write!(f, "{}: no rows in range", self.instance),
        }
    }
}

/// Verifies every instance's chain within `range`. Without an end to the range the
/// walk goes to the stored head, and rows removed from the end or added past it
/// are found too.
pub async fn verify(store: &dyn AuditStore, range: Range) -> Result<Vec<ChainReport>, StoreError> {
    let mut reports = Vec::new();
    for instance in store.instances().await? {
        // Read before the rows: rows written meanwhile lie past it and are not
        // taken for forgeries.
        let head = match range.until {
            None => store.head(&instance).await?.map(|h| h.head),
            Some(_) => None,
        };
        let mut verifier = Verifier::new(&instance);
        let mut first = None;
        // By place alone: a row whose time falls outside the range between two that
        // fall inside (times need not follow places) is still checked.
        walk(
            store,
            &instance,
            range,
            Range::default(),
            head.map(|h| h.seq),
            |rows| {
                first = first.or(rows.first().map(|r| r.seq));
                rows.iter().for_each(|r| verifier.push(r));
                verifier.fault.is_none()
            },
        )
        .await?;
        // The head says where the chain ends: compared when the walk went there
        // (an instance idle since `since` has nothing to compare).
        if range.until.is_none() && (range.since.is_none() || verifier.rows > 0) {
            verifier.finish(head);
            if verifier.fault.is_none() && store.beyond_head(&instance).await? > 0 {
                let seq = head.map_or(0, |h| h.seq) + 1;
                verifier.fault = Some(Fault::Inserted {
                    seq,
                    request_id: String::new(),
                });
            }
        }
        reports.push(ChainReport {
            instance,
            rows: verifier.rows,
            first,
            last: verifier.last(),
            fault: verifier.fault,
        });
    }
    Ok(reports)
}

/// Calls `each` with every window of `instance`'s rows in chain order, from the
/// first place in `range` to the last (or to place `upto`), keeping the rows within
/// `rows_in`, until it returns false.
async fn walk(
    store: &dyn AuditStore,
    instance: &str,
    range: Range,
    rows_in: Range,
    upto: Option<i64>,
    mut each: impl FnMut(&[Chained]) -> bool,
) -> Result<(), StoreError> {
    let Some((min, max)) = store.seq_bounds(instance, range).await? else {
        return Ok(());
    };
    let max = upto.unwrap_or(max);
    let mut after = min - 1;
    while after < max {
        let upto = (after + WINDOW).min(max);
        let rows = store.chain(instance, (after, upto), rows_in).await?;
        if !rows.is_empty() && !each(&rows) {
            break;
        }
        after = upto;
    }
    Ok(())
}

/// Every row within `range` (and of `tenant`, when given), instance by instance in
/// chain order, handed to `write`; returns how many.
pub async fn export(
    store: &dyn AuditStore,
    range: Range,
    tenant: Option<&str>,
    mut write: impl FnMut(&Chained) -> std::io::Result<()>,
) -> Result<u64, StoreError> {
    let mut count = 0;
    let mut failed = None;
    for instance in store.instances().await? {
        walk(store, &instance, range, range, None, |rows| {
            let wanted = rows
                .iter()
                .filter(|r| tenant.is_none_or(|t| r.row.tenant.as_deref() == Some(t)));
            for row in wanted {
                if let Err(error) = write(row) {
                    failed = Some(error);
                    return false;
                }
                count += 1;
            }
            true
        })
        .await?;
        if let Some(error) = failed.take() {
            return Err(StoreError::Other(format!("writing the export: {error}")));
        }
    }
    Ok(count)
}
