-- How each technician's visit logs chain together, for the log-continuity report (keep in step
-- with ../sqlite/0004_log_continuity.sql). Per log: when its first event reached the server,
-- whether that event is `log_started` (chained) and the previous head it names; and the first
-- event a laptop sent that contradicts what the server holds of the log (a copy of the log that
-- went back to an older state). Logs stored before this migration began without `log_started`.
CREATE TABLE log_continuity (
    log_id TEXT PRIMARY KEY,
    technician_id TEXT NOT NULL REFERENCES technicians(id),
    started_at TIMESTAMPTZ NOT NULL,
    chained BOOLEAN NOT NULL,
    previous_log_id TEXT,
    previous_seq BIGINT,
    previous_hash TEXT,
    why TEXT,
    diverged_seq BIGINT,
    diverged_event_id TEXT,
    diverged_hash TEXT,
    diverged_at TIMESTAMPTZ
);
CREATE INDEX log_continuity_technician ON log_continuity(technician_id, started_at);
INSERT INTO log_continuity (log_id, technician_id, started_at, chained)
    SELECT log_id, technician_id, received_at, FALSE FROM events WHERE seq = 1;
