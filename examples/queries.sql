-- The ten questions operators ask first, as SQL over the tracesieve store (DuckDB).
-- Run any one with `tracesieve query "<statement>"` (also while `tracesieve serve` runs).
-- Tables and columns: spans, detections, candidates (see DESIGN.md / README "Tables").

-- 1. What share of traces fails, by failure mode and model?
WITH trace_model AS (
    SELECT DISTINCT trace_id, llm_model_name AS model
    FROM spans
    WHERE span_kind = 'LLM'
), traces_per_model AS (
    SELECT model, count(*) AS traces FROM trace_model GROUP BY model
)
SELECT tm.model, d.failure_mode,
       count(DISTINCT d.trace_id) AS failing_traces,
       t.traces,
       round(100.0 * count(DISTINCT d.trace_id) / t.traces, 1) AS failure_pct
FROM detections d
JOIN trace_model tm USING (trace_id)
JOIN traces_per_model t USING (model)
GROUP BY tm.model, d.failure_mode, t.traces
ORDER BY failure_pct DESC, tm.model, d.failure_mode;

-- 2. Which tools are slowest (p50 / p95), and how often do they fail?
SELECT coalesce(tool_name, name) AS tool,
       count(*) AS calls,
       round(quantile_cont(duration_ms, 0.5), 1) AS p50_ms,
       round(quantile_cont(duration_ms, 0.95), 1) AS p95_ms,
       round(max(duration_ms), 1) AS max_ms,
       count(*) FILTER (WHERE status_code = 'ERROR') AS errors
FROM spans
WHERE span_kind = 'TOOL'
GROUP BY 1
ORDER BY p95_ms DESC;

-- 3. Where do the tokens go: spend by service and model?
SELECT service_name, llm_model_name AS model,
       count(*) AS llm_calls,
       sum(llm_token_count_prompt) AS prompt_tokens,
       sum(llm_token_count_completion) AS completion_tokens,
       sum(llm_token_count_total) AS total_tokens,
       round(avg(llm_token_count_total)) AS tokens_per_call
FROM spans
WHERE span_kind = 'LLM'
GROUP BY service_name, model
ORDER BY total_tokens DESC NULLS LAST;

-- 4. What happened in one conversation: every turn (trace) of a session, in order, with its failures?
--    (sess-1005 is a session of examples/support_agent.py; put yours here.)
SELECT r.trace_id, r.start_time, round(r.duration_ms) AS ms, r.status_code,
       r.input_value AS asked, r.output_value AS answered,
       (SELECT string_agg(DISTINCT d.failure_mode, ', ') FROM detections d WHERE d.trace_id = r.trace_id) AS failures
FROM spans r
WHERE r.session_id = 'sess-1005' AND r.parent_span_id IS NULL
ORDER BY r.start_time;

-- 5. Which failures hit most often and still wait for review (top candidates by occurrences)?
SELECT candidate_id, failure_mode, severity, blast_radius, occurrences,
       len(trace_ids) AS traces, status,
       input->>'$.user_message' AS user_message,
       last_seen
FROM candidates
WHERE status IN ('new', 'duplicate')
ORDER BY occurrences DESC, severity, last_seen DESC
LIMIT 10;

-- 6. How often does each model's call fail (error rate by model), and with what?
SELECT llm_model_name AS model,
       count(*) AS calls,
       count(*) FILTER (WHERE status_code = 'ERROR') AS errors,
       round(100.0 * count(*) FILTER (WHERE status_code = 'ERROR') / count(*), 1) AS error_pct,
       any_value(status_message) FILTER (WHERE status_code = 'ERROR') AS example_error
FROM spans
WHERE span_kind = 'LLM'
GROUP BY 1
ORDER BY error_pct DESC, calls DESC;

-- 7. Which questions find nothing in the knowledge base (retrieval misses by query)?
SELECT s.input_value AS query,
       count(*) AS misses,
       any_value(d.message) AS why,
       max(d.detected_at) AS last_miss
FROM detections d
JOIN spans s ON s.trace_id = d.trace_id AND s.span_id = d.span_id
WHERE d.failure_mode = 'retrieval_miss'
GROUP BY s.input_value
ORDER BY misses DESC, last_miss DESC;

-- 8. What was detected in the last hour, by mode and severity?
SELECT failure_mode, severity,
       count(*) AS detections,
       count(DISTINCT trace_id) AS traces,
       max(detected_at) AS latest
FROM detections
WHERE detected_at >= now() - INTERVAL 1 HOUR
GROUP BY failure_mode, severity
ORDER BY severity, detections DESC;

-- 9. Which irreversible actions (refunds, e-mails) ran in a conversation that had already gone wrong?
SELECT d.detected_at, d.severity, s.tool_name AS tool, s.input_value AS arguments,
       r.input_value AS asked, d.message, d.trace_id
FROM detections d
JOIN spans s ON s.trace_id = d.trace_id AND s.span_id = d.span_id
JOIN spans r ON r.trace_id = d.trace_id AND r.parent_span_id IS NULL
WHERE d.failure_mode = 'blast_radius_breach'
ORDER BY d.detected_at DESC;

-- 10. What personal data did the pipeline strip before storing, by type and service?
SELECT service_name, t.pii_type,
       sum(CAST(json_extract(pii_redactions, '$."' || t.pii_type || '"') AS BIGINT)) AS values_replaced,
       count(*) AS spans
FROM spans, unnest(json_keys(pii_redactions)) AS t(pii_type)
GROUP BY service_name, t.pii_type
ORDER BY values_replaced DESC;
