//! Build script: find nvcc → run the kernel generator (gen/kernels.rs) → compile csrc/ and the
//! generated instances with the cc crate for the chosen SMs, cudart linked statically, keeping
//! ptxas's resource report (`rotary kernels`) → bindgen over csrc/include/abi.h →
//! `cfg(has_cuda)`. `ROTARY_CUDA=emu` compiles the same sources with the host C++ compiler
//! against csrc/emu/ instead (the emulated CUDA build). Without nvcc (or libclang for bindgen)
//! it warns and builds CPU-only: the CUDA backend then answers "built without CUDA".
//! `REQUIRE_CUDA=1` turns that into a one-line build error.
//!
//! Inputs (environment): NVCC, CUDA_HOME / CUDA_PATH, PATH, ROTARY_CUDA_ARCH ("89", "89;90"),
//! ROTARY_CUDA=emu, REQUIRE_CUDA, ROTARY_NO_CUDA=1 (a CPU-only build even where nvcc exists),
//! LIBCLANG_PATH. gen/install-cuda.sh puts nvcc in .cuda/ (found here) and libclang in place.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "gen/kernels.rs"]
mod kernels;
#[path = "gen/ptxas.rs"]
mod ptxas;

/// SMs compiled when neither ROTARY_CUDA_ARCH nor a local GPU says otherwise: the RTX 40
/// laptops of the benchmark (sm_89) and H100 (sm_90), plus PTX of sm_89 for later GPUs.
const DEFAULT_SMS: &[u32] = &[89, 90];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_cuda)");
    println!("cargo::rustc-check-cfg=cfg(rotary_emu)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=gen");
    println!("cargo::rerun-if-changed=csrc");
    println!("cargo::rerun-if-changed=src/quant/grids.rs"); // gen/ writes its tables
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "ROTARY_CUDA_ARCH",
        "REQUIRE_CUDA",
        "ROTARY_NO_CUDA",
        "ROTARY_CUDA",
        "PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-env-changed=LIBCLANG_PATH"); // where check_libclang() looks
    let require = env::var("REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let refuse = env::var("ROTARY_NO_CUDA").is_ok_and(|v| v == "1");
    let emulated = env::var("ROTARY_CUDA").is_ok_and(|v| v == "emu");
    let built = if refuse {
        Err("ROTARY_NO_CUDA=1".to_string())
    } else if emulated {
        build_emulated()
    } else {
        build_cuda()
    };
    if built.is_err() || emulated {
        // No SASS in this build: an empty resource report (`rotary kernels` says why).
        if let Ok(out) = env::var("OUT_DIR") {
            let _ = write_kernel_report(Path::new(&out), "");
        }
    }
    match built {
        Ok(status) => {
            println!("cargo::rustc-cfg=has_cuda");
            if emulated {
                println!("cargo::rustc-cfg=rotary_emu"); // the emulator's own counters exist
            }
            println!("cargo::rustc-env=ROTARY_CUDA_STATUS={status}");
        }
        Err(why) => {
            if require {
                // One line, no panic (whose backtrace note would bury it).
                eprintln!("error: REQUIRE_CUDA=1 but the CUDA build is impossible: {why}");
                std::process::exit(1);
            }
            let hint =
                if why.contains("nvcc not found") { " (run gen/install-cuda.sh)" } else { "" };
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
    write_abi(&manifest, &out)?;
    let generated = generate_kernels(&out)?;

    // cc finds nvcc through $NVCC (`.compiler()` would make it treat nvcc as a host compiler),
    // here a wrapper that keeps ptxas's resource report of every object (see nvcc_wrapper).
    // Kernels are always optimised and never built with device debug info (-G), whatever the
    // Rust profile: a debug build must still run the GPU at speed.
    let report_dir = out.join("ptxas");
    let _ = std::fs::remove_dir_all(&report_dir);
    std::fs::create_dir_all(&report_dir).map_err(|e| format!("{}: {e}", report_dir.display()))?;
    env::set_var("NVCC", nvcc_wrapper(&out, &nvcc, &report_dir)?);
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
    build.files(csrc_sources(&manifest)?).files(&generated);
    build.try_compile("rotary_cuda").map_err(|e| format!("nvcc failed: {e}"))?;
    write_kernel_report(&out, &collect_ptxas_report(&report_dir)?)?;

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

/// The emulated CUDA build (ROTARY_CUDA=emu): the same csrc/ kernels, runtime.cu and generated
/// instances, compiled by the host C++ compiler against csrc/emu/ (the SIMT emulator and the
/// emulated runtime behind the same cuda* calls). No nvcc; bindgen still needs libclang.
fn build_emulated() -> Result<String, String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    write_abi(&manifest, &out)?;
    let generated = generate_kernels(&out)?;
    let emu = manifest.join("csrc/emu");
    let mut emu_sources: Vec<PathBuf> = std::fs::read_dir(&emu)
        .map_err(|e| format!("csrc/emu/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    emu_sources.sort();
    let mut build = cc::Build::new();
    build.cpp(true).opt_level(2).debug(false).warnings(false);
    // The emulated cuda_runtime.h / cuda_fp16.h come first on the include path.
    build
        .include(emu.join("include"))
        .include(&emu)
        .include(manifest.join("csrc"))
        .include(manifest.join("csrc/include"));
    build.define("ROTARY_EMU", None);
    for f in ["-std=c++17", "-pthread", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-x", "c++"]
    {
        build.flag(f);
    }
    build.files(csrc_sources(&manifest)?).files(&generated).files(&emu_sources);
    let compiler = build.get_compiler();
    build.try_compile("rotary_cuda").map_err(|e| format!("the emulated CUDA build failed: {e}"))?;
    for lib in ["stdc++", "pthread"] {
        println!("cargo::rustc-link-lib={lib}");
    }
    let cc_name =
        compiler.path().file_name().map_or("c++".into(), |n| n.to_string_lossy().into_owned());
    Ok(format!("emulated on the host (SIMT emulator csrc/emu/, built by {cc_name}; sm from ROTARY_EMU_SM, default 89)"))
}

/// A shell wrapper around nvcc that adds `-Xptxas -v` and moves ptxas's resource report of
/// each object from stderr into `report_dir/<object>.txt` (everything else stays on stderr).
fn nvcc_wrapper(out: &Path, nvcc: &Path, report_dir: &Path) -> Result<PathBuf, String> {
    let path = out.join("nvcc-with-report.sh");
    let script = format!(
        "#!/bin/sh\n# @generated by build.rs: do not edit. nvcc with ptxas's resource report kept per object.\n\
         real='{nvcc}'\nreports='{reports}'\nobj=''\nprev=''\n\
         for a in \"$@\"; do [ \"$prev\" = -o ] && obj=\"$a\"; prev=\"$a\"; done\n\
         [ -z \"$obj\" ] && exec \"$real\" \"$@\"\n\
         log=\"$reports/$(basename \"$obj\").txt\"\n\
         \"$real\" -Xptxas -v \"$@\" 2> \"$log.all\"; rc=$?\n\
         grep -E '^ptxas info|bytes stack frame' \"$log.all\" > \"$log\"\n\
         grep -vE '^ptxas info|bytes stack frame' \"$log.all\" >&2\n\
         rm -f \"$log.all\"\nexit $rc\n",
        nvcc = nvcc.display(),
        reports = report_dir.display()
    );
    std::fs::write(&path, script).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
    }
    Ok(path)
}

/// ptxas's reports in `dir` (gen/ptxas.rs) as the TSV rows src/kernels.rs reads, names
/// demangled by c++filt when the machine has it.
fn collect_ptxas_report(dir: &Path) -> Result<String, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut entries = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        entries.extend(ptxas::parse(&text));
    }
    // Demangle all names in one c++filt call (binutils); keep them mangled without it.
    let mangled: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    if let Ok(mut child) = Command::new("c++filt")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write as _;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(mangled.join("\n").as_bytes());
        }
        if let Ok(o) = child.wait_with_output() {
            let names: Vec<String> =
                String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
            if names.len() == entries.len() {
                for (e, n) in entries.iter_mut().zip(names) {
                    e.name = n;
                }
            }
        }
    }
    Ok(ptxas::to_tsv(&entries))
}

/// $OUT_DIR/kernel_report.tsv, embedded in the binary (`rotary kernels`).
fn write_kernel_report(out: &Path, tsv: &str) -> Result<(), String> {
    let path = out.join("kernel_report.tsv");
    std::fs::write(&path, tsv).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("cargo::rustc-env=ROTARY_KERNEL_REPORT={}", path.display());
    Ok(())
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
    let library =
        clang_sys::get_library().ok_or_else(|| fail("clang-sys kept no library".into()))?;
    let path = library.path().display().to_string();
    if !clang_sys::clang_createIndex::is_loaded() {
        return Err(fail(format!("{path} does not export clang_createIndex")));
    }
    Ok(path)
}

/// bindgen over csrc/include/abi.h into $OUT_DIR/abi.rs (after check_libclang: one clear line
/// instead of bindgen's panic when libclang is missing).
fn write_abi(manifest: &Path, out: &Path) -> Result<(), String> {
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
        .map_err(|e| {
            format!("bindgen over csrc/include/abi.h failed ({e}); is libclang installed?")
        })?;
    bindings.write_to_file(out.join("abi.rs")).map_err(|e| format!("writing abi.rs: {e}"))
}

/// The generated kernel instances (gen/kernels.rs) in $OUT_DIR/kernels/.
fn generate_kernels(out: &Path) -> Result<Vec<PathBuf>, String> {
    let gen_dir = out.join("kernels");
    std::fs::create_dir_all(&gen_dir).map_err(|e| format!("{}: {e}", gen_dir.display()))?;
    kernels::write_all(&gen_dir).map_err(|e| format!("gen/kernels.rs: {e}"))
}

/// csrc/*.cu, sorted.
fn csrc_sources(manifest: &Path) -> Result<Vec<PathBuf>, String> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(manifest.join("csrc"))
        .map_err(|e| format!("csrc/: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    Ok(sources)
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
        .args([
            "-c",
            "import site; print('\\n'.join(site.getsitepackages() + [site.getusersitepackages()]))",
        ])
        .output()
    {
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            candidates.push(Path::new(line.trim()).join("nvidia/cu13/bin/nvcc"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let o = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let line =
        text.lines().find(|l| l.contains("release")).ok_or("nvcc --version: no release line")?;
    Ok(line.rsplit(", ").next().unwrap_or(line).trim_start_matches('V').to_string())
}

/// ROTARY_CUDA_ARCH ("89", "89;90", "sm_90"), else the local GPUs' compute capability
/// (nvidia-smi), else DEFAULT_SMS.
fn target_sms() -> Result<Vec<u32>, String> {
    if let Ok(list) = env::var("ROTARY_CUDA_ARCH") {
        let sms =
            parse_sms(&list).ok_or(format!("ROTARY_CUDA_ARCH={list:?}: want e.g. 89 or 89;90"))?;
        return Ok(sms);
    }
    if let Ok(o) = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
    {
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
