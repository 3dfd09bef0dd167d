//! The budget's bookkeeping, without sockets.

use std::time::{Duration, Instant};

use prometheus::Registry;

use super::Connections;

fn closed(registry: &Registry, reason: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "vmcp_http_connections_closed_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[test]
fn at_the_budget_the_longest_idle_connection_makes_room() {
    let registry = Registry::new();
    let budget = Connections::new(3, &registry).expect("metrics");
    let start = Instant::now();
    let a = budget.admit().expect("a");
    let b = budget.admit().expect("b");
    let c = budget.admit().expect("c");
    b.slot.idle(start);
    a.slot.idle(start + Duration::from_secs(1));
    // c is busy: never closed for room.
    let d = budget.admit().expect("room is made");
    assert!(b.slot.is_reclaimed(), "the longest idle goes first");
    assert!(!a.slot.is_reclaimed() && !c.slot.is_reclaimed());
    assert_eq!(closed(&registry, "reclaimed"), 1);
    drop(b); // its connection closes
             // a idles but turns busy before the next admission: it cannot be taken.
    assert!(a.slot.busy());
    assert!(budget.admit().is_none(), "nothing idle: refused");
    assert_eq!(closed(&registry, "refused"), 1);
    drop(d);
    assert!(budget.admit().is_some(), "a place freed");
}

#[test]
fn a_connection_closed_for_room_cannot_turn_busy() {
    let registry = Registry::new();
    let budget = Connections::new(1, &registry).expect("metrics");
    let a = budget.admit().expect("a");
    a.slot.idle(Instant::now());
    let _b = budget.admit().expect("room is made");
    assert!(
        !a.slot.busy(),
        "its next request must not be served on a closing connection"
    );
}
