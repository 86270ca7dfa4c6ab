//! The toolchain script's libclang step (gen/install-cuda.sh and its probe gen/find-libclang.py)
//! on fake library trees in a temp dir: Debian's libclang-cpp alone is not libclang (by name,
//! and by its exports when renamed), a non-ELF file is not either, a real libclang is found, and
//! the script runs `apt-get update` + `apt-get install libclang-dev` (a fake apt-get here) only
//! when the probe finds nothing. Cases that need a real libclang on this machine print `SKIP`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const LIBCLANG_CPP: &str = "/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14";

/// A fresh folder under the temp dir, named after the test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rotary-install-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A fake system library tree: <dir>/usr/lib/x86_64-linux-gnu; returns that folder.
fn lib_tree(dir: &Path) -> PathBuf {
    let lib = dir.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(&lib).expect("create fake lib tree");
    lib
}

/// The probe's search restricted to the fake tree, with clang-sys's own glob shapes.
fn search_env(dir: &Path) -> String {
    let root = dir.display();
    format!("{root}/usr/lib*/*/*:{root}/usr/lib*/*:{root}/usr/lib*")
}

fn probe(search: Option<&str>) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(ROOT).join("gen/find-libclang.py")).env_remove("LIBCLANG_PATH");
    match search {
        Some(s) => cmd.env("ROTARY_LIBCLANG_SEARCH", s),
        None => cmd.env_remove("ROTARY_LIBCLANG_SEARCH"),
    };
    cmd.output().expect("run python3 gen/find-libclang.py")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The libclang this machine really has (resolved), or why the caller should skip.
fn real_libclang() -> Result<PathBuf, String> {
    let o = probe(None);
    if !o.status.success() {
        let why = String::from_utf8_lossy(&o.stderr).trim().to_string();
        return Err(format!("no loadable libclang here ({why})"));
    }
    fs::canonicalize(stdout(&o)).map_err(|e| format!("{}: {e}", stdout(&o)))
}

fn write_exe(path: &Path, text: &str) {
    fs::write(path, text).expect("write fake executable");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod fake executable");
}

#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let dir = scratch("cpp-only");
    let lib = lib_tree(&dir);
    // The real libclang-cpp where this machine has it (the case of a fresh Debian 12), else any
    // 64-bit ELF file under that name: the probe must skip it by name either way.
    let cpp = Path::new(LIBCLANG_CPP);
    let target = if cpp.exists() { cpp.to_path_buf() } else { std::env::current_exe().unwrap() };
    symlink(&target, lib.join("libclang-cpp.so.14")).unwrap();
    let o = probe(Some(&search_env(&dir)));
    assert!(!o.status.success(), "libclang-cpp accepted: {}", stdout(&o));
    assert!(stdout(&o).is_empty());

    // Renamed to a libclang name, it matches the globs but must fail the clang_createIndex check.
    if cpp.exists() {
        symlink(cpp, lib.join("libclang.so.14")).unwrap();
        let o = probe(Some(&search_env(&dir)));
        assert!(!o.status.success(), "libclang-cpp renamed accepted: {}", stdout(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("clang_createIndex"), "unexpected reason: {err}");
    } else {
        println!("SKIP renamed libclang-cpp: no {LIBCLANG_CPP} here");
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_elf_is_not_libclang() {
    let dir = scratch("not-elf");
    fs::write(lib_tree(&dir).join("libclang.so"), "INPUT(-lclang)\n").unwrap();
    let o = probe(Some(&search_env(&dir)));
    assert!(!o.status.success(), "a text file accepted: {}", stdout(&o));
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_real_libclang_is_found_beside_libclang_cpp() {
    let real = match real_libclang() {
        Ok(p) => p,
        Err(why) => return println!("SKIP real libclang: {why}"),
    };
    let dir = scratch("real");
    let lib = lib_tree(&dir);
    if Path::new(LIBCLANG_CPP).exists() {
        symlink(LIBCLANG_CPP, lib.join("libclang-cpp.so.14")).unwrap();
    }
    let link = lib.join("libclang-14.so.1");
    symlink(&real, &link).unwrap();
    let o = probe(Some(&search_env(&dir)));
    assert!(o.status.success(), "not found: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout(&o), link.display().to_string());
    let _ = fs::remove_dir_all(&dir);
}

/// Run gen/install-cuda.sh against a fake tree, a fake nvcc and a fake apt-get (and sudo) that
/// log their arguments; the fake `apt-get install` links `installs` into the tree when given.
fn install_script(dir: &Path, installs: Option<&Path>) -> (Output, String) {
    let lib = lib_tree(dir);
    let bin = dir.join("bin");
    let nvcc_dir = dir.join("cuda/nvidia/cu13/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&nvcc_dir).unwrap();
    write_exe(&nvcc_dir.join("nvcc"), "#!/bin/sh\necho 'release 13.0, V13.0.0'\necho fake\n");
    let log = dir.join("apt.log");
    let install = match installs {
        Some(real) => {
            format!("ln -s '{}' '{}'", real.display(), lib.join("libclang-14.so.1").display())
        }
        None => "true".to_string(),
    };
    let apt = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in *install*) {install};; esac\n",
        log.display()
    );
    write_exe(&bin.join("apt-get"), &apt);
    write_exe(&bin.join("sudo"), "#!/bin/sh\nexec \"$@\"\n");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new("bash")
        .arg(Path::new(ROOT).join("gen/install-cuda.sh"))
        .env("PATH", path)
        .env("ROTARY_CUDA_DIR", dir.join("cuda"))
        .env("ROTARY_LIBCLANG_SEARCH", search_env(dir))
        .env_remove("LIBCLANG_PATH")
        .output()
        .expect("run gen/install-cuda.sh");
    (o, fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn install_script_installs_libclang_dev_when_only_libclang_cpp_is_there() {
    let dir = scratch("script-cpp-only");
    let lib = lib_tree(&dir);
    symlink(std::env::current_exe().unwrap(), lib.join("libclang-cpp.so.14")).unwrap();
    let real = real_libclang().ok();
    let (o, apt) = install_script(&dir, real.as_deref());
    let lines: Vec<&str> = apt.lines().collect();
    assert_eq!(lines.len(), 2, "apt-get calls: {apt:?}");
    assert!(lines[0].starts_with("update"), "first call {:?}, want update", lines[0]);
    let install = lines[1].starts_with("install -y") && lines[1].ends_with("libclang-dev");
    assert!(install, "second call {:?}, want install -y ... libclang-dev", lines[1]);
    let (out, err) = (stdout(&o), String::from_utf8_lossy(&o.stderr).to_string());
    match real {
        Some(_) => {
            assert!(o.status.success(), "script failed: {err}");
            let found = lib.join("libclang-14.so.1");
            let want = format!("libclang: {} (installed libclang-dev)", found.display());
            assert!(out.lines().any(|l| l == want), "stdout {out:?} lacks {want:?}");
        }
        None => {
            println!("SKIP the found-after-install case: no real libclang here");
            assert!(!o.status.success(), "script succeeded without a libclang: {out}");
            assert!(err.contains("error: libclang-dev installed but"), "stderr: {err}");
        }
    }
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn install_script_leaves_apt_alone_when_libclang_is_there() {
    let real = match real_libclang() {
        Ok(p) => p,
        Err(why) => return println!("SKIP real libclang: {why}"),
    };
    let dir = scratch("script-found");
    let link = lib_tree(&dir).join("libclang.so.1");
    symlink(&real, &link).unwrap();
    let (o, apt) = install_script(&dir, None);
    assert!(o.status.success(), "script failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(apt.is_empty(), "apt-get called: {apt:?}");
    let want = format!("libclang: {}", link.display());
    assert!(stdout(&o).lines().any(|l| l == want), "stdout {:?} lacks {want:?}", stdout(&o));
    let _ = fs::remove_dir_all(&dir);
}
