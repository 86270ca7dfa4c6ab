//! The op table of `rotary selftest` on every device: the host kernels (`cpu`, `cpu-ref`) and
//! the simulator against the oracle, the oracle against the rules it stands for, the
//! comparison's own rules, and CUDA where there is a device (else a SKIP line saying why).

use rotary::backend::cpu_ref::CpuRef;
use rotary::ops::{HeadOrder, TopkNorm};
use rotary::rotary::{open_device, BackendKind};
use rotary::selftest::{self, Op, Status};

/// Every case runs on the device and passes.
fn passes_every_case(kind: BackendKind) {
    let mut dev = open_device(kind, 0, None, 50.0, Some(2)).expect("device");
    let results = selftest::run(dev.as_mut(), kind.name(), false, None).expect("selftest").cases;
    for r in &results {
        assert_eq!(
            r.status,
            Status::Pass,
            "{} {} {} {}: {:?} {}",
            kind.name(),
            r.op,
            r.quant,
            r.shape,
            r.nmse,
            r.note
        );
    }
    assert!(results.len() >= 90, "{} cases", results.len());
}

#[test]
fn host_devices_and_the_simulator_pass_every_case() {
    for kind in [BackendKind::Cpu, BackendKind::CpuRef, BackendKind::Sim] {
        passes_every_case(kind);
    }
}

#[test]
fn every_format_and_op_is_in_the_table() {
    let cases = selftest::cases(false);
    for ty in selftest::FORMATS {
        for op in ["gemv", "embed"] {
            assert!(
                cases.iter().any(|c| c.op.name() == op && c.op.quant() == ty.name()),
                "{op} {ty} missing"
            );
        }
    }
    for op in [
        "moe",
        "topk_moe",
        "rmsnorm",
        "rope_neox",
        "attention",
        "add",
        "split_gate",
        "sigmoid_mul",
        "sigmoid",
        "gdn_conv",
        "gdn_gates",
        "gdn_rule",
        "gated_norm",
    ] {
        assert!(cases.iter().any(|c| c.op.name() == op), "{op} missing");
    }
    // The delta rule at decode and prefill in both head orders, and continuing a state.
    for (n, order) in [(1, true), (1, false), (17, true), (17, false)] {
        let order = if order { HeadOrder::Tiled } else { HeadOrder::Grouped };
        let found = cases
            .iter()
            .any(|c| matches!(c.op, Op::GdnRule { n: m, order: o, .. } if m == n && o == order));
        assert!(found, "gdn_rule n={n} {order:?} missing");
    }
    assert!(cases.iter().any(|c| matches!(c.op, Op::GdnRule { n: 1, warm: true, .. })));
    assert!(cases.iter().any(|c| matches!(c.op, Op::TopkMoe { norm: TopkNorm::Softmax, .. })));
    // Decode (1 token), odd counts and batches past a tile of 8.
    for n in [1, 3, 11] {
        assert!(cases.iter().any(|c| matches!(c.op, Op::Gemv { n: m, .. } if m == n)));
    }
}

#[test]
fn a_wrong_result_fails() {
    // The comparison is not vacuous: perturb the reference and it must fail. A +1 in one
    // element of a product over hundreds may stay under 5e-4; elementwise cases, ids and
    // guards always fail.
    let mut failed = Vec::new();
    for (idx, case) in selftest::cases(false).iter().enumerate() {
        let op = &case.op;
        let i = selftest::inputs(op, 1000 + idx as u64 * 17).expect("inputs");
        let want = selftest::reference(op, &i).expect("reference");
        let mut got = want.clone();
        if let Some(v) = got.values.first_mut() {
            *v += 1.0;
        }
        if let Op::TopkMoe { .. } = op {
            got.ids[0] = (got.ids[0] + 1) % 8;
        }
        if let Op::Add { .. } = op {
            got.guards_ok = false;
        }
        if selftest::compare(op, &got, &want).1 == Status::Fail {
            failed.push(op.name());
        }
    }
    for op in [
        "rmsnorm",
        "rope_neox",
        "embed",
        "add",
        "topk_moe",
        "split_gate",
        "sigmoid_mul",
        "sigmoid",
        "gdn_conv",
        "gdn_gates",
        "gated_norm",
    ] {
        assert!(failed.contains(&op), "{op} did not fail");
    }
    let nan = selftest::nmse(&[f32::NAN], &[1.0]);
    assert!(nan.is_nan());
}

#[test]
fn attention_reference_matches_the_forward_pass_rules() {
    // One head, two positions, values chosen exactly representable in f16: the reference is
    // softmax(q·k/√d)·v computed by hand.
    let hd = 32;
    let q: Vec<f32> = (0..hd).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let mut k = vec![0f32; 2 * hd];
    k[0] = 0.0;
    k[hd] = 2.0;
    let mut v = vec![0f32; 2 * hd];
    v[1] = 1.0;
    v[hd + 1] = 3.0;
    let scale = 1.0 / (hd as f32).sqrt();
    let o = rotary::ops::oracle::attention_reference(&q, &k, &v, 1, 1, 1, hd, 1, scale);
    let (a, b) = (1.0f32, (2.0 * scale).exp());
    let (wa, wb) = (a / (a + b), b / (a + b));
    let r = |x: f32| half::f16::from_f32(x).to_f32();
    let want = r(wa) * 1.0 + r(wb) * 3.0;
    assert!((o[1] - want).abs() < 1e-6, "{} vs {want}", o[1]);
    assert_eq!(o[0], 0.0);
}

#[test]
fn reference_products_are_the_cpu_ref_backend() {
    let op = Op::Gemv { ty: rotary::quant::GgmlType::Q4K, rows: 8, cols: 256, n: 2, copies: 1 };
    let i = selftest::inputs(&op, 7).expect("inputs");
    let a = selftest::reference(&op, &i).expect("reference");
    let b = selftest::products(&CpuRef, &op, &i).expect("products");
    assert_eq!(a.values, b.values);
}

#[test]
fn cuda_backend_where_there_is_a_device() {
    match open_device(BackendKind::Cuda, 0, None, 12.0, Some(2)) {
        Ok(mut dev) => {
            let results = selftest::run(dev.as_mut(), "cuda", false, None).expect("selftest").cases;
            for r in &results {
                assert_eq!(
                    r.status,
                    Status::Pass,
                    "{} {} {}: {:?} {}",
                    r.op,
                    r.quant,
                    r.shape,
                    r.nmse,
                    r.note
                );
            }
        }
        Err(e) => println!("SKIP cuda selftest: {e}"),
    }
}
