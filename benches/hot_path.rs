//! Microbenchmarks without root: the verdict-cache hit path, baseline decoding, snapshot
//! throughput. Run with `cargo bench --bench hot_path`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use driftlock::Mode;
use driftlock::baseline::{Baseline, BaselineEntry, format, snapshot};
use driftlock::kernel::{FileStat, Timestamp};
use driftlock::verdict::{Finding, VerdictCache, decide};

fn stat(ino: u64) -> FileStat {
    FileStat {
        dev: 42,
        ino,
        mnt_id: 7,
        size: 4096 + ino,
        mode: libc::S_IFREG | 0o755,
        mtime: Timestamp {
            sec: 1_000,
            nsec: 0,
        },
        ctime: Timestamp {
            sec: 1_000,
            nsec: 0,
        },
    }
}

fn cache_hit(c: &mut Criterion) {
    let mut cache = VerdictCache::new(100_000);
    let later = Timestamp {
        sec: 2_000,
        nsec: 0,
    };
    for ino in 0..10_000 {
        cache.insert(
            &stat(ino),
            Finding::InBaseline,
            blake3::hash(&ino.to_le_bytes()).into(),
            later,
        );
    }
    let probe = stat(4_321);
    c.bench_function("cache_hit_and_decide", |b| {
        b.iter(|| {
            let hit = cache.lookup(black_box(&probe)).unwrap();
            black_box(decide(Mode::Enforce, hit.finding))
        })
    });
}

fn baseline_decode(c: &mut Criterion) {
    let entries: Vec<BaselineEntry> = (0..5_000u32)
        .map(|i| BaselineEntry {
            path: format!("/usr/lib/x86_64-linux-gnu/some/dir/file-{i}").into_bytes(),
            size: u64::from(i) * 100,
            mode: 0o755,
            blake3: blake3::hash(&i.to_le_bytes()).into(),
        })
        .collect();
    let encoded = format::encode(&Baseline::new(b"key".to_vec(), b"/r".to_vec(), 1, entries));
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("decode_5000_entries", |b| {
        b.iter(|| format::decode(black_box(&encoded)).unwrap())
    });
    g.finish();
}

fn snapshot_throughput(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("driftlock-bench-snap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut total = 0u64;
    for d in 0..8 {
        std::fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
        for f in 0..25 {
            let p = dir.join(format!("d{d}/f{f}"));
            let data: Vec<u8> = (0..(64 * 1024 * (1 + f % 8)))
                .map(|i| (i * 31 + f) as u8)
                .collect();
            total += data.len() as u64;
            std::fs::write(&p, &data).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Bytes(total));
    g.sample_size(20);
    g.bench_function("200_files_page_cache_hot", |b| {
        b.iter(|| snapshot(&dir, vec![], 0).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, cache_hit, baseline_decode, snapshot_throughput);
criterion_main!(benches);
