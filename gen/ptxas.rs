//! ptxas's resource report (`-Xptxas -v`), parsed: used by build.rs, which keeps the report of
//! every object of the nvcc build for `rotary kernels`, and by tests/gen.rs on sample output.
//!
//! The lines it reads, per entry function and SM:
//!   ptxas info    : Compiling entry function '_Z16attention_kernel15RotaryAttention' for 'sm_89'
//!   ptxas info    : Function properties for _Z16attention_kernel15RotaryAttention
//!       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//!   ptxas info    : Used 72 registers, used 1 barriers, 4128 bytes smem, 424 bytes cmem[0]

/// One entry function compiled for one SM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// "sm_89".
    pub sm: String,
    /// Mangled, as ptxas prints it.
    pub name: String,
    pub registers: u64,
    pub smem_bytes: u64,
    pub stack_bytes: u64,
    pub spill_store_bytes: u64,
    pub spill_load_bytes: u64,
}

/// The number before `words` in `line` ("4128 bytes smem": `number_before(l, &["bytes",
/// "smem"])` = 4128); 0 when absent.
fn number_before(line: &str, words: &[&str]) -> u64 {
    let toks: Vec<&str> = line.split([' ', ',', '\t']).filter(|w| !w.is_empty()).collect();
    toks.windows(words.len() + 1)
        .find(|w| w[1..] == *words)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or(0)
}

/// Every entry function in ptxas's verbose output, in order.
pub fn parse(text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut props_for_current = false;
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            let sm = rest.split("for '").nth(1).unwrap_or("").trim_end_matches('\'').to_string();
            entries.push(Entry { sm, name, ..Entry::default() });
            props_for_current = false;
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            // Non-inlined device functions get their own properties: only the entry's count.
            props_for_current = entries.last().is_some_and(|e| e.name == rest.trim());
        } else if line.contains("bytes stack frame") {
            if let (Some(e), true) = (entries.last_mut(), props_for_current) {
                e.stack_bytes = number_before(line, &["bytes", "stack", "frame"]);
                e.spill_store_bytes = number_before(line, &["bytes", "spill", "stores"]);
                e.spill_load_bytes = number_before(line, &["bytes", "spill", "loads"]);
            }
            props_for_current = false;
        } else if line.contains(" registers") {
            if let Some(e) = entries.last_mut() {
                e.registers = number_before(line, &["registers"]);
                e.smem_bytes = number_before(line, &["bytes", "smem"]);
            }
        }
    }
    entries
}

/// TSV rows for src/kernels.rs: sm, name, registers, smem, stack, spill stores, spill loads.
pub fn to_tsv(entries: &[Entry]) -> String {
    let mut tsv = String::new();
    for e in entries {
        tsv.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            e.sm,
            e.name,
            e.registers,
            e.smem_bytes,
            e.stack_bytes,
            e.spill_store_bytes,
            e.spill_load_bytes
        ));
    }
    tsv
}
