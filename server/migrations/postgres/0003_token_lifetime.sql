-- Tokens expire and can be revoked. Tokens issued before this migration keep no expiry until
-- they are revoked or replaced.
ALTER TABLE tokens ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE tokens ADD COLUMN revoked_at TIMESTAMPTZ;
