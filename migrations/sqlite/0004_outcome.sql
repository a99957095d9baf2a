-- The console's audit search by outcome (`GET /admin/audit?outcome=error`): a rare
-- outcome would otherwise be found by reading every newer row.
CREATE INDEX audit_calls_outcome_at ON audit_calls (outcome_id, at_us);
