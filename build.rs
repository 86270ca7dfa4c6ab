//! Build script: find nvcc → run the kernel generator (gen/kernels.rs) → compile csrc/ and the
//! generated instances with the cc crate for the chosen SMs, cudart linked statically → bindgen
//! over csrc/include/abi.h → `cfg(has_cuda)`. Without nvcc (or libclang for bindgen) it warns
//! and builds CPU-only: the CUDA backend then answers "built without CUDA". `REQUIRE_CUDA=1`
//! turns that into a build error.
//!
//! Inputs (environment): NVCC, CUDA_HOME / CUDA_PATH, PATH, ROTARY_CUDA_ARCH ("89", "89;90"),
//! REQUIRE_CUDA, ROTARY_NO_CUDA=1 (a CPU-only build even where nvcc exists). The toolchain script gen/install-cuda.sh puts nvcc in .cuda/ (found here).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "gen/kernels.rs"]
mod kernels;

/// SMs compiled when neither ROTARY_CUDA_ARCH nor a local GPU says otherwise: the RTX 40
/// laptops of the benchmark (sm_89) and H100 (sm_90), plus PTX of sm_89 for later GPUs.
const DEFAULT_SMS: &[u32] = &[89, 90];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_cuda)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=gen");
    println!("cargo::rerun-if-changed=csrc");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "ROTARY_CUDA_ARCH", "REQUIRE_CUDA", "ROTARY_NO_CUDA", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-env-changed=LIBCLANG_PATH"); // where check_libclang() looks
    let require = env::var("REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let refuse = env::var("ROTARY_NO_CUDA").is_ok_and(|v| v == "1");
    let built = if refuse { Err("ROTARY_NO_CUDA=1".to_string()) } else { build_cuda() };
    match built {
        Ok(status) => {
            println!("cargo::rustc-cfg=has_cuda");
            println!("cargo::rustc-env=ROTARY_CUDA_STATUS={status}");
        }
        Err(why) => {
            if require {
                // One line, no panic (whose backtrace note would bury it).
                eprintln!("error: REQUIRE_CUDA=1 but the CUDA build is impossible: {why}");
                std::process::exit(1);
            }
            let hint = if why.contains("nvcc not found") { " (run gen/install-cuda.sh)" } else { "" };
            println!("cargo::warning=building without CUDA: {why}{hint}");
            println!("cargo::rustc-env=ROTARY_CUDA_STATUS=not compiled ({why})");
        }
    }
}

/// Compile everything; the status line for `rotary --version`, or why not.
fn build_cuda() -> Result<String, String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let nvcc = find_nvcc(&manifest).ok_or("nvcc not found")?;
    let version = nvcc_version(&nvcc)?;
    let sms = target_sms()?;
    let cuda_root = nvcc.parent().and_then(Path::parent).ok_or("nvcc has no parent folder")?;

    // bindgen first: it needs libclang, and without it there is no point compiling kernels.
    check_libclang()?;
    let bindings = bindgen::Builder::default()
        .header(manifest.join("csrc/include/abi.h").to_string_lossy())
        .allowlist_function("rotary_.*")
        .allowlist_type("Rotary.*")
        .allowlist_var("ROTARY_.*")
        .rustified_enum("Rotary.*")
        .derive_default(true)
        .layout_tests(true)
        .generate()
        .map_err(|e| format!("bindgen over csrc/include/abi.h failed ({e}); is libclang installed?"))?;
    bindings.write_to_file(out.join("abi.rs")).map_err(|e| format!("writing abi.rs: {e}"))?;

    let gen_dir = out.join("kernels");
    std::fs::create_dir_all(&gen_dir).map_err(|e| format!("{}: {e}", gen_dir.display()))?;
    let generated = kernels::write_all(&gen_dir).map_err(|e| format!("gen/kernels.rs: {e}"))?;

    // cc finds nvcc through $NVCC (`.compiler()` would make it treat nvcc as a host compiler).
    // Kernels are always optimised and never built with device debug info (-G), whatever the
    // Rust profile: a debug build must still run the GPU at speed.
    env::set_var("NVCC", &nvcc);
    let mut build = cc::Build::new();
    build.cuda(true).cudart("static").debug(false).opt_level(3);
    build.include(manifest.join("csrc")).include(manifest.join("csrc/include"));
    build.flag("-std=c++17");
    for &sm in &sms {
        build.flag("-gencode").flag(format!("arch=compute_{sm},code=sm_{sm}"));
    }
    // PTX of the oldest SM: the driver JIT-compiles it for any newer GPU without SASS here.
    let oldest = *sms.iter().min().expect("at least one SM");
    build.flag("-gencode").flag(format!("arch=compute_{oldest},code=compute_{oldest}"));
    build.warnings(false).flag("-Xcompiler").flag("-Wno-unused-function");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(manifest.join("csrc"))
        .map_err(|e| format!("csrc/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    build.files(&sources).files(&generated);
    build.try_compile("rotary_cuda").map_err(|e| format!("nvcc failed: {e}"))?;

    // cudart_static and what it needs; the wheel keeps its libraries in lib/, a toolkit in lib64/.
    for dir in ["lib", "lib64", "targets/x86_64-linux/lib"] {
        let d = cuda_root.join(dir);
        if d.join("libcudart_static.a").exists() {
            println!("cargo::rustc-link-search=native={}", d.display());
        }
    }
    for lib in ["stdc++", "dl", "rt", "pthread"] {
        println!("cargo::rustc-link-lib={lib}");
    }
    let sm_list: Vec<String> = sms.iter().map(|s| format!("sm_{s}")).collect();
    Ok(format!("{} + compute_{oldest} PTX (nvcc {version})", sm_list.join(" ")))
}

/// Load libclang the way bindgen will (clang-sys: $LIBCLANG_PATH alone when set, else
/// `llvm-config --prefix`, then /usr/lib*/… ; libclang-cpp never matches) and return its path,
/// so that a machine without it gets one clear line instead of bindgen's panic.
fn check_libclang() -> Result<String, String> {
    let fail = |why: String| {
        format!(
            "libclang (for bindgen over csrc/include/abi.h) not found: {why}; run \
             gen/install-cuda.sh or apt-get install libclang-dev, or set LIBCLANG_PATH"
        )
    };
    clang_sys::load().map_err(fail)?;
    let library = clang_sys::get_library().ok_or_else(|| fail("clang-sys kept no library".into()))?;
    let path = library.path().display().to_string();
    if !clang_sys::clang_createIndex::is_loaded() {
        return Err(fail(format!("{path} does not export clang_createIndex")));
    }
    Ok(path)
}

/// nvcc from $NVCC, $CUDA_HOME, $CUDA_PATH, PATH, /usr/local/cuda, the project's .cuda/ wheel
/// install, or the Python site-packages of the nvidia-cuda-nvcc wheel, in that order.
fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = env::var("NVCC") {
        candidates.push(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = env::var(var) {
            candidates.push(Path::new(&home).join("bin/nvcc"));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push(PathBuf::from("/usr/local/cuda/bin/nvcc"));
    candidates.push(manifest.join(".cuda/nvidia/cu13/bin/nvcc"));
    if let Ok(o) = Command::new("python3")
        .args(["-c", "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))"])
        .output()
    {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            candidates.push(Path::new(line.trim()).join("nvidia/cu13/bin/nvcc"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let o = Command::new(nvcc).arg("--version").output().map_err(|e| format!("{}: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.contains("release")).ok_or("nvcc --version: no release line")?;
    Ok(line.rsplit(", ").next().unwrap_or(line).trim_start_matches('V').to_string())
}

/// ROTARY_CUDA_ARCH ("89", "89;90", "sm_90"), else the local GPUs' compute capability
/// (nvidia-smi), else DEFAULT_SMS.
fn target_sms() -> Result<Vec<u32>, String> {
    if let Ok(list) = env::var("ROTARY_CUDA_ARCH") {
        let sms = parse_sms(&list).ok_or(format!("ROTARY_CUDA_ARCH={list:?}: want e.g. 89 or 89;90"))?;
        return Ok(sms);
    }
    if let Ok(o) = Command::new("nvidia-smi").args(["--query-gpu=compute_cap", "--format=csv,noheader"]).output() {
        let text = String::from_utf8_lossy(&o.stdout).replace('.', "");
        if let Some(sms) = parse_sms(&text.replace('\n', ";")) {
            return Ok(sms);
        }
    }
    Ok(DEFAULT_SMS.to_vec())
}

fn parse_sms(list: &str) -> Option<Vec<u32>> {
    let mut sms: Vec<u32> = Vec::new();
    for item in list.split([';', ',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
        let sm: u32 = item.trim_start_matches("sm_").parse().ok()?;
        if !(50..=200).contains(&sm) {
            return None;
        }
        if !sms.contains(&sm) {
            sms.push(sm);
        }
    }
    (!sms.is_empty()).then_some(sms)
}
