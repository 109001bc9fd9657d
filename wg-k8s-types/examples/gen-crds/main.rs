//! Writes the repository's `manifests/00-crds.yaml` (all four CRDs) from the
//! Rust types. The CRDs live with the other install manifests so that
//! `kubectl apply -f manifests/` installs everything, CRDs first.
//!
//! `cargo run -p wg-k8s-types --example gen-crds` writes the file;
//! `... -- --check` exits 1 when the file differs from what it would write.

mod render;

use std::process::ExitCode;

fn main() -> ExitCode {
    let path = render::path();
    let yaml = render::render();
    if std::env::args().any(|a| a == "--check") {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != yaml {
            eprintln!(
                "{} is out of date: run `cargo run -p wg-k8s-types --example gen-crds`",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    if let Err(e) = std::fs::write(&path, &yaml) {
        eprintln!("writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {} ({} bytes)", path.display(), yaml.len());
    ExitCode::SUCCESS
}
