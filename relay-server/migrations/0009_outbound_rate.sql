-- The per-minute sending rate of each account, kept beside its daily count
-- so that it holds across restarts and for every relay instance sharing
-- this database: the "theoretical arrival time" of the generic cell rate
-- algorithm (milliseconds since the epoch). Each accepted message pushes it
-- 60/N seconds ahead of max(itself, now); a message is refused while it
-- lies more than a minute's burst ahead of now. A new day's row starts
-- from now.
ALTER TABLE outbound_counts ADD COLUMN tat_ms BIGINT NOT NULL DEFAULT 0;
