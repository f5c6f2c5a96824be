-- Per-site catalogs (keep in step with ../sqlite/0006_catalog_sites.sql): a bundle published to
-- some sites has one row per site and reaches only technicians assigned to one of them; a bundle
-- without rows is for every site, as all bundles were before.
CREATE TABLE catalog_bundle_sites (
    sha256 TEXT NOT NULL REFERENCES catalog_bundles(sha256) ON DELETE CASCADE,
    site_id TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    PRIMARY KEY (sha256, site_id)
);
CREATE INDEX catalog_bundle_sites_site ON catalog_bundle_sites(site_id);
