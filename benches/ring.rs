//! Criterion benchmark of the placement ring: the cost of one owner lookup
//! (done on every `/mcp` request) at 3, 10 and 100 members.
//! `cargo bench --bench ring`. How many keys move when a member joins is a
//! count, not a timing: the load tool prints it (`cargo bench --bench load`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmcp::affinity::ring::{Member, Ring};

fn ring_of(n: usize) -> Ring {
    Ring::new(
        (0..n)
            .map(|i| Member::new(&format!("vmcp-{i}"), "10.0.0.1:8080"))
            .collect(),
    )
}

/// Session ids shaped like real ones (40 hex digits).
fn keys() -> Vec<String> {
    (0..1024u128)
        .map(|i| format!("{:040x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("ring/owner");
    group.throughput(Throughput::Elements(keys.len() as u64));
    for members in [3usize, 10, 100] {
        let ring = ring_of(members);
        group.bench_with_input(BenchmarkId::from_parameter(members), &ring, |b, ring| {
            b.iter(|| {
                for key in &keys {
                    std::hint::black_box(ring.owner(std::hint::black_box(key)));
                }
            })
        });
    }
    group.finish();
}

fn rebuild(c: &mut Criterion) {
    // A membership change rebuilds the ring; this is what a replica pays per change.
    c.bench_function("ring/new/100", |b| b.iter(|| ring_of(std::hint::black_box(100))));
}

criterion_group!(benches, lookup, rebuild);
criterion_main!(benches);
