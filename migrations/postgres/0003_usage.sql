-- Prompt tokens the provider served from its own cache (DeepSeek's
-- prompt_cache_hit_tokens, OpenAI's prompt_tokens_details.cached_tokens), priced
-- apart; NULL when the provider reported none. `GET /admin/usage` sums it.
ALTER TABLE audit_calls ADD COLUMN cached_tokens bigint;

-- Spend by key over time (`GET /admin/usage?group_by=key`, a key's own totals).
CREATE INDEX audit_calls_key_at ON audit_calls (key_id, at);

CREATE OR REPLACE VIEW audit_log AS
SELECT c.at, i.name AS instance, c.seq, c.request_id, t.name AS tenant,
       k.name AS client_key, c.end_user, r.name AS route, a.name AS alias,
       g.name AS target, split_part(g.name, ':', 2) AS upstream_model,
       c.attempts, ca.name AS cache, c.local_fallback, c.stream, c.status,
       o.name AS outcome, e.name AS error, c.latency_us / 1000.0 AS latency_ms,
       c.ttft_us / 1000.0 AS ttft_ms, c.prompt_tokens, c.completion_tokens, c.cost,
       c.pii, c.prompt, c.answer, c.passages, c.client_ip, c.user_agent,
       encode(c.prev_hash, 'hex') AS prev_hash, encode(c.row_hash, 'hex') AS row_hash,
       c.cached_tokens
FROM audit_calls c
JOIN audit_names i ON i.id = c.instance_id
JOIN audit_names r ON r.id = c.route_id
JOIN audit_names o ON o.id = c.outcome_id
LEFT JOIN audit_names t ON t.id = c.tenant_id
LEFT JOIN audit_names k ON k.id = c.key_id
LEFT JOIN audit_names a ON a.id = c.alias_id
LEFT JOIN audit_names g ON g.id = c.target_id
LEFT JOIN audit_names ca ON ca.id = c.cache_id
LEFT JOIN audit_names e ON e.id = c.error_id;
