//! Distils seeds for a fuzz target: the smallest input for each thing no
//! smaller input reached (a reply kind for `ext_proc_sequence`, a cause for
//! `classify`), from a libFuzzer corpus or from a search of its own (random
//! inputs, then mutations of those that reached something new; no
//! cargo-fuzz needed). Hand-written seeds of the `arbitrary` byte format
//! would break whenever an input type changes; these are regenerated
//! instead.
//!
//! `cargo run --features fuzzing --example fuzz_seeds -- TARGET CORPUS_DIR OUT_DIR`
//! `cargo run --features fuzzing --example fuzz_seeds -- TARGET --search=N OUT_DIR`

use std::{collections::BTreeMap, env, fs, path::Path, process::ExitCode};

use mulligan::fuzzing;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let [target, corpus, out] = args.as_slice() else {
        eprintln!("usage: fuzz_seeds TARGET CORPUS_DIR OUT_DIR");
        return ExitCode::from(2);
    };
    let labels: fn(&[u8]) -> Vec<String> = match target.as_str() {
        "ext_proc_sequence" => |d| {
            fuzzing::ext_proc_sequence(d)
                .into_iter()
                .map(String::from)
                .collect()
        },
        "classify" => |d| {
            fuzzing::classify(d)
                .map(|c| c.as_str().to_string())
                .into_iter()
                .collect()
        },
        other => {
            eprintln!("no seed distiller for {other}");
            return ExitCode::from(2);
        }
    };
    let mut inputs: Vec<Vec<u8>> = if let Some(n) = corpus.strip_prefix("--search=") {
        search(labels, n.parse().unwrap_or(100_000))
    } else {
        match fs::read_dir(corpus) {
            Ok(dir) => dir.filter_map(|e| fs::read(e.ok()?.path()).ok()).collect(),
            Err(e) => {
                eprintln!("{corpus}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    inputs.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    let mut best: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for input in &inputs {
        for label in labels(input) {
            best.entry(label).or_insert_with(|| input.clone());
        }
    }
    let out = Path::new(out);
    if let Err(e) = fs::create_dir_all(out) {
        eprintln!("{}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    for (label, input) in &best {
        let path = out.join(label);
        if let Err(e) = fs::write(&path, input) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{label}: {} bytes", input.len());
    }
    ExitCode::SUCCESS
}

/// `n` inputs: random ones, and mutations of every input that reached a
/// label (or a pair of labels in a row) no input before it reached.
fn search(labels: fn(&[u8]) -> Vec<String>, n: usize) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(0x7365_6564);
    let mut seen = std::collections::BTreeSet::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    for _ in 0..n {
        let input = match rng.usize(..4) {
            0 if !pool.is_empty() => pool[rng.usize(..pool.len())].clone(),
            _ => {
                let len = rng.usize(..=512);
                (0..len).map(|_| rng.u8(..)).collect()
            }
        };
        let input = mutate(&mut rng, input, &pool);
        let got = labels(&input);
        let pairs = got.windows(2).map(|w| format!("{}>{}", w[0], w[1]));
        // Every label is recorded: no short cut past the first new one.
        let new = got
            .iter()
            .cloned()
            .chain(pairs)
            .filter(|l| seen.insert(l.clone()))
            .count();
        let fresh = new > 0;
        if fresh {
            pool.push(input);
        }
    }
    pool
}

fn mutate(rng: &mut fastrand::Rng, mut input: Vec<u8>, pool: &[Vec<u8>]) -> Vec<u8> {
    for _ in 0..rng.usize(1..=8) {
        let at = rng.usize(..=input.len());
        match rng.u8(..4) {
            0 if at < input.len() => input[at] = rng.u8(..),
            1 if at < input.len() => {
                let end = (at + rng.usize(..=8)).min(input.len());
                input.drain(at..end);
            }
            2 if !pool.is_empty() => {
                let other = &pool[rng.usize(..pool.len())];
                let from = rng.usize(..=other.len());
                let end = (from + rng.usize(..=64)).min(other.len());
                input.splice(at..at, other[from..end].iter().copied());
            }
            _ => input.insert(at, rng.u8(..)),
        }
    }
    input
}
