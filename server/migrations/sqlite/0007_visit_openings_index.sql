-- Site-visit audit exports find a site's visits by their `visit_opened` events: a partial index
-- keeps that a walk over the visits, not over every event stored.
CREATE INDEX events_visit_opened ON events(time, log_id, seq) WHERE kind = 'visit_opened';
