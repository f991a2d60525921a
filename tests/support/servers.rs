//! Real PostgreSQL, RabbitMQ and S3-compatible servers on free loopback ports.
