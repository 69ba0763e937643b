//! Hostile-input robustness: every parser of outside input, fed seeded random and mutated
//! inputs, must return an error and never panic. These run on stable in every test run; the
//! coverage-guided fuzz targets in `fuzz/` (`./scripts/fuzz`) explore the same parsers.
#![cfg(test)]

use std::path::Path;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// `seed` with a few random bytes flipped, inserted or removed.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            match self.below(3) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.next() as u8;
                }
                1 => {
                    let i = self.below(v.len() + 1);
                    v.insert(i, self.next() as u8);
                }
                _ if !v.is_empty() => {
                    let i = self.below(v.len());
                    v.remove(i);
                }
                _ => {}
            }
        }
        v
    }
}

const ROUNDS: usize = 20_000;

fn run(seeds: &[&[u8]], mut f: impl FnMut(&[u8])) {
    let mut rng = Rng(0x5eed_d1f7_10c4_2026);
    for _ in 0..ROUNDS {
        let input = if rng.below(4) == 0 {
            rng.bytes(512)
        } else {
            let seed = seeds[rng.below(seeds.len())];
            rng.mutate(seed)
        };
        f(&input);
    }
}

#[test]
fn socket_protocol_never_panics() {
    let arm = br#"{"v":1,"op":"arm","id":"c1","rootfs":"/run/c/rootfs","mounts":["/run/c/rootfs/tmp"],"mode":"audit","pid":42,"discover_mounts":true}"#;
    run(
        &[
            arm,
            br#"{"v":1,"op":"status"}"#,
            br#"{"v":1,"op":"explain","id":"x","path":"/tmp/\\xff"}"#,
        ],
        |b| {
            let _ = crate::ipc::parse_request(b);
        },
    );
}

#[test]
fn baseline_format_never_panics() {
    let good = include_bytes!("../baselines/example.baseline");
    run(&[good], |b| {
        let _ = crate::baseline::format::decode(b);
    });
}

#[test]
fn configuration_never_panics() {
    let example = include_bytes!("../systemd/config.toml");
    let dense = b"mode = \"audit\"\nhash_timeout_ms = 5\n[[image]]\nname = \"a*\"\nmode = \"enforce\"\n[[allow]]\nimage = \"*\"\nsha256 = \"a3d987dd3f9ec0610dc13b7fdccef84895628065434f44247a65ef0d2a341b3c\"\n";
    run(&[example, dense], |b| {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = crate::config::Config::parse(text, Path::new("fuzz.toml"));
        }
    });
}

#[test]
fn oci_state_and_config_never_panic() {
    let state = br#"{"ociVersion":"1.0.2","id":"web-1","status":"creating","pid":4242,"bundle":"/run/b/web-1"}"#;
    let config = br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"driftlock.io/mode":"audit","io.kubernetes.cri.image-name":"x"}}"#;
    let mut rng = Rng(7);
    run(&[state, config], |b| {
        let cfg = if rng.below(2) == 0 {
            b.to_vec()
        } else {
            config.to_vec()
        };
        let st = if rng.below(2) == 0 {
            b.to_vec()
        } else {
            state.to_vec()
        };
        let _ = crate::runtime::hook::arm_request(&st, move |_| Ok(cfg.clone()));
    });
}

#[test]
fn mount_tables_and_escapes_never_panic() {
    let table = b"22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n91 90 0:51 / /tmp/t/root\\040fs rw - overlay overlay rw,lowerdir=/a:/b\n";
    run(&[table], |b| {
        let _ = crate::kernel::mountinfo::parse_mountinfo(b);
        let text = crate::escape::escape_bytes(b);
        assert_eq!(
            crate::escape::unescape(&text).unwrap(),
            b,
            "escaping must round-trip"
        );
        if let Ok(s) = std::str::from_utf8(b) {
            let _ = crate::escape::unescape(s);
            let _ = crate::kernel::exec_name::parse_syscall(s);
        }
    });
}
