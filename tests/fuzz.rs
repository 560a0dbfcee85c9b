//! The fuzz targets (`mulligan::fuzzing`) for a fixed count under `cargo
//! test`, no cargo-fuzz needed: the committed seeds (`fuzz/seeds/`), then
//! pseudo-random inputs from a fixed RNG seed, so a failure replays. The
//! invariants live in the targets; here they only get inputs.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use mulligan::fuzzing;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("seed entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn random(rng: &mut fastrand::Rng, max_len: usize) -> Vec<u8> {
    let len = rng.usize(..=max_len);
    (0..len).map(|_| rng.u8(..)).collect()
}

#[test]
fn ext_proc_sequence() {
    let mut seen = BTreeSet::new();
    for (path, seed) in seeds("ext_proc_sequence") {
        eprintln!("{}", path.display());
        seen.extend(fuzzing::ext_proc_sequence(&seed));
    }
    // The seeds are worth their place: between them they reach every
    // answer of every role (a retry, a hold, a 503 that stands with
    // Retry-After, a retry stopped at the gate), a refused role and both
    // body paths.
    for label in [
        "retry",
        "hold",
        "retry_after",
        "stopped",
        "unknown_role",
        "body_echo",
        "request_body",
    ] {
        assert!(seen.contains(label), "no seed reaches {label}: {seen:?}");
    }
    let mut rng = fastrand::Rng::with_seed(0x6d75_6c6c);
    for _ in 0..15_000 {
        fuzzing::ext_proc_sequence(&random(&mut rng, 1024));
    }
}

#[test]
fn classify() {
    let mut causes = BTreeSet::new();
    for (_, seed) in seeds("classify") {
        causes.extend(fuzzing::classify(&seed).map(|c| c.as_str()));
    }
    assert!(causes.len() >= 8, "the seeds reach only {causes:?}");
    let mut rng = fastrand::Rng::with_seed(0x6361_7573);
    for _ in 0..200_000 {
        fuzzing::classify(&random(&mut rng, 96));
    }
}

/// Byte-level edits that keep most of a seed's TOML intact, so inputs get
/// past the lexer and into the parser and the config's own types.
fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "=",
        "\"",
        "'",
        "[",
        "]",
        "[[",
        "{",
        "}",
        ",",
        "#",
        "\n",
        "\r\n",
        ".",
        "-1",
        "0",
        "1e400",
        "\"1s\"",
        "\"500000000000years\"",
        "\"0ms\"",
        "true",
        "nan",
        "\"é\"",
        "\u{feff}",
        "\\u",
        "\"\"\"",
        "[[kubernetes.services]]\nname = \"x\"\n",
        "window = \"1000000000s\"\n",
        "[retry]\n",
        "[hold]\n",
        "[rescue]\n",
        "ratio = -inf\n",
    ];
    let mut out = seed.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=out.len());
        match rng.u8(..5) {
            0 if at < out.len() => out[at] = rng.u8(..),
            1 => {
                let end = (at + rng.usize(..=16)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let t = TOKENS[rng.usize(..TOKENS.len())];
                out.splice(at..at, t.bytes());
            }
            3 => {
                let end = (at + rng.usize(..=32)).min(out.len());
                let span = out[at..end].to_vec();
                let to = rng.usize(..=out.len());
                out.splice(to..to, span);
            }
            _ => out.insert(at, rng.u8(..)),
        }
    }
    out
}

#[test]
fn config() {
    let seeds = seeds("config");
    let parsed = seeds.iter().filter(|(_, s)| fuzzing::config(s)).count();
    assert!(parsed >= 3, "only {parsed} seed configs parse");
    let mut rng = fastrand::Rng::with_seed(0x746f_6d6c);
    for i in 0..20_000 {
        let (_, seed) = &seeds[i % seeds.len()];
        fuzzing::config(&mutate(&mut rng, seed));
    }
    for _ in 0..5_000 {
        fuzzing::config(&random(&mut rng, 256));
    }
}
