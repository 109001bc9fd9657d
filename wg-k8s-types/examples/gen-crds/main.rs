//! Writes the repository's `manifests/base/00-crds.yaml` (all four CRDs)
//! from the Rust types, and `manifests/wg-cni.yml`, the whole install in one
//! file (every `manifests/base/*.yaml`, in name order).
//!
//! `cargo run -p wg-k8s-types --example gen-crds` writes the files;
//! `... -- --check` exits 1 when either differs from what it would write.

mod render;

use std::process::ExitCode;

fn main() -> ExitCode {
    let bundle = match render::bundle() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("reading manifests/base: {e}");
            return ExitCode::FAILURE;
        }
    };
    let files = [
        (render::path(), render::render()),
        (render::bundle_path(), bundle),
    ];
    let check = std::env::args().any(|a| a == "--check");
    let mut status = ExitCode::SUCCESS;
    for (path, text) in files {
        if check {
            if std::fs::read_to_string(&path).unwrap_or_default() != text {
                eprintln!(
                    "{} is out of date: run `cargo run -p wg-k8s-types --example gen-crds`",
                    path.display()
                );
                status = ExitCode::FAILURE;
            }
            continue;
        }
        if let Err(e) = std::fs::write(&path, &text) {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {} ({} bytes)", path.display(), text.len());
    }
    status
}
