//! Staying up when what we call does not: circuit breakers (stop calling a target
//! that keeps failing, probe it after a pause) and retry back-off. Used by the
//! providers' router, the shared cache tier and the metrics; knows nothing of
//! either. And a guarded Redis connection ([`redis::GuardedRedis`]).

mod backoff;
mod breaker;
pub mod redis;

pub use backoff::RetryPolicy;
pub use breaker::{Breaker, BreakerPolicy, BreakerSnapshot, BreakerState, Permit, Verdict};
