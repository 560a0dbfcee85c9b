//! Distils seeds for a fuzz target from a libFuzzer corpus: the smallest
//! input for each thing no smaller input reached (a reply kind for
//! `ext_proc_sequence`, a cause for `classify`). Hand-written seeds of the
//! `arbitrary` byte format would break whenever an input type changes;
//! these are regenerated instead.
//!
//! `cargo run --example fuzz_seeds -- TARGET CORPUS_DIR OUT_DIR`

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
    let mut inputs: Vec<Vec<u8>> = match fs::read_dir(corpus) {
        Ok(dir) => dir.filter_map(|e| fs::read(e.ok()?.path()).ok()).collect(),
        Err(e) => {
            eprintln!("{corpus}: {e}");
            return ExitCode::FAILURE;
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
