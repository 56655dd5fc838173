//! Stores of the logic tier: PostgreSQL for users and devices, Redis for tokens, online status
//! and node leases.

pub mod lease;
pub mod pg;
pub mod redis;
pub mod redis_batch;
