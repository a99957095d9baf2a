//! `ragway audit verify` and `export`: walk each instance's chain in order,
//! a window of places at a time.

use std::future::Future;

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
        walk(store, &instance, range, head.map(|h| h.seq), |rows| {
            first = first.or(rows.first().map(|r| r.seq));
            rows.iter().for_each(|r| verifier.push(r));
            verifier.fault.is_none()
        })
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

/// Calls `each` with every window of `instance`'s rows in chain order (up to
/// place `upto` when given, else to the last row), until it returns false.
pub async fn walk(
    store: &dyn AuditStore,
    instance: &str,
    range: Range,
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
        // By place alone: a row whose time falls outside the range between two
        // that fall inside (times need not follow places) is still checked.
        let rows = store
            .chain(instance, (after, upto), Range::default())
            .await?;
        if !rows.is_empty() && !each(&rows) {
            break;
        }
        after = upto;
    }
    Ok(())
}

/// Every row within `range` (and of `tenant`, when given), instance by instance in
/// chain order, handed to `write`.
pub async fn export<F, Fut>(
    store: &dyn AuditStore,
    range: Range,
    tenant: Option<&str>,
    mut write: F,
) -> Result<u64, StoreError>
where
    F: FnMut(Vec<Chained>) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    let mut count = 0;
    for instance in store.instances().await? {
        let Some((min, max)) = store.seq_bounds(&instance, range).await? else {
            continue;
        };
        let mut after = min - 1;
        while after < max {
            let upto = (after + WINDOW).min(max);
            let mut rows = store.chain(&instance, (after, upto), range).await?;
            if let Some(tenant) = tenant {
                rows.retain(|r| r.row.tenant.as_deref() == Some(tenant));
            }
            count += rows.len() as u64;
            write(rows)
                .await
                .map_err(|e| StoreError::Other(format!("writing the export: {e}")))?;
            after = upto;
        }
    }
    Ok(count)
}
