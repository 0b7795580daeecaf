//! The federation's state: what we export ([`local`]), what each peer exported to us
//! ([`imported`]), and the merged view gateways and DNS consume ([`view`]).

pub mod imported;
pub mod local;
pub mod sharded;
pub mod view;

pub use imported::{PeerCatalog, StoredDelta};
pub use local::LocalCatalog;
pub use sharded::{ShardedMap, changed_keys};
pub use view::{
    ClusterPlace, ClusterRoute, ExportMap, KubeAddrs, LocalSide, MeshView, PeerSide, PeerStatus,
    Route, RouteMap, merge_key,
};
