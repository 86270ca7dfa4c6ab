//! Proof that the emulated CUDA build catches bugs: deliberately broken variants of real
//! kernels (csrc/ copied and changed in one place) are compiled with the SIMT emulator
//! (csrc/emu/) into tests/emu/mutants.cpp's driver, and each must fail (a wrong result or the
//! emulator's error report) while the intact kernels pass under every seed. The last case
//! breaks the real host code: the rotary on the emulated device without the compute stream's
//! wait on a just-copied expert must stop matching resident execution.
//!
//! Needs a host C++ compiler (`c++`, or $CXX): without one it prints a SKIP line.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The seeds of the emulator's thread orders each variant runs under.
const SEEDS: [u32; 4] = [1, 2, 3, 4];

/// (name, file under csrc/, the text to change (it must occur exactly once), its
/// replacement, the driver mode that exercises it).
const MUTANTS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "__syncthreads() removed from rmsnorm's block reduction",
        "rmsnorm.cu",
        "    if (lane == 0) partial[warp] = ss;\n    __syncthreads();\n",
        "    if (lane == 0) partial[warp] = ss;\n",
        "rmsnorm",
    ),
    (
        "warp_sum's shuffle distance starts at 32 instead of 16",
        "include/common.cuh",
        "float warp_sum(float v) {\n#pragma unroll\n    for (int o = ROTARY_WARP / 2;",
        "float warp_sum(float v) {\n#pragma unroll\n    for (int o = ROTARY_WARP;",
        "gemv",
    ),
    ("gemv's row bound off by one", "gemv.cuh", "if (row >= p.rows) return;", "if (row > p.rows) return;", "gemv"),
    (
        "gemv reads one chunk past the end of a weight row",
        "gemv.cuh",
        "for (int c = lane; c < n_chunks; c += ROTARY_WARP) {\n        float v[Q::CHUNK];\n        Q::dequant(row, c, v);",
        "for (int c = lane; c <= n_chunks; c += ROTARY_WARP) {\n        float v[Q::CHUNK];\n        Q::dequant(row, c, v);",
        "gemv",
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compiler() -> Option<String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    Command::new(&cxx).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| cxx)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dst = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), &dst).expect("copy");
        }
    }
}

/// Build the driver against `csrc` (a copy, maybe mutated) into `exe`.
fn build(cxx: &str, csrc: &Path, exe: &Path) {
    build_driver(cxx, "mutants.cpp", &["rmsnorm.cu"], csrc, exe);
}

/// Build tests/emu/`driver` with csrc/`sources` and the emulator against `csrc` into `exe`.
fn build_driver(cxx: &str, driver: &str, sources: &[&str], csrc: &Path, exe: &Path) {
    let driver = root().join("tests/emu").join(driver);
    let out = Command::new(cxx)
        .args(["-std=c++17", "-O1", "-pthread", "-fno-strict-aliasing", "-DROTARY_EMU", "-w"])
        .arg(format!("-I{}", csrc.join("emu/include").display()))
        .arg(format!("-I{}", csrc.join("emu").display()))
        .arg(format!("-I{}", csrc.display()))
        .arg(format!("-I{}", csrc.join("include").display()))
        .arg("-o")
        .arg(exe)
        .args(["-x", "c++"])
        .arg(&driver)
        .args(sources.iter().map(|f| csrc.join(f)))
        .arg(csrc.join("emu/simt.cpp"))
        .arg(csrc.join("emu/runtime.cpp"))
        .output()
        .expect("run the C++ compiler");
    assert!(
        out.status.success(),
        "building {}: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (exit code, output) of the driver in `mode` under each seed.
fn run(exe: &Path, mode: &str) -> Vec<(i32, String)> {
    SEEDS
        .iter()
        .map(|seed| {
            let out = Command::new(exe)
                .arg(mode)
                .env("ROTARY_EMU_SEED", seed.to_string())
                .output()
                .expect("run");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.code().unwrap_or(-1), text.trim().to_string())
        })
        .collect()
}

#[test]
fn the_emulator_catches_broken_kernels() {
    let Some(cxx) = compiler() else {
        println!("SKIP emu mutants: no host C++ compiler (c++ or $CXX)");
        return;
    };
    let tmp = std::env::temp_dir().join(format!("rotary-mutants-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);

    // The intact kernels pass under every seed.
    let intact = tmp.join("intact");
    copy_dir(&root().join("csrc"), &intact.join("csrc"));
    build(&cxx, &intact.join("csrc"), &intact.join("mutants"));
    for mode in ["rmsnorm", "gemv"] {
        for (code, text) in run(&intact.join("mutants"), mode) {
            assert_eq!(code, 0, "intact {mode}: {text}");
        }
    }

    for (i, (name, file, from, to, mode)) in MUTANTS.iter().enumerate() {
        let dir = tmp.join(format!("mutant{i}"));
        copy_dir(&root().join("csrc"), &dir.join("csrc"));
        let path = dir.join("csrc").join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(
            text.matches(from).count(),
            1,
            "{name}: the text to change is not once in csrc/{file}"
        );
        std::fs::write(&path, text.replace(from, to)).expect("write");
        build(&cxx, &dir.join("csrc"), &dir.join("mutants"));
        let results = run(&dir.join("mutants"), mode);
        let caught: Vec<&(i32, String)> = results.iter().filter(|(code, _)| *code != 0).collect();
        println!(
            "{name}: caught under {} of {} seeds; {}",
            caught.len(),
            SEEDS.len(),
            results[0].1.replace('\n', " | ")
        );
        assert!(!caught.is_empty(), "{name}: not detected: {results:?}");
        assert!(caught.iter().all(|(code, _)| *code == 1 || *code == 2), "{name}: {results:?}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// (mode of tests/emu/runtime.cpp, the emulator's settings for it).
const RUNTIME_MODES: &[(&str, &[(&str, &str)])] = &[
    ("last-error", &[("ROTARY_EMU_LINK_GBPS", "0.05")]),
    ("events", &[]),
    ("memory", &[]),
    ("spill", &[("ROTARY_EMU_SPILL", "rmsnorm=256")]),
    ("launch-oom", &[]),
    ("shared-link", &[("ROTARY_EMU_LINK_GBPS", "1")]),
    ("pinned-reuse", &[("ROTARY_EMU_LINK_GBPS", "0.05")]),
    ("pinned-wait", &[("ROTARY_EMU_LINK_GBPS", "0.05")]),
    ("other-device", &[("ROTARY_EMU_DEVICES", "2")]),
];

/// The emulated runtime is as strict as a GPU's where host code can go wrong: each mode of
/// tests/emu/runtime.cpp misuses it one way and checks that the emulator says so (and that the
/// correct twin passes).
#[test]
fn the_emulated_runtime_bites() {
    let Some(cxx) = compiler() else {
        println!("SKIP emu runtime: no host C++ compiler (c++ or $CXX)");
        return;
    };
    let tmp = std::env::temp_dir().join(format!("rotary-emu-runtime-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let exe = tmp.join("runtime");
    build_driver(&cxx, "runtime.cpp", &["rmsnorm.cu", "runtime.cu"], &root().join("csrc"), &exe);
    for (mode, env) in RUNTIME_MODES {
        let mut cmd = Command::new(&exe);
        cmd.arg(mode);
        for var in
            ["ROTARY_EMU_LINK_GBPS", "ROTARY_EMU_SPILL", "ROTARY_EMU_DEVICES", "ROTARY_EMU_VRAM"]
        {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().copied());
        let out = cmd.output().expect("run");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("--- {mode}\n{}", text.trim());
        assert_eq!(out.status.code(), Some(0), "runtime {mode}: {text}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
