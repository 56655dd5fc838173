//! Stores of the logic tier: PostgreSQL for users and devices, Redis for tokens and online
//! status.

pub mod pg;
pub mod redis;
pub mod redis_batch;
