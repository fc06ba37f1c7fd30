//! Every fuzz target on the stable toolchain: its seeds (`fuzz/corpus/TARGET/`), then
//! mutations of them from a fixed random sequence, so that a run is reproducible. No
//! coverage guides it (libFuzzer does, on nightly: docs/FUZZING.md); it catches what a
//! change breaks on the way in CI. `MXLIMIT_FUZZ_RUNS` sets the mutations per target
//! (default 50 000). A panic fails the test and leaves the input in
//! `target/fuzz-failures/TARGET.bin`.

use std::path::PathBuf;

/// splitmix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the parsers: separators, digits, quotes, high bytes.
const INTERESTING: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b"\0",
    b":",
    b",",
    b"=",
    b"\t",
    b" ",
    b"#",
    b"[",
    b"]",
    b"\"",
    b"/",
    b"9999999",
    b"0",
    b"-1",
    b"\xff",
    b"\xfc",
    b"\xc3\xa9",
    b"IPv6:",
    b"::",
    b"Connect:",
    b"ERROR:",
    b"4294967295",
    b"18446744073709551616",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let t = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(i..i, t.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                input.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(64)).min(len);
                let part: Vec<u8> = input[a..b].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, part);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = (a + 1 + rng.below(128)).min(other.len());
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[a..b].iter().copied());
                }
            }
            _ => {
                let n = rng.below(8);
                let at = rng.below(len + 1);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
        }
    }
    input.truncate(64 * 1024);
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: every target has seeds", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    out.push(Vec::new());
    out
}

fn run(target: &str, f: fn(&[u8])) -> usize {
    let runs: usize = std::env::var("MXLIMIT_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let seeds = seeds(target);
    let seed = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = Rng(seed);
    let mut executed = 0;
    for s in &seeds {
        check(target, f, s);
        executed += 1;
    }
    for _ in 0..runs {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &seeds, &mut input);
        check(target, f, &input);
        executed += 1;
    }
    executed
}

/// Longest one input may take (64 KiB at most, in a debug build): past it the target
/// loops or is quadratic somewhere.
const SLOW: std::time::Duration = std::time::Duration::from_secs(1);

fn check(target: &str, f: fn(&[u8]), input: &[u8]) {
    let t = std::time::Instant::now();
    let failed = match std::panic::catch_unwind(|| f(input)) {
        Err(_) => Some("panicked"),
        Ok(()) if t.elapsed() > SLOW => Some("took over a second"),
        Ok(()) => None,
    };
    if let Some(what) = failed {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{target}.bin"));
        std::fs::write(&file, input).unwrap();
        panic!(
            "{target} {what} on {} bytes, kept in {}",
            input.len(),
            file.display()
        );
    }
}

#[test]
fn every_target_survives_its_seeds_and_their_mutations() {
    let mut names = Vec::new();
    for (name, f) in mxlimit_fuzz::TARGETS {
        let n = run(name, *f);
        eprintln!("{name}: {n} inputs");
        names.push(*name);
    }
    // Each target has its libFuzzer binary too.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz_targets");
    for name in names {
        assert!(
            dir.join(format!("{name}.rs")).exists(),
            "{name} has no fuzz_targets/{name}.rs"
        );
    }
}
