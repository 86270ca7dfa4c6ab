//! The kernel-instance generator (gen/kernels.rs, run by build.rs): its format table agrees
//! with the CPU's (ggml ids, block sizes), every quantized op has an instance for every format
//! and tile, the dispatch covers them all, and every file carries the do-not-edit banner.

#[path = "../gen/kernels.rs"]
mod kernels;

use rotary::quant::GgmlType;

#[test]
fn formats_match_the_cpu_quant_table() {
    for f in kernels::FORMATS {
        let ty =
            GgmlType::from_id(f.ggml_id).unwrap_or_else(|| panic!("{}: unknown ggml id", f.name));
        assert_eq!(ty.block_elems(), f.block_elems as usize, "{}", f.name);
        assert_eq!(ty.block_bytes(), f.block_bytes as usize, "{}", f.name);
        assert_eq!(ty.name().to_lowercase(), f.name, "{}", f.name);
    }
    // selftest checks every type the engine computes with; each has kernels, and the other
    // way round.
    let supported: Vec<GgmlType> = GgmlType::supported().collect();
    assert_eq!(rotary::selftest::FORMATS, supported.as_slice());
    let selftest: Vec<u32> = rotary::selftest::FORMATS.iter().map(|t| t.id()).collect();
    let generated: Vec<u32> = kernels::FORMATS.iter().map(|f| f.ggml_id).collect();
    assert_eq!(selftest.len(), generated.len());
    assert!(selftest.iter().all(|id| generated.contains(id)));
}

#[test]
fn every_op_has_every_format_and_tile() {
    let files = kernels::generate();
    for (name, text) in &files {
        assert!(text.starts_with(kernels::BANNER), "{name} lacks the banner");
    }
    let find = |n: &str| files.iter().find(|(f, _)| f == n).map(|(_, t)| t.clone());
    for f in kernels::FORMATS {
        for t in kernels::tiles() {
            let sfx = format!("w{}_t{}", t.warps, t.tokens);
            let gemv = find(&format!("gemv_{}.cu", f.name)).expect("gemv file");
            assert!(gemv.contains(&format!("rotary_gemv_{}_{sfx}(", f.name)));
            let moe = find(&format!("moe_{}.cu", f.name)).expect("moe file");
            for stage in ["gate_up", "down"] {
                assert!(moe.contains(&format!("rotary_moe_{stage}_{}_{sfx}(", f.name)));
            }
        }
        assert!(find(&format!("embed_{}.cu", f.name)).is_some());
    }
    let dispatch = find("dispatch.cu").expect("dispatch.cu");
    for entry in [
        "rotary_gemv(",
        "rotary_embed(",
        "rotary_moe_gate_up_dispatch(",
        "rotary_moe_down_dispatch(",
        "rotary_quant_supported(",
    ] {
        assert!(dispatch.contains(entry), "dispatch lacks {entry}");
    }
    // The lookup tables, each defined once (quant_iq.cuh declares them).
    let grids = find("quant_grids.cu").expect("quant_grids.cu");
    for table in ["IQ2XXS_GRID[256]", "IQ2S_GRID[1024]", "IQ1S_GRID[2048]", "KVALUES_MXFP4[16]"] {
        assert_eq!(grids.matches(&format!(" {table} = {{")).count(), 1, "{table}");
    }
    for f in kernels::FORMATS {
        // gemv, gate_up, down, embed, supported: one case label each per tile row (or once).
        let cases = dispatch.matches(&format!("case {}:", f.abi_enum)).count();
        assert_eq!(cases, 3 * kernels::TILES.len() + 2, "{}", f.name);
    }
}

#[test]
fn tile_table_ends_with_a_fallback() {
    assert_eq!(kernels::TILES.last().map(|t| t.sm_min), Some(0));
    assert!(kernels::TILES.windows(2).all(|w| w[0].sm_min > w[1].sm_min), "descending sm_min");
    for t in kernels::tiles() {
        assert!(t.warps * 32 <= 1024 && t.tokens >= 1);
    }
}

#[test]
fn generator_writes_only_changed_files() {
    let dir = std::env::temp_dir().join(format!("rotary-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let paths = kernels::write_all(&dir).expect("write");
    let stamp = std::fs::metadata(&paths[0]).and_then(|m| m.modified()).expect("mtime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    kernels::write_all(&dir).expect("write again");
    assert_eq!(std::fs::metadata(&paths[0]).and_then(|m| m.modified()).expect("mtime"), stamp);
    std::fs::remove_dir_all(&dir).ok();
}

/// ptxas's report of the nvcc build (`rotary kernels`): every kernel compiled for every SM, and
/// no gemv, moe or attention instance spills. The emulated and CPU-only builds have no SASS.
#[test]
fn hot_kernels_do_not_spill() {
    let report = rotary::kernels::report();
    if report.is_empty() {
        println!("SKIP kernel resources: this build compiled no SASS");
        return;
    }
    let sms: std::collections::BTreeSet<u32> = report.iter().map(|k| k.sm).collect();
    for sm in &sms {
        for base in [
            "gemv_kernel",
            "moe_pair_kernel",
            "moe_grouped_kernel",
            "attention_kernel",
            "gdn_rule_kernel",
        ] {
            assert!(
                report.iter().any(|k| k.sm == *sm && k.base_name() == base),
                "sm_{sm}: no {base} in the report"
            );
        }
    }
    for k in &report {
        assert!(
            k.block_threads().is_some(),
            "{}: threads per block unknown to src/kernels.rs",
            k.name
        );
    }
    let spills: Vec<String> = report
        .iter()
        .filter(|k| rotary::kernels::is_hot(k) && k.spills())
        .map(|k| {
            format!(
                "sm_{} {} ({} B stores, {} B loads)",
                k.sm, k.name, k.spill_store_bytes, k.spill_load_bytes
            )
        })
        .collect();
    assert!(spills.is_empty(), "hot kernels spill: {spills:?}");
}

/// The report's rows and the occupancy arithmetic, on hand-made rows with known answers.
#[test]
fn kernel_report_parses_and_occupancy_follows_the_limits() {
    let tsv = "sm_89\tvoid gemv_kernel<QuantQ4_K, 8, 1>(RotaryGemv)\t40\t0\t0\t0\t0\n\
               sm_90\tattention_kernel(RotaryAttention)\t64\t4128\t8\t16\t16\nbad row\n";
    let rows = rotary::kernels::parse_report(tsv);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].base_name(), "gemv_kernel");
    assert_eq!(rows[0].block_threads(), Some(256));
    assert!(rows[1].spills() && !rows[0].spills());
    // 40 registers: 1280 per warp (5 units of 256) → 51 warps by registers, 6 blocks of 8 warps
    // by the warp limit (48): 6 blocks, 100%.
    let ada = rotary::kernels::sm_limits(89).expect("sm_89");
    assert_eq!(rotary::kernels::occupancy(&rows[0], 256, &ada), (6, 1.0));
    // 64 registers, 128 threads: 2048 per warp → 32 warps → 8 blocks of 4 warps = 32 of 64.
    let hopper = rotary::kernels::sm_limits(90).expect("sm_90");
    assert_eq!(rotary::kernels::occupancy(&rows[1], 128, &hopper), (8, 0.5));
}

#[path = "../gen/ptxas.rs"]
mod ptxas;

/// ptxas's verbose output as nvcc 13.0 prints it, with a spilling entry and a non-inlined
/// device function whose properties must not be charged to the entry.
#[test]
fn ptxas_report_is_parsed() {
    let text = "ptxas info    : Compiling entry function '_Z16attention_kernel15RotaryAttention' for 'sm_89'\n\
                ptxas info    : Function properties for _Z16attention_kernel15RotaryAttention\n    \
                0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
                ptxas info    : Used 72 registers, used 1 barriers, 4128 bytes smem, 424 bytes cmem[0]\n\
                ptxas info    : Compiling entry function '_Z3foov' for 'sm_90'\n\
                ptxas info    : Function properties for _Z6helperv\n    \
                64 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n\
                ptxas info    : Function properties for _Z3foov\n    \
                40 bytes stack frame, 24 bytes spill stores, 16 bytes spill loads\n\
                ptxas info    : Used 255 registers, used 0 barriers, 380 bytes cmem[0]\n";
    let e = ptxas::parse(text);
    assert_eq!(e.len(), 2);
    assert_eq!(
        (e[0].sm.as_str(), e[0].registers, e[0].smem_bytes, e[0].spill_store_bytes),
        ("sm_89", 72, 4128, 0)
    );
    assert_eq!(
        (e[1].stack_bytes, e[1].spill_store_bytes, e[1].spill_load_bytes, e[1].registers),
        (40, 24, 16, 255)
    );
    let rows = rotary::kernels::parse_report(&ptxas::to_tsv(&e));
    assert_eq!(rows[0].smem_static_bytes, 4128);
    assert!(rows[1].spills() && !rows[0].spills());
    // Nested template arguments: the warps per block come from the first integer one.
    let nested = "sm_89\tvoid gemv_kernel<QuantHalf<(RotaryQuant)30, BF16Bits>, 4, 8>(RotaryGemv)\t40\t0\t0\t0\t0\n\
                  sm_89\tvoid moe_grouped_kernel<QuantQ4_K, (MoeStage)1, 8, 8>(RotaryMoe)\t40\t0\t0\t0\t0\n";
    let rows = rotary::kernels::parse_report(nested);
    assert_eq!(rows[0].block_threads(), Some(128));
    assert_eq!(rows[1].block_threads(), Some(256));
}
