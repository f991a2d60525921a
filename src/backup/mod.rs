//! Repository format on S3, retention, resource export/import.
