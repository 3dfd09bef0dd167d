//! Replica affinity: which replica owns a session (`ring`), who the replicas
//! are (`membership`, `kubernetes`), and getting each request to its owner
//! (`forward`, authenticated by `hop`).

pub mod forward;
pub mod homes;
pub mod hop;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod membership;
pub mod pin;
pub mod ring;

pub use forward::Forwarder;
pub use hop::{HopTarget, Hops, HOP, HOP_HEADER};
pub use membership::{Membership, Placement};
