//! Reproducers for defects left after the recent fixes.
use lakebase_pool as _;
