//! Build script. Today it only declares the `has_cuda` cfg and records the build's CUDA status
//! for `rotary --version`; the CUDA issue extends it to find nvcc, run the kernel generator in
//! gen/ and compile csrc/ (see README "Layout").

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_cuda)");
    println!("cargo::rustc-env=ROTARY_CUDA_STATUS=not compiled");
    println!("cargo::rerun-if-changed=build.rs");
}
