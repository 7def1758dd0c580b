//! Key derivation throughput: how long a batch's keys take to derive (HMAC-SHA256 per ID).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dpskit_core::GroupKey;
use dpskit_factory::keys::{batch, derive_all};

const GROUP: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

fn derivation(c: &mut Criterion) {
    let group = GroupKey::parse(GROUP, "group key").unwrap();
    let mut g = c.benchmark_group("derive");
    for n in [1u64, 100, 10_000] {
        let ids = batch::collect(&[], None, Some(&format!("sn-{{1..{n}}}")), false).unwrap();
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &ids, |b, ids| {
            b.iter(|| derive_all(&group, ids))
        });
    }
    g.finish();
}

criterion_group!(benches, derivation);
criterion_main!(benches);
