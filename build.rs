//! Rebuilds the binary when the embedded Python package changes.

fn main() {
    println!("cargo:rerun-if-changed=python/torchyard");
}
