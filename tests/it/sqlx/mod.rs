//! The sqlx adapters through the local Lakebase (emulator, mock workspace, real PostgreSQL):
//! TLS verified with the endpoint's name for SNI through the relay that honours the resolver
//! hook, a token rotation under load, a burst against a suspended compute, a revoked token,
//! and the pool's close. The same cases run on sqlx 0.8 and 0.9; SeaORM runs on the 0.9 pool.

// Each test holds the read side of the environment lock for its whole run, awaits included:
// no test that sets a variable sqlx reads may run meanwhile.
#[allow(clippy::await_holding_lock)]
mod v0_8 {
    use lakebase_pool::drivers::sqlx_0_8 as adapter;
    use sqlx::postgres::{PgPool, PgPoolOptions};

    include!("cases.rs");
}

#[allow(clippy::await_holding_lock)]
mod v0_9 {
    use lakebase_pool::drivers::sqlx_0_9 as adapter;
    use sqlx_0_9 as sqlx;
    use sqlx_0_9::postgres::{PgPool, PgPoolOptions};

    include!("cases.rs");
}

#[allow(clippy::await_holding_lock)]
mod sea_orm;
