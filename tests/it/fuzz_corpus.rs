//! The fuzz targets' corpora and minimized crashers (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) replayed through the same entry points
//! `cargo fuzz` runs (`kiln::fuzzing`): every input must return, without a
//! panic other than the known, reported ones (`kiln::fuzzing::KNOWN_PANICS`).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            run(&data);
            inputs += 1;
        }
    }
    assert!(inputs > 0, "no corpus for {target}");
}

#[test]
fn sql_corpus() {
    replay("sql", kiln::fuzzing::sql);
}

#[test]
fn parquet_corpus() {
    replay("parquet", kiln::fuzzing::parquet);
}

#[test]
fn model_dir_corpus() {
    replay("model_dir", kiln::fuzzing::model_dir);
}
