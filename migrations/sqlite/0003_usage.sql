-- Prompt tokens the provider served from its own cache, priced apart; NULL when
-- the provider reported none. `GET /admin/usage` sums it.
ALTER TABLE audit_calls ADD COLUMN cached_tokens INTEGER;

-- Spend by key over time (`GET /admin/usage?group_by=key`, a key's own totals).
CREATE INDEX audit_calls_key_at ON audit_calls (key_id, at_us);
