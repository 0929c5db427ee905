//! The per-user pools' observable instruments (feature `opentelemetry`): all users' pools
//! together, as one pool named `{app}/users`. Users come and go and instruments are never
//! unregistered, so no instrument or attribute is per user (none names a user, either).

use std::sync::Arc;

use super::{UserPoolStats, UserPools};
use crate::telemetry::{Observer, by, count, one};

impl UserPools {
    /// Registers the aggregate's instruments (once, when the pools are built).
    pub(super) fn observe(&self) {
        let Some((meter, name)) = self.inner.template.users_telemetry().meter() else {
            return;
        };
        let pools = Arc::downgrade(&self.inner);
        let max_size = self.inner.settings.max_size;
        let observer = Observer::new(meter, name, move || {
            pools.upgrade().map(|inner| Snapshot {
                stats: UserPools { inner }.stats(),
                max_size,
            })
        });
        observer.up_down(
            "db.client.connection.count",
            "{connection}",
            "The number of connections that are currently in state described by the state \
             attribute",
            |s| {
                let (open, used) = s
                    .stats
                    .pool_sizes
                    .iter()
                    .fold((0, 0), |(open, used), (o, u)| (open + o, used + u));
                by(
                    "db.client.connection.state",
                    [
                        ("idle", count(open.saturating_sub(used))),
                        ("used", count(used)),
                    ],
                )
            },
        );
        observer.up_down(
            "db.client.connection.max",
            "{connection}",
            "The maximum number of open connections allowed",
            |s| one(count(s.stats.max_users.saturating_mul(s.max_size))),
        );
        observer.up_down(
            "lakebase.user_pools.users",
            "{user}",
            "Signed-in users with a pool of their own",
            |s| one(count(s.stats.users)),
        );
        observer.up_down(
            "lakebase.user_pools.live",
            "{pool}",
            "Per-user pools alive, including evicted ones still finishing a checkout",
            |s| one(count(s.stats.live_pools)),
        );
        observer.counter(
            "lakebase.user_pools.created",
            "{pool}",
            "Per-user pools created",
            |s| one(s.stats.created),
        );
        observer.counter(
            "lakebase.user_pools.evictions",
            "{pool}",
            "Per-user pools evicted, by reason",
            |s| {
                by(
                    "reason",
                    [("lru", s.stats.evicted_lru), ("idle", s.stats.evicted_idle)],
                )
            },
        );
        observer.counter(
            "lakebase.user_pools.refused",
            "{request}",
            "Requests refused as unauthorized",
            |s| one(s.stats.refused),
        );
        observer.token_mints(|s| (s.stats.mints, s.stats.mint_failures));
    }
}

/// What the instruments read: the stats, and each user's pool size limit.
struct Snapshot {
    stats: UserPoolStats,
    max_size: usize,
}
