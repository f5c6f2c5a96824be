-- The signed catalog listing the pull carries (one row; keep in step with
-- ../postgres/0005_catalog_listing.sql). `admin publish-listing` stores it only after checking it
-- against the published trust store and catalog.
CREATE TABLE catalog_listing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    document TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
