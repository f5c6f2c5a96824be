-- Device credentials, encrypted at rest under the server's data key (ChaCha20-Poly1305).
CREATE TABLE device_credentials (
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (device_id, kind)
);
